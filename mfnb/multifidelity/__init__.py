"""Multi-fidelity alignment (paper 000): a student aligned by iterative LoRA DPO against experts ("fidelities")
of rising quality and cost, moving up when its validation WinFreq against the current expert reaches gamma.

Files, one idea each (read :mod:`~mfnb.multifidelity.algorithm` beside the paper's Algorithm 2):

* :mod:`~mfnb.multifidelity.config` -- Algorithm 2's inputs and our caps; notebook 02's parameters.
* :mod:`~mfnb.multifidelity.algorithm` -- Algorithm 2 (the loop, :func:`decide`) and the baselines on the same
  machine: vanilla DPO against one expert, the fixed-schedule ladder, SFT on the purchased responses.
* :mod:`~mfnb.multifidelity.backend` -- who generates and who learns: :class:`PolicyBackend` (any world's
  student as a LoRA policy; experts through ``world.respond``).
* :mod:`~mfnb.multifidelity.judging` -- verdicts with retries; failures are excluded, never losses.
* :mod:`~mfnb.multifidelity.ledger` -- every purchase and its cost; the paper's Lambda.
* :mod:`~mfnb.multifidelity.store` -- run folders, journals, RNG state: resume after a kill.
* :mod:`~mfnb.multifidelity.trace` -- one trace: Algorithm 2, the baselines at equal budget, the test comparisons.
* :mod:`~mfnb.multifidelity.report` -- Tables 2-3 as the paper lays them out, decisions under both tie
  conventions, the departures from the paper read from the parameters.
* :mod:`~mfnb.multifidelity.verdicts` -- Table 4 per seed and over seeds and prompts, the verdicts, the spend
  at which the multi-fidelity run matches vanilla(m=M), the fixed ladder's schedule.
* :mod:`~mfnb.multifidelity.theorem5` -- measured costs beside Theorem 5's terms.
* :mod:`~mfnb.multifidelity.plots` -- the traces and cost vs quality.

Every public name is importable from ``mfnb.multifidelity`` (``from mfnb import multifidelity as mf``).
"""
from mfnb.multifidelity.algorithm import (GAMMA_RULES, decide, passes_gamma, run_fixed_ladder, run_multifidelity,
                                          run_sft_replay, run_vanilla, vanilla_incremental_batch)
from mfnb.multifidelity.backend import Backend, PolicyBackend, Prompts
from mfnb.multifidelity.config import (AlgorithmParams, Fidelity, RunConfig, TracesParams, baseline_names,
                                       check_experts, vanilla_fidelity, vanilla_name)
from mfnb.multifidelity.judging import judge_pairs
from mfnb.multifidelity.ledger import LEDGER_COLUMNS, PHASES, ledger_frame, ledger_row, ledger_summary, paper_lambda
from mfnb.multifidelity.plots import plot_cost_quality, plot_spend_to_match, plot_traces
from mfnb.multifidelity.report import (PAPER_FIDELITIES, budget_table, convention_evidence, convention_lines,
                                       decision_summary, decision_table, departures, fidelity_gaps, iterations_table,
                                       paper_layout, paper_layout_with_reference, paper_reference_rows, time_shares,
                                       trace_rows)
from mfnb.multifidelity.store import STATE_VERSION, RunResult, RunStore, derive_seed
from mfnb.multifidelity.theorem5 import estimate_alpha_beta, theorem5_lines, theorem5_summary, theorem5_table
from mfnb.multifidelity.trace import (TraceResult, baseline_budget, mf_candidate, run_baseline, run_lambda, run_trace,
                                      tested_iterates, trace_folder, validation_cost)
from mfnb.multifidelity.verdicts import (final_vs_top, ladder_schedule, overall_verdict, spend_ratio_lines,
                                         spend_ratio_summary, spend_ratio_table, table4, table4_summary, verdict_lines)
