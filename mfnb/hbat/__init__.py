"""Hybrid Alignment Training (HbAT; Wang et al. 2024): alternating SFT/DPO stages with a modified EWC.

Files, one idea each (read :mod:`~mfnb.hbat.algorithm` beside the paper's Algorithm 1):

* :mod:`~mfnb.hbat.config` -- the settings of one run and the Table 4 methods as presets; where our
  defaults and the authors' released code differ.
* :mod:`~mfnb.hbat.importance` -- tensor importance, Eqs. 6, 7, 9, 10 (and HbAT-Freeze's top tensors).
* :mod:`~mfnb.hbat.ewc` -- the EWC penalty, Eqs. 5 and 8, inside TRL's SFT and DPO trainers.
* :mod:`~mfnb.hbat.fisher` -- the original EWC's importance, the diagonal empirical Fisher (Appendix B).
* :mod:`~mfnb.hbat.store` -- the resumable stage store (each stage keyed by everything that produced it).
* :mod:`~mfnb.hbat.algorithm` -- Algorithm 1 top to bottom: data splits, the stage plan, the loop, the kept
  checkpoint.
* :mod:`~mfnb.hbat.ablations` -- notebook 04's experiment on the world's alignment-tax conflict (Table 4
  methods, Figure 2 sweeps), every run cached.
* :mod:`~mfnb.hbat.report`, :mod:`~mfnb.hbat.plots`, :mod:`~mfnb.hbat.efficiency` -- notebook 04's tables,
  figures, and Table 7 (time and memory, each method in a fresh process).
* :mod:`~mfnb.hbat.claims` -- a verdict per claim of the paper, from intervals over seeds.
* :mod:`~mfnb.hbat.mechanism` -- does the importance weighting matter? HbAT against a uniform anchor of the same
  strength and the released code's importance.

Every public name is importable from ``mfnb.hbat``.
"""
from mfnb.hbat.ablations import HbatExperiment
from mfnb.hbat.algorithm import HbatRun, check_inputs, run_hbat, select_checkpoint, split_parts, stage_plan
from mfnb.hbat.claims import (ORIGINAL_EWC, PAIRWISE, VERDICTS, all_claims, claims_table, combine, figure2_claims,
                              figure2_lines, figure2_statement, lambda_choice, original_ewc_claims, pairwise_claims,
                              seed_claims, verdict)
from mfnb.hbat.config import (METHODS, OBJECTIVES, EWCParams, HbatError, HbatNotebookParams, HbatParams,
                              SFTStageParams, for_method)
from mfnb.hbat.efficiency import efficiency_table, measure_efficiency
from mfnb.hbat.ewc import EWCPenalty, ewc_trainer_class
from mfnb.hbat.fisher import empirical_fisher, scaled_fisher
from mfnb.hbat.importance import (accumulate_changes, canonical_name, importance_from_changes, snapshot,
                                  squared_change_sums, tensor_changes, tensor_importance, top_fraction,
                                  trainable_tensors)
from mfnb.hbat.mechanism import CONTROLS as MECHANISM_CONTROLS
from mfnb.hbat.mechanism import importance_spread, mechanism_lines, mechanism_table
from mfnb.hbat.plots import plot_figure2, plot_tradeoff
from mfnb.hbat.report import (METRICS, PAPER_COLUMNS, PAPER_NAMES, conflict_check, departures, effective_tensors,
                              importance_table, ordering_statement, orderings, paper_table4, seed_summary, t_interval,
                              table4_with_paper)
from mfnb.hbat.store import STORE_VERSION, StageRecord, clean_store


def __getattr__(name: str):
    """``EWCSFTTrainer`` and ``EWCDPOTrainer`` are built on first use (they subclass TRL's trainers)."""
    if name in ("EWCSFTTrainer", "EWCDPOTrainer"):
        from mfnb.hbat import ewc

        return getattr(ewc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
