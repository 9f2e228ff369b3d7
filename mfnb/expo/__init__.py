"""ExPO, weak-to-strong model extrapolation (Zheng et al., paper 002): ``theta_s = theta + alpha (theta -
theta_w)``, no training, just weight arithmetic; alpha is chosen by a reward model.

Files, one idea each (read them in this order beside the paper):

* :mod:`~mfnb.expo.extrapolation` -- the arithmetic on model folders (streaming safetensors, any size) and on
  in-memory state dicts: :func:`extrapolate`, :func:`extrapolate_state_dict`.
* :mod:`~mfnb.expo.lora` -- the fast path when the aligned model is SFT + LoRA: ExPO scales the adapter by
  ``1 + alpha`` (:func:`scale_lora_adapter`, :func:`lora_extrapolation`, :func:`lora_delta_norm`).
* :mod:`~mfnb.expo.config` -- notebook 03's parameters (:class:`ExpoParams`).
* :mod:`~mfnb.expo.training` -- the aligned models: LoRA DPO adapters per data fraction, cached by config.
* :mod:`~mfnb.expo.alpha_judge` -- the reward model that picks alpha and its agreement with the known quality.
* :mod:`~mfnb.expo.sweep` -- the alpha sweep and the alpha each criterion picks (Figure 5, Table 3).
* :mod:`~mfnb.expo.control` -- the Figure 6 control: the same data fraction trained harder.
* :mod:`~mfnb.expo.bootstrap` -- paired percentile bootstrap over prompts (means, LC win rate, chosen alpha).
* :mod:`~mfnb.expo.report` -- the length-controlled win rate, test samples, Table 1 with intervals,
  paired comparisons, the departures from the paper's setting.
* :mod:`~mfnb.expo.claims` -- the paper's claims, each with a verdict from an interval.
* :mod:`~mfnb.expo.findings` -- the notebook's other computed statements.
* :mod:`~mfnb.expo.plots` -- Figures 5 and 6, and Table 1's bars.
* :mod:`~mfnb.expo.off_the_shelf` -- Table 2: released SFT / aligned pairs extrapolated in full weights (streamed),
  one extrapolated folder at a time, alpha by reward, scored like Table 1.
* :mod:`~mfnb.expo.experiment` -- notebook 03 as one object (:class:`ExpoExperiment`): a method per table,
  every model, response and verdict cached.

Every public name is importable from ``mfnb.expo``. The parameter schemas (:class:`ExpoParams`,
:class:`PreferenceDataParams`) load on first use: their DPO, LoRA and sampling fields import TRL and
transformers (~5 s), which the weight arithmetic never needs.
"""
from mfnb.expo.alpha_judge import (accuracy_on_pairs, accuracy_on_responses, pairwise_accuracy, reward_judge,
                                   reward_model_info, sweep_pairs)
from mfnb.expo.bootstrap import (bootstrap_counts, lc_replicates, percentile_interval, rank_correlation_replicates,
                                 replicate_means)
from mfnb.expo.claims import (CLAIM_COLUMNS, NOT_TESTABLE, ORACLE_CLAIM, TREND_CLAIM, VERDICTS, AlphaChoice, alpha_shift,
                              alpha_summary, alpha_trend_claim, claims_table, combine, figure6_claims, medium_best_claim, overall,
                              reward_model_doubt, table1_claims, verdict)
from mfnb.expo.control import ORACLE, Variant, control_variants
from mfnb.expo.experiment import ExpoExperiment
from mfnb.expo.extrapolation import (CHUNK_ELEMENTS, INDEX_FILE, SINGLE_FILE, WEIGHT_SUFFIXES, ExpoError, extrapolate,
                                     extrapolate_state_dict)
from mfnb.expo.findings import (claim_lines, figure6_lines, length_lines, lr_lines, reward_model_lines,
                                verdict_lines)
from mfnb.expo.lora import ADAPTER_FILE, lora_delta_norm, lora_extrapolation, scale_lora_adapter
from mfnb.expo.plots import plot_alpha_curves, plot_figure6, winrate_rows
from mfnb.expo.report import (METRIC_NAMES, NOT_TRAINED, SampleStats, comparisons, comparisons_wide, departures, judged_samples,
                              length_controlled_win_rate, paper_table1, samples_table)
from mfnb.expo.sweep import (alpha_sweep, is_non_increasing, optimal_alpha, optimal_alpha_table, paper_alpha_grid,
                             paper_optimal_alpha, response_metrics, score_matrix, seed_mean, summarize_sweep, sweep_responses,
                             sweep_scores)
from mfnb.expo.training import (EXPO_VERSION, adapter_info, adapter_key, adapter_path, dpo_steps, fraction_label,
                                fraction_rows, length_bias, load_aligned, preference_rows, train_dpo_adapter)

_SCHEMAS = ("ExpoParams", "PreferenceDataParams")


def __getattr__(name: str):
    """``ExpoParams`` and ``PreferenceDataParams`` come from :mod:`mfnb.expo.config` on first use."""
    if name in _SCHEMAS:
        from mfnb.expo import config as params

        return getattr(params, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
