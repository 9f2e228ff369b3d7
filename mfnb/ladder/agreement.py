"""How far to trust an LLM judge: how often its answers can be read at all, and how often its verdicts agree
with a known quality (a checker) on the same pairs, per judge mode (text parsing vs log-probabilities).

:func:`judge_agreement` asks each pair in both orders (:meth:`mfnb.judges.OpenAIJudge.examine`, no cache)
and reports, per mode: the parse rate of single answers and where the letter came from, the share of pairs
with a verdict, position consistency (the two orders name different letters), and agreement with the
quality ordering on the pairs the quality separates (a tie verdict counts 1/2, as in WinFreq), with an exact
binomial interval. With log-probabilities it also reports the agreement of P(first is better) > 0.5.
Notebook 01 shows :func:`checker_table` beside the fidelity win rates, for its judge and any extra ones (a
judge that parses nothing or agrees at chance level makes Table 1 meaningless). A judge without answers to
read (the oracle, a reward model) is measured on its verdicts alone: its parse rate is the share of pairs
with a verdict.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence


def _exact_interval(successes: float, n: int, delta: float = 0.05) -> tuple[float, float]:
    from scipy.stats import beta

    if n == 0:
        return math.nan, math.nan
    k = int(round(successes))
    low = 0.0 if k == 0 else float(beta.ppf(delta / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - delta / 2, k + 1, n - k))
    return low, high


def agreement_rows(rows: Sequence[dict], truth: Sequence[int]) -> dict:
    """Summary of :meth:`OpenAIJudge.examine` rows against ``truth`` (+1 first better, -1 second, 0 tie)."""
    answers = [(r[f"letter_{o}"], r[f"source_{o}"]) for r in rows for o in ("ab", "ba")]
    n_answers = len(answers)
    parsed = sum(letter is not None for letter, _ in answers)
    by_logprobs = sum(source == "logprobs" for _, source in answers)
    judged = [r for r in rows if r["verdict"] != "failed"]
    consistent = sum(r["verdict"] in ("win", "lose") for r in judged)
    hits = n = 0.0
    p_hits = p_n = 0
    for r, t in zip(rows, truth):
        if t == 0:
            continue
        if r["verdict"] != "failed":
            n += 1
            hits += {"win": t > 0, "lose": t < 0}.get(r["verdict"], 0.5) if r["verdict"] != "tie" else 0.5
        if r.get("p_first") is not None and r["p_first"] != 0.5:
            p_n += 1
            p_hits += (r["p_first"] > 0.5) == (t > 0)
    low, high = _exact_interval(hits, int(n))
    return {"pairs": len(rows), "answers": n_answers, "parse_rate": parsed / n_answers if n_answers else math.nan,
            "read_from_logprobs": by_logprobs / n_answers if n_answers else math.nan,
            "read_from_text": (parsed - by_logprobs) / n_answers if n_answers else math.nan,
            "verdict_rate": len(judged) / len(rows) if rows else math.nan,
            "position_consistent": consistent / len(judged) if judged else math.nan,
            "separated_pairs": sum(t != 0 for t in truth), "agreement_n": int(n),
            "agreement": hits / n if n else math.nan, "agreement_low": low, "agreement_high": high,
            "prob_agreement_n": p_n, "prob_agreement": p_hits / p_n if p_n else math.nan}


def judge_agreement(judges: dict, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                    quality: Callable[[str, str], float], tie_margin: float = 0.0):
    """One row per judge (``{mode name: OpenAIJudge}``): parse rates, verdict rate, position consistency and
    agreement with ``quality`` (pairs within ``tie_margin`` of each other are not counted), as a DataFrame;
    also returns the per-pair answers of every judge."""
    import pandas as pd

    truth = []
    for p, a, b in zip(prompts, first, second):
        d = quality(p, a) - quality(p, b)
        truth.append(0 if abs(d) <= tie_margin else (1 if d > 0 else -1))
    table, details = [], {}
    for name, judge in judges.items():
        before = judge.stats.as_dict()
        rows = judge.examine(list(prompts), list(first), list(second))
        after = judge.stats.as_dict()
        details[name] = rows
        table.append({"judge": name, **agreement_rows(rows, truth),
                      "calls": after["calls"] - before["calls"],
                      "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
                      "completion_tokens": after["completion_tokens"] - before["completion_tokens"]})
    return pd.DataFrame(table), details


def truth_from(quality: Callable[[str, str], float], prompts, first, second, tie_margin: float) -> list[int]:
    """+1 where the checker scores ``first`` higher by more than ``tie_margin``, -1 lower, 0 a tie."""
    out = []
    for p, a, b in zip(prompts, first, second):
        d = quality(p, a) - quality(p, b)
        out.append(0 if abs(d) <= tie_margin else (1 if d > 0 else -1))
    return out


def verdict_rows(outcomes: Sequence[str], truth: Sequence[int] | None, delta: float = 0.05) -> dict:
    """Parse rate (pairs with a verdict) and agreement with ``truth`` of plain verdicts (a tie counts 1/2)."""
    verdicts = [str(o) for o in outcomes]
    judged = sum(v != "failed" for v in verdicts)
    row = {"pairs": len(verdicts), "answers": len(verdicts), "parse_rate": judged / len(verdicts) if verdicts else math.nan,
           "verdict_rate": judged / len(verdicts) if verdicts else math.nan, "position_consistent": math.nan}
    return {**row, **_agreement(verdicts, truth, delta)}


def _agreement(verdicts: Sequence[str], truth: Sequence[int] | None, delta: float) -> dict:
    if truth is None:
        return {"separated_pairs": math.nan, "agreement_n": 0, "agreement": math.nan, "agreement_low": math.nan,
                "agreement_high": math.nan}
    hits = n = 0.0
    for v, t in zip(verdicts, truth):
        if t == 0 or v == "failed":
            continue
        n += 1
        hits += 0.5 if v == "tie" else float((v == "win") == (t > 0))
    low, high = _exact_interval(hits, int(n), delta)
    return {"separated_pairs": sum(t != 0 for t in truth), "agreement_n": int(n),
            "agreement": hits / n if n else math.nan, "agreement_low": low, "agreement_high": high}


def checker_table(judges: dict, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                  quality: Callable[[str, str], float] | None, tie_margin: float = 0.0, delta: float = 0.05):
    """One row per judge (``{name: judge}``) on the same pairs: parse rate, verdict rate, position consistency
    and agreement with the checker ``quality`` (None: a world without one; agreement is then not measured).
    An LLM judge (one with ``examine``) is asked each pair in both orders, uncached, and its single answers
    are counted; any other judge is asked through the judge protocol (``compare``, cached)."""
    import pandas as pd

    truth = truth_from(quality, prompts, first, second, tie_margin) if quality is not None else None
    rows = []
    for name, judge in judges.items():
        before = judge.stats.as_dict()
        if hasattr(type(getattr(judge, "inner", judge)), "examine"):
            answers = judge.examine(list(prompts), list(first), list(second))
            row = agreement_rows(answers, truth or [0] * len(answers))
            row.update(_agreement([a["verdict"] for a in answers], truth, delta))
            mode = "both orders, answers read"
        else:
            row = verdict_rows(judge.compare(list(prompts), list(first), list(second)), truth, delta)
            mode = "verdicts"
        after = judge.stats.as_dict()
        rows.append({"judge": name, "kind": type(getattr(judge, "inner", judge)).__name__, "mode": mode, **row,
                     "checker": "none" if quality is None else "world quality",
                     "calls": after["calls"] - before["calls"], "cache_hits": after["cache_hits"] - before["cache_hits"],
                     "dollars": after["dollars"] - before["dollars"]})
    return pd.DataFrame(rows)


def checker_lines(table, delta: float = 0.05) -> list[str]:
    """Sentences computed from :func:`checker_table`: what each judge's numbers mean, in one line each."""
    lines = []
    for r in table.itertuples():
        line = f"- **{r.judge}** ({r.kind}, {r.mode}): parse rate {r.parse_rate:.1%} of {r.answers} answers"
        if r.checker == "none" or r.agreement_n == 0:
            line += "; agreement with a checker not measured (this world has no checker, or no pair it separates)."
        else:
            level = f"{1 - delta:.0%}"
            chance = "above" if r.agreement_low > 0.5 else ("below" if r.agreement_high < 0.5 else "not distinguishable from")
            line += (f"; agrees with the checker on {r.agreement:.1%} of the {r.agreement_n} pairs it separates "
                     f"({level} interval {r.agreement_low:.1%} to {r.agreement_high:.1%}: {chance} chance).")
        if r.kind == "OracleJudge":
            line += (" The oracle judges by the checker itself (with its configured tie margin, noise and position "
                     "bias), so this measures only that configuration, not a model's judgement.")
        lines.append(line)
    return lines
