"""Notebook 02's counts for a profile, scaled from the ledger of a finished run (:mod:`mfnb.estimate` prices them).

The `tiny` profile runs Algorithm 2 at the paper's sizes (B = 1024 and 512, 200 validation / 500 test
prompts), so its ledger (``02_ledger.csv``) and iteration table (``02_iterations.csv``) count what a run
buys if its traces take the same course: responses per payer and phase, judgements, DPO pairs trained,
training runs. How many iterations a trace takes is known only by running it, so these counts are scaled,
not counted from params: :func:`scale_counts` keeps the runs the target params run (their baselines, judged
training pairs; monitoring shows in the measured ledger's analysis and evaluation rows), averages the measured traces per B and multiplies by the target's traces.
"""
from __future__ import annotations

import math

import pandas as pd

COUNTS = ["student_responses", "expert_responses", "judgements", "dpo_pairs_trained"]


class EstimateError(ValueError):
    """The ledger cannot be scaled to the target params (a run or batch size it never measured)."""


def optimizer_steps(rows: int, step) -> int:
    """Optimizer steps of one SFT or DPO update of ``rows`` examples (the Trainer's ceil(epochs * ceil(rows /
    global batch)))."""
    return math.ceil(step.epochs * math.ceil(rows / (step.batch_size * step.grad_accum))) if rows else 0


def scale_counts(ledger: pd.DataFrame, iterations: pd.DataFrame, measured, target) -> pd.DataFrame:
    """Counts per batch size of the target params (:class:`mfnb.multifidelity.TracesParams`), from a ledger
    made with ``measured`` params: mean over the measured traces at that B times the target's traces."""
    rows = []
    for B in target.batch_sizes:
        at = ledger[ledger["batch_size"] == B]
        if at.empty:
            raise EstimateError(f"batch size {B}: the ledger has no trace at B={B} (it has "
                                f"{sorted(ledger['batch_size'].unique())})")
        missing = [b for b in target.baselines_at(B) if b not in measured.baselines_at(B)]
        if missing:
            raise EstimateError(f"baselines {missing} at B={B} were not run in the measured ledger; run them there first")
        # the analysis (every expert against those below it, mfnb.multifidelity.trace) runs in every trace
        runs = {"mf", *target.baselines_at(B), "test", "analysis"}
        kept = at[at["run"].isin(runs)]
        if not target.judge_train_pairs:
            kept = kept[~((kept["payer"] == "judge") & (kept["phase"] == "train"))]
        # the test phase compares the multi-fidelity model with each baseline: as many comparisons as runs
        test_scale = (1 + len(target.baselines_at(B))) / (1 + len(measured.baselines_at(B)))
        weight = kept["phase"].map(lambda phase: test_scale if phase == "test" else 1.0)
        traces = at["trace"].nunique()
        n = lambda payer: float((kept["n"] * weight)[kept["payer"] == payer].sum()) / traces
        its = iterations[(iterations["batch_size"] == B) & iterations["run"].isin(runs)]
        pairs = float(its["D_size"].sum()) * target.dpo.epochs / traces
        sft = its["update"] == "sft" if "update" in its else pd.Series(False, index=its.index)
        steps = sum(optimizer_steps(int(d), target.sft if is_sft else target.dpo)
                    for d, is_sft in zip(its["D_size"], sft)) / traces
        k = len(target.trace_seeds)
        rows.append({"batch_size": B, "traces": k, "measured_traces": traces, "student_responses": k * n("student"),
                     "expert_responses": k * n("expert"), "judgements": k * n("judge"), "dpo_pairs_trained": k * pairs,
                     "training_runs": k * len(its) / traces, "optimizer_steps": k * steps})
    return pd.DataFrame(rows)
