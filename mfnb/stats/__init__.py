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
from mfnb.stats.winrate import (WinSummary, summarize, outcome_values, win_freq, hoeffding_radius,
                                difference_radius, INTERVAL_METHODS, BINARY_ONLY, interval_from_counts,
                                confidence_interval, TIE_CONVENTIONS, CONVENTION_NAMES, TieConvention,
                                check_convention, win_rate_from_counts, EXACT_METHOD, convention_interval,
                                convention_summary, outcome_scores)
from mfnb.stats.sequences import (mixture_rho, mixture_cs_radius, union_bound_radius, CS_METHODS,
                                  confidence_sequence, radius_table)
from mfnb.stats.decisions import (n_for_radius, n_to_resolve, decision_supported, trace_decisions,
                                  summarize_decisions)
from mfnb.stats.verdicts import (seed_prompt_interval, VERDICTS, CLAIM_VERDICTS, claim_verdict, combine_verdicts,
                                 verdict, first_reaching, ratio_summary)
from mfnb.stats.simulation import (outcome_probs, simulate_counts, coverage_table, sequential_coverage)
from mfnb.stats.noise import (noisy_win_rate, debias_win_rate, simulate_noisy_judge, label_noise_table)
