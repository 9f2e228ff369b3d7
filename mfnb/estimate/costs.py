"""Counts (:mod:`mfnb.estimate.counts`) turned into tokens, judge dollars, GPU hours and judge wall-clock.

Every input that is not counted is an :class:`Assumptions` field or a throughput (:mod:`mfnb.estimate.throughput`),
printed beside the result. Upper bounds throughout: each response at its ``max_new_tokens`` cap (unless
``response_tokens`` is given), each training sequence at its ``max_length``, the judge's text answer at its
``max_tokens``, no cache hits and no retried judgements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from mfnb.judges import LETTER_TEMPLATES, TEMPLATES


@dataclass
class Assumptions:
    prompt_tokens: float = 256.0          # mean prompt length (a judge request carries it; training caps it by max_length)
    response_tokens: float | None = None  # mean response length; None: each item's max_new_tokens (an upper bound)
    judge_latency_s: float = 5.0          # seconds per judge request (bounds the wall-clock with the concurrency)
    rate_limit: float | None = None       # requests per minute for a judge whose params set none
    tokens_per_minute: float | None = None  # tokens per minute for a judge whose params set none

    SOURCES = {"prompt_tokens": "assumed (pass --prompt-tokens with your data's mean)",
               "response_tokens": "each item's max_new_tokens (an upper bound; --response-tokens sets a mean)",
               "judge_latency_s": "assumed (--judge-latency); with the judge's concurrency it bounds the wall-clock",
               "rate_limit": "given (--judge-rate-limit) for judges whose params set no rate_limit",
               "tokens_per_minute": "given (--judge-tokens-per-minute) for judges whose params set no tokens_per_minute"}


def template_tokens(template: str, tokenizer=None) -> int:
    """Tokens of a judge template with its fields empty (the fixed part of every judge request), counted
    by ``tokenizer``, or without one by OpenAI's rule of thumb of four characters of English per token."""
    empty = template
    for name in ("{prompt}", "{response_a}", "{response_b}", "{instruction}", "{output_1}", "{output_2}"):
        empty = empty.replace(name, "")  # the project's fields and alpaca_eval's
    if tokenizer is None:
        return math.ceil(len(empty) / 4)
    return len(tokenizer(empty, add_special_tokens=False)["input_ids"])


def judge_template(judge: Mapping) -> str:
    """The judge's prompt: alpaca_eval's annotator carries its own (``template``), the project's judges name one."""
    if judge.get("template") is not None:
        return judge["template"]
    return (LETTER_TEMPLATES if judge.get("verdict") == "logprobs" else TEMPLATES)[judge.get("prompt_template", "dpo")]


def judge_answer_tokens(judge: Mapping) -> float:
    """The judge's answer length: one token for log-probability verdicts, else its ``max_tokens`` (a cap)."""
    if judge.get("verdict") == "logprobs":
        return 1.0
    if judge.get("max_tokens"):
        return float(judge["max_tokens"])
    raise ValueError("judge.max_tokens: the params' judge sets no answer length, so its output tokens cannot be "
                     "bounded; set judge.max_tokens")


def priced(items: pd.DataFrame, throughputs: Mapping, assume: Assumptions, tokenizer=None) -> pd.DataFrame:
    """Per item: generated and trained tokens, judge requests, tokens and dollars, and GPU hours."""
    out = items.copy()
    response = out["max_new_tokens"].astype(float) if assume.response_tokens is None else \
        pd.Series(float(assume.response_tokens), index=out.index)
    out["generated_tokens"] = out["responses"] * response
    out["trained_tokens"] = out["train_sequences"] * out["max_length"]
    judge_in, judge_out, dollars = [], [], []
    for r, resp in zip(out.itertuples(), response):
        judge = r.judge or {}
        if r.judge_requests:
            per_in = template_tokens(judge_template(judge), tokenizer) + assume.prompt_tokens + 2 * resp
            tokens_in, tokens_out = r.judge_requests * per_in, r.judge_requests * judge_answer_tokens(judge)
        else:
            tokens_in = tokens_out = 0.0
        judge_in.append(tokens_in)
        judge_out.append(tokens_out)
        dollars.append((tokens_in * float(judge.get("input_price") or 0) + tokens_out * float(judge.get("output_price") or 0)) / 1e6)
    out["judge_input_tokens"], out["judge_output_tokens"], out["judge_dollars"] = judge_in, judge_out, dollars
    out["sampling_gpu_hours"] = out["generated_tokens"] / throughputs["sampling"].tokens_per_second / 3600
    train_rate = [throughputs["training_full" if full else "training"].tokens_per_second for full in out["full_ft"]]
    out["training_gpu_hours"] = out["trained_tokens"] / pd.Series(train_rate, index=out.index, dtype=float) / 3600
    out["gpu_hours"] = out["sampling_gpu_hours"] + out["training_gpu_hours"]
    return out


def judge_clock(table: pd.DataFrame, assume: Assumptions) -> pd.DataFrame:
    """Per notebook and judge: requests, tokens, and the wall-clock they take at the judge's own limits: the
    longest of requests / ``rate_limit`` (per minute), tokens / ``tokens_per_minute`` and requests x latency /
    ``concurrency``; ``bound`` names which one binds."""
    rows = []
    asked = table[table["judge_requests"] > 0]
    for (notebook, model), group in asked.groupby(["notebook", "judge_model"], sort=False):
        judge = group["judge"].iloc[0]
        requests = float(group["judge_requests"].sum())
        tokens = float(group["judge_input_tokens"].sum() + group["judge_output_tokens"].sum())
        rpm = judge.get("rate_limit") or assume.rate_limit
        tpm = judge.get("tokens_per_minute") or assume.tokens_per_minute
        limits = {"requests/min": requests / rpm if rpm else 0.0, "tokens/min": tokens / tpm if tpm else 0.0,
                  "concurrency x latency": requests * assume.judge_latency_s / int(judge.get("concurrency") or 4) / 60}
        bound = max(limits, key=limits.get)
        rows.append({"notebook": notebook, "judge": model, "requests": requests, "tokens": tokens,
                     "rate_limit": rpm or "none set", "tokens_per_minute": tpm or "none set",
                     "concurrency": int(judge.get("concurrency") or 4), "hours": limits[bound] / 60, "bound": bound})
    return pd.DataFrame(rows)
