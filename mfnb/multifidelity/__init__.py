"""Multi-fidelity alignment (paper 000): a student aligned by iterative LoRA DPO against experts ("fidelities")
of rising quality and cost, moving up when its validation WinFreq against the current expert reaches gamma.

Files, one idea each (read :mod:`~mfnb.multifidelity.algorithm` beside the paper's Algorithm 2):

* :mod:`~mfnb.multifidelity.params` -- Algorithm 2's inputs and our caps; notebook 02's parameters.
* :mod:`~mfnb.multifidelity.algorithm` -- Algorithm 2 (the loop, :func:`decide`), and vanilla DPO against one
  expert until a budget is spent.
* :mod:`~mfnb.multifidelity.backend` -- who generates and who learns: :class:`PolicyBackend` (any world's
  student as a LoRA policy; experts through ``world.respond``).
* :mod:`~mfnb.multifidelity.judging` -- verdicts with retries; failures are excluded, never losses.
* :mod:`~mfnb.multifidelity.ledger` -- every purchase and its cost; the paper's Lambda.
* :mod:`~mfnb.multifidelity.store` -- run folders, journals, RNG state: resume after a kill.
* :mod:`~mfnb.multifidelity.trace` -- one trace of Tables 2-4: Algorithm 2, vanilla at equal budget, test.
* :mod:`~mfnb.multifidelity.report` -- Tables 2-4 as the paper lays them out, decisions vs the radius.
* :mod:`~mfnb.multifidelity.theorem5` -- measured costs beside Theorem 5's terms.
* :mod:`~mfnb.multifidelity.plots` -- the traces and cost vs quality.

Every public name is importable from ``mfnb.multifidelity`` (``from mfnb import multifidelity as mf``).
"""
from mfnb.multifidelity.algorithm import decide, run_multifidelity, run_vanilla
from mfnb.multifidelity.backend import Backend, PolicyBackend, Prompts
from mfnb.multifidelity.judging import judge_pairs
from mfnb.multifidelity.ledger import LEDGER_COLUMNS, PHASES, ledger_frame, ledger_row, ledger_summary, paper_lambda
from mfnb.multifidelity.params import AlgorithmParams, Fidelity, RunConfig, TracesParams, check_experts
from mfnb.multifidelity.plots import plot_cost_quality, plot_traces
from mfnb.multifidelity.report import (PAPER_FIDELITIES, beat_statement, decision_table, fidelity_gaps,
                                       iterations_table, paper_layout, paper_layout_with_reference,
                                       paper_reference_rows, table4, time_shares, trace_rows)
from mfnb.multifidelity.store import STATE_VERSION, RunResult, RunStore, derive_seed
from mfnb.multifidelity.theorem5 import estimate_alpha_beta, theorem5_lines, theorem5_summary, theorem5_table
from mfnb.multifidelity.trace import TraceResult, run_trace, trace_folder
