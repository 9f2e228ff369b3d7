"""What a paper-profile run of notebook 02 would cost, scaled from the ledger of a finished smaller run.

The `tiny` profile runs Algorithm 2 at the paper's sizes (B = 1024 and 512, 200 validation / 500 test
prompts), so its ledger (``02_ledger.csv``) and iteration table (``02_iterations.csv``) count what a run
buys if its traces take the same course: responses per payer and phase, judgements, DPO pairs trained.
:func:`scale_counts` keeps the runs the target params run (their baselines, monitoring, judged training
pairs), averages the measured traces per B and multiplies by the target's traces; :func:`costs` turns the
counts into tokens, judge dollars and GPU hours with the target's response length and judge prices and the
inputs given (prompt and judge-template tokens, model size, GPU peak and utilisation). Every input that is
not counted from the ledger is printed beside the result: nothing is assumed silently.

FLOPs per token (the usual dense-transformer approximations, N = parameters): sampling 2N; a LoRA DPO step
6N per token of the chosen and the rejected sequence (policy forward and backward through frozen weights
4N, the reference forward with the adapter off 2N); full fine-tuning 8N.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

COUNTS = ["student_responses", "expert_responses", "judgements", "dpo_pairs_trained"]


class EstimateError(ValueError):
    """The ledger cannot be scaled to the target params (a run or batch size it never measured)."""


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
        runs = {"mf", *target.baselines_at(B), "test"} | ({"analysis"} if target.monitor else set())
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
        k = len(target.trace_seeds)
        rows.append({"batch_size": B, "traces": k, "measured_traces": traces, "student_responses": k * n("student"),
                     "expert_responses": k * n("expert"), "judgements": k * n("judge"), "dpo_pairs_trained": k * pairs})
    return pd.DataFrame(rows)


def costs(counts: pd.DataFrame, *, prompt_tokens: float, response_tokens: float, judge_template_tokens: float,
          judge_answer_tokens: float, input_price: float, output_price: float, model_params: float,
          gpu_tflops: float, generate_utilization: float, train_utilization: float, lora: bool = True) -> pd.DataFrame:
    """Tokens, judge dollars (prices per million tokens) and GPU hours per row of :func:`scale_counts`, and a
    total. Every pair is judged in both orders (two requests), each request carrying the template, the prompt
    and both responses; responses count ``response_tokens`` each (the cap: an upper bound)."""
    out = counts.copy()
    requests = 2 * out["judgements"]
    out["judge_requests"] = requests
    out["judge_input_tokens"] = requests * (judge_template_tokens + prompt_tokens + 2 * response_tokens)
    out["judge_output_tokens"] = requests * judge_answer_tokens
    out["judge_dollars"] = (out["judge_input_tokens"] * input_price + out["judge_output_tokens"] * output_price) / 1e6
    responses = out["student_responses"] + out["expert_responses"]
    out["generated_tokens"] = responses * response_tokens
    out["dpo_tokens"] = out["dpo_pairs_trained"] * 2 * (prompt_tokens + response_tokens)
    peak = gpu_tflops * 1e12
    generate_flops = 2 * model_params * responses * (prompt_tokens + response_tokens)
    train_flops = (6 if lora else 8) * model_params * out["dpo_tokens"]
    out["generation_gpu_hours"] = generate_flops / (peak * generate_utilization) / 3600
    out["training_gpu_hours"] = train_flops / (peak * train_utilization) / 3600
    out["gpu_hours"] = out["generation_gpu_hours"] + out["training_gpu_hours"]
    total = out.drop(columns=["batch_size"]).sum(numeric_only=True)
    total["measured_traces"] = out["measured_traces"].max()
    return pd.concat([out.astype({"batch_size": object}), pd.DataFrame([{"batch_size": "total", **total.to_dict()}])],
                     ignore_index=True)


def template_tokens(template: str, tokenizer=None) -> int:
    """Tokens of a judge template with its three fields empty (the fixed part of every judge request), counted
    by ``tokenizer``, or without one by OpenAI's rule of thumb of four characters of English per token."""
    empty = template.replace("{prompt}", "").replace("{response_a}", "").replace("{response_b}", "")
    if tokenizer is None:
        return math.ceil(len(empty) / 4)
    return len(tokenizer(empty, add_special_tokens=False)["input_ids"])


def judge_answer_tokens(judge: dict) -> float:
    """The judge's answer length: one token for log-probability verdicts, else its ``max_tokens`` (a cap)."""
    if judge.get("verdict") == "logprobs":
        return 1.0
    if judge.get("max_tokens"):
        return float(judge["max_tokens"])
    raise EstimateError("judge.max_tokens: the params' judge sets no answer length; give --judge-answer-tokens")


def from_files(tables: str | Path, measured, target, **inputs) -> pd.DataFrame:
    """:func:`costs` of :func:`scale_counts` from a results folder's ``02_ledger.csv`` and ``02_iterations.csv``,
    the params that made them (``measured``) and the target params (response length, DPO epochs, judge
    prices and answer length, LoRA or full fine-tuning)."""
    tables = Path(tables)
    for name in ("02_ledger.csv", "02_iterations.csv"):
        if not (tables / name).is_file():
            raise EstimateError(f"--ledger: {tables / name} not found (run notebook 02 of a profile first)")
    counts = scale_counts(pd.read_csv(tables / "02_ledger.csv"), pd.read_csv(tables / "02_iterations.csv"),
                          measured, target)
    judge = dict(target.judge)
    answer = inputs.pop("judge_answer_tokens", None) or judge_answer_tokens(judge)
    return costs(counts, response_tokens=inputs.pop("response_tokens", None) or target.sampling.max_new_tokens,
                 judge_answer_tokens=answer, input_price=float(judge.get("input_price") or 0.0),
                 output_price=float(judge.get("output_price") or 0.0), lora=target.lora is not None, **inputs)
