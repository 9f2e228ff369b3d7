"""mfnb: reproduce and extend multi-fidelity alignment, ExPO and HbAT, from a 2-core CPU to GPUs.

Modules, one idea each: params, paths, atomic, worlds (the World protocol and ``make_world``: a world is a
parameter), models, judges, stats, sft, dpo, evaluation, plots, reference. Each paper is a package whose
file names say what they hold, with its algorithm in one file that reads beside the paper's pseudo-code:
``multifidelity`` (``algorithm.py``: Algorithm 2), ``expo`` (``extrapolation.py``, ``lora.py``) and ``hbat``
(``algorithm.py``: Algorithm 1). Method modules never construct a concrete world.
"""
__version__ = "0.1.0"
