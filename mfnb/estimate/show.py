"""The estimate as text: what was assumed, per item, the judge's wall-clock, totals per notebook."""
from __future__ import annotations

import numbers
import sys
from typing import TextIO

import pandas as pd

from mfnb.estimate import Estimate


def _fmt(value) -> str:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value != value:
            return ""
        if value == 0:
            return "0"
        if float(value).is_integer() and abs(value) >= 1:
            return f"{int(value):,}"
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, formatters={c: _fmt for c in frame.columns})


def show(est: Estimate, header: list[str], out: TextIO = sys.stdout, template_counted: str = "characters / 4") -> None:
    """Print ``header`` lines, every assumption with its source, the items, the judge's wall-clock and totals."""
    a = est.assumptions
    lines = list(header)
    lines.append(f"# assumed: prompt_tokens = {a.prompt_tokens:g}: {a.SOURCES['prompt_tokens']}")
    lines.append("# assumed: response_tokens = " + (f"{a.response_tokens:g} (given)" if a.response_tokens is not None
                                                    else a.SOURCES["response_tokens"]))
    lines.append(f"# assumed: judge_latency_s = {a.judge_latency_s:g}: {a.SOURCES['judge_latency_s']}")
    for name in ("rate_limit", "tokens_per_minute"):
        if getattr(a, name) is not None:
            lines.append(f"# {name} = {getattr(a, name):g}: {a.SOURCES[name]}")
    lines.append(f"# judge template tokens: {template_counted}; judge answer: max_tokens (1 for logprob verdicts); "
                 "prices and rate limits: the judge's params")
    lines.append("# trained tokens: rows x epochs (x 2 for DPO's chosen and rejected) x max_length (an upper bound)")
    for kind, t in est.throughputs.items():
        lines.append(f"# throughput {kind} = {t.tokens_per_second:,.1f} tokens/s per {est.device} ({t.source})")
    judges = [j for j in est.table["judge"] if j and j.get("kind") == "alpaca_eval"]
    for j in {j["model"]: j for j in judges}.values():
        lines.append(f"# judge {j['model']}: one request per pair (one order, alpaca_eval randomises which output "
                     f"is shown first), {j['max_tokens']} output token(s)" + (" with log-probabilities"
                     if j.get("verdict") == "logprobs" else "") + f", its prompt template and model from "
                     f"{j['config_source']}; prices: {j['price_source']}; concurrency {j['concurrency']}")
    if est.table["extrapolations"].sum() if "extrapolations" in est.table else 0:
        lines.append("# extrapolations: full-model folders ExPO writes (one at a time, deleted after sampling); GB "
                     "from the parameter count in the aligned model's hub name at 2 bytes per parameter (bf16); Table 2's "
                     "models are sampled at the sampling throughput above whatever their size (a 13B or 70B pair's "
                     "hours are underestimated)")
    for name, (n, source) in est.sizes.items():
        lines.append(f"# dataset size {name} = {n:,} ({source}; --size {name}=N to change)")
    print("\n".join(lines), file=out)
    items = est.table[["notebook", "source", "item", "responses", "generated_tokens", "training_runs",
                       "optimizer_steps", "trained_tokens", "judge_requests", "judge_input_tokens",
                       "judge_output_tokens", "judge_dollars", "gpu_hours"] + _extrapolated(est.table)].copy()
    items["notebook"] = items["notebook"].str[:2]
    items["source"] = items["source"].where(items["source"] == "params", "ledger")
    print("\n== items (counts from params are upper bounds: a cold cache, every response at its cap)", file=out)
    print(_table(items), file=out)
    if len(est.clock):
        clock = est.clock.copy()
        clock["notebook"] = clock["notebook"].str[:2]
        print("\n== judge wall-clock (the longest of requests / rate_limit, tokens / tokens_per_minute, requests x "
              "latency / concurrency; the judge's params set the limits)", file=out)
        print(_table(clock), file=out)
    totals = est.totals()
    totals["notebook"] = totals["notebook"].str[:2].where(totals["notebook"] != "total", "total")
    print("\n== totals (source: params = counted from the notebook's params, ledger = scaled from a finished run)",
          file=out)
    print(_table(totals[["notebook", "source", "responses", "generated_tokens", "training_runs", "trained_tokens",
                         "judge_requests", "judge_input_tokens", "judge_output_tokens", "judge_dollars",
                         "sampling_gpu_hours", "training_gpu_hours", "gpu_hours", "judge_hours"]
                        + _extrapolated(est.table)]), file=out)


def _extrapolated(table: pd.DataFrame) -> list[str]:
    """The extrapolation columns, where any folder is written."""
    return ["extrapolations", "extrapolated_gb"] if "extrapolations" in table and table["extrapolations"].sum() else []
