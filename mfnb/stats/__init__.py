"""Win-rate statistics: WinFreq and wins / total, confidence intervals and sequences, intervals over seeds and
prompts, sample-size planning, simulated coverage and noisy judges.

The multi-fidelity paper decides "upgrade to the next fidelity" by comparing WinFreq (Section 2, ties count 1/2)
with a threshold gamma on n = 200 validation prompts, and justifies it with Lemma 1: with probability
>= 1 - delta, ``|WinFreq - WinRate| <= sqrt(log(2/delta) / n)``. This package makes that statement checkable:

* :mod:`.winrate` -- WinFreq from judgements, fixed-n intervals (the paper's radius and tighter ones), either tie
  convention with its exact interval.
* :mod:`.sequences` -- anytime-valid confidence sequences for Algorithm 2's "check after every batch".
* :mod:`.decisions` -- how many judgements a decision needs; whether a trace's decisions were supported.
* :mod:`.verdicts` -- intervals over training seeds and prompts and the verdicts they support (every notebook's
  claims use these).
* :mod:`.simulation`, :mod:`.noise` -- vectorised coverage simulations; the bias of a judge that flips labels.
* :mod:`.checks` -- argument checks.

Every public name is importable from ``mfnb.stats``. Theorem 5's bounds are notebook 05's (:mod:`mfnb.bounds`).
"""
from mfnb.stats.decisions import decision_supported, n_for_radius, n_to_resolve, summarize_decisions, trace_decisions
from mfnb.stats.noise import debias_win_rate, label_noise_table, noisy_win_rate, simulate_noisy_judge
from mfnb.stats.sequences import (CS_METHODS, confidence_sequence, mixture_cs_radius, mixture_rho, radius_table,
                                  union_bound_radius)
from mfnb.stats.simulation import coverage_table, outcome_probs, sequential_coverage, simulate_counts
from mfnb.stats.verdicts import (CLAIM_VERDICTS, NOT_TESTABLE, VERDICTS, claim_verdict, claims_table, combine_testable,
                                 combine_verdicts, difference_text, first_reaching, interval_reading, ratio_summary,
                                 seed_alone_lines, seed_prompt_interval, seed_replicate_interval, verdict)
from mfnb.stats.winrate import (BINARY_ONLY, CONVENTION_NAMES, EXACT_METHOD, INTERVAL_METHODS, TIE_CONVENTIONS,
                                TieConvention, WinSummary, check_convention, confidence_interval, convention_interval,
                                convention_summary, difference_radius, hoeffding_radius, interval_from_counts,
                                outcome_scores, outcome_values, summarize, win_freq, win_rate_from_counts)
