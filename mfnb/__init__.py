"""mfnb: reproduce and extend multi-fidelity alignment, ExPO and HbAT, from a 2-core CPU to GPUs.

Modules, one idea each: params, paths, atomic, worlds, models, judges, stats, dpo, multifidelity,
expo, hbat, plots, reference.
"""
__version__ = "0.1.0"
