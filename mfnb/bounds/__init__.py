"""Notebook 05: how far Lemma 1's Hoeffding radius and its alternatives can be trusted (coverage at fixed n and
per look, a noisy judge's bias) and the O(.) content of Theorem 5's cost bounds.

* :mod:`.config` -- the notebook's parameters.
* :mod:`.theorem5` -- Eqs. 2-3, constants dropped.
* :mod:`.report` -- the findings as sentences, every number read from the tables.
* :mod:`.plots` -- the figures.

The statistics themselves are :mod:`mfnb.stats`'. Every public name is importable from ``mfnb.bounds``.
"""
from mfnb.bounds.config import HoeffdingParams
from mfnb.bounds.plots import (plot_coverage, plot_label_noise, plot_radius_curves, plot_sequential_coverage,
                               plot_theorem5_region)
from mfnb.bounds.report import (convention_threshold_line, coverage_lines, noise_lines, paper_decision_lines,
                                radius_lines, sequential_lines, summary_lines, theorem5_lines)
from mfnb.bounds.theorem5 import (chain_win_rate, hf_cost_bound, mf_cost_bound, theorem5_cost_terms, theorem5_grid,
                                  theorem5_paper_setting)
