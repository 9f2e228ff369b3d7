"""Comparisons over training seeds and prompts, the verdicts they support (and how every notebook's claims
table writes them), and the spend ratio."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats

from mfnb.core.formatting import fmt, fmt_interval
from mfnb.stats.checks import check_delta

# ----------------------------------------------------------------------------------------------
# Comparisons over training seeds and prompts, verdicts, and the spend ratio
# ----------------------------------------------------------------------------------------------

def seed_prompt_interval(scores, delta: float = 0.05) -> dict:
    """Mean of a (seeds x prompts) table of per-prompt scores and a t-interval that covers both sources
    of variation.  NaN cells (failed judgements) are left out of their seed's and prompt's means.

    Why this interval: every seed is judged on the *same* test prompts (a crossed design), so the spread
    of the seed means shows training-seed variation but not which prompts happened to be in the test
    set.  With y_sp = mu + a_s + b_p + e_sp the grand mean has variance s_a^2/S + s_b^2/P + s_e^2/(SP);
    var(seed means)/S + var(prompt means)/P estimates that plus s_e^2/(SP) (slightly conservative).  The
    t quantile uses Welch-Satterthwaite degrees of freedom, so with few seeds and a dominant seed term it
    is as wide as a t-interval over seed means (df = S - 1).  A bootstrap over 3 seeds would have 10
    distinct resamples and under-cover.  With one seed it falls back to prompts only (df = P - 1)."""
    check_delta(delta)
    y = np.atleast_2d(np.asarray(scores, dtype=float))
    if y.size == 0 or np.all(np.isnan(y)):
        raise ValueError("no valid scores to build an interval")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # an all-NaN prompt column
        seed_means = np.nanmean(y, axis=1)
        prompt_means = np.nanmean(y, axis=0)
    seed_means = seed_means[~np.isnan(seed_means)]
    prompt_means = prompt_means[~np.isnan(prompt_means)]
    S, P = seed_means.size, prompt_means.size
    mean = float(seed_means.mean())
    b = float(np.var(prompt_means, ddof=1)) / P if P >= 2 else 0.0
    if S >= 2:
        a = float(np.var(seed_means, ddof=1)) / S
        se = math.sqrt(a + b)
        denom = (a**2 / (S - 1) if S > 1 else 0.0) + (b**2 / (P - 1) if P > 1 else 0.0)
        df = (a + b) ** 2 / denom if denom > 0 else float(S - 1)
        method = "t over seeds and prompts (crossed)"
    else:
        a, se, df = math.nan, math.sqrt(b), float(max(P - 1, 1))
        method = "t over prompts (one seed)"
    half = float(stats.t.ppf(1 - delta / 2, df)) * se if se > 0 else 0.0
    return {"mean": mean, "low": max(0.0, mean - half), "high": min(1.0, mean + half), "se": se, "df": df,
            "seeds": S, "prompts": P, "seed_sd": float(np.std(seed_means, ddof=1)) if S >= 2 else math.nan,
            "seed_term": a, "prompt_term": b, "method": method}


def seed_replicate_interval(points: Sequence[float], replicates: Sequence[np.ndarray], level: float = 0.95, *,
                            n_prompts: int | None = None, discrete: bool = False,
                            bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of a statistic measured once per training seed, each with bootstrap replicates over
    the *same* prompts (shared resampling counts, so replicate b of every seed saw the same prompts).

    The crossed logic of :func:`seed_prompt_interval` for any statistic, a fitted one (an LC win rate, a
    chosen alpha, a rank correlation) included: the variance of the mean is var(seed points)/S (training
    seeds) plus the bootstrap variance of the seed-averaged replicates (prompts and sampling), with a
    Welch-Satterthwaite t quantile (``n_prompts`` - 1 degrees of freedom for the prompt term).  With one
    seed it is that seed's percentile interval (``discrete``: ends the replicates took), so single-seed
    results are unchanged.  ``bounds``: the statistic's range (a rank correlation's [-1, 1], a rate's [0, 1]),
    which the t-interval's ends are clipped to."""
    check_delta(1 - level)
    points = np.asarray(points, dtype=float)
    if points.size == 0 or len(replicates) != points.size:
        raise ValueError(f"one point and one set of replicates per seed, got {points.size} points and "
                         f"{len(replicates)} replicate sets")
    reps = np.stack([np.asarray(r, dtype=float) for r in replicates])
    if points.size == 1:
        x = reps[0][~np.isnan(reps[0])]
        if not len(x):
            return float(points[0]), math.nan, math.nan
        tail = (1.0 - level) / 2.0 * 100.0
        if discrete:
            return (float(points[0]), float(np.percentile(x, tail, method="lower")),
                    float(np.percentile(x, 100.0 - tail, method="higher")))
        low, high = np.percentile(x, [tail, 100.0 - tail])
        return float(points[0]), float(low), float(high)
    S = points.size
    mean = float(points.mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        averaged = np.nanmean(reps, axis=0)
    averaged = averaged[~np.isnan(averaged)]
    if not len(averaged) or np.isnan(mean):
        return mean, math.nan, math.nan
    a = float(np.var(points, ddof=1)) / S
    b = float(np.var(averaged, ddof=1)) if len(averaged) > 1 else 0.0
    if a + b <= 0:
        return mean, mean, mean
    df_b = float(max((n_prompts or len(averaged)) - 1, 1))
    denom = a**2 / (S - 1) + b**2 / df_b
    df = (a + b) ** 2 / denom if denom > 0 else float(S - 1)
    half = float(stats.t.ppf(1 - (1 - level) / 2, df)) * math.sqrt(a + b)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high


def seed_alone_lines(table) -> list[str]:
    """Markdown lines on how far the verdicts of one training seed alone move from the verdict over all seeds.
    ``table``: one row per claim (and ``scope`` where claims have several) with ``verdict``, one ``seed <s>``
    column per seed and ``moved`` (``mfnb.expo`` and ``mfnb.hbat``'s ``seed_claims``); [] when empty."""
    if table is None or not len(table):
        return []
    seeds = [c for c in table if str(c).startswith("seed ")]
    moved = table[table["moved"]]
    lines = [f"- **One training seed alone** ({len(seeds)} seeds): {len(moved)} of {len(table)} claim rows would read "
             "otherwise from some single seed than from all of them together" + (":" if len(moved) else ".")]
    for r in moved.to_dict("records"):
        scope = f", {r['scope']}" if "scope" in r else ""
        alone = ", ".join(f"{s}: {r[s]}" for s in seeds)
        lines.append(f"  - {r['claim']}{scope}: **{r['verdict']}** over the seeds; alone {alone}.")
    return lines


VERDICTS = ("multi-fidelity better", "multi-fidelity worse", "inconclusive")
CLAIM_VERDICTS = ("reproduced", "reversed", "inconclusive")
# the verdict where the instrument cannot tell: a score never measured (a judge-only world's quality), or one read
# by an instrument not shown to beat chance (a reward model at chance choosing ExPO's alpha); never "reversed"
NOT_TESTABLE = "not testable"


def claim_verdict(low: float, high: float, direction: int = 1) -> str:
    """The verdict on a paper's claim that a difference is > 0 (``direction`` 1) or < 0 (-1), from its
    interval: "reproduced" when the interval excludes 0 on the claimed side, "reversed" on the other side,
    else (or without an interval) "inconclusive"."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    low, high = (low, high) if direction > 0 else (-high, -low)
    return "reproduced" if low > 0 else "reversed" if high < 0 else "inconclusive"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One claim verdict from several (metrics or models): all reproduced -> reproduced; some reversed and
    none reproduced -> reversed; anything else (mixed, or some inconclusive) -> inconclusive."""
    verdicts = list(verdicts)
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if "reversed" in verdicts and "reproduced" not in verdicts:
        return "reversed"
    return "inconclusive"


def combine_testable(verdicts: Sequence[str]) -> str:
    """:func:`combine_verdicts` over the rows that could be tested; *not testable* when none could."""
    testable = [v for v in verdicts if v != NOT_TESTABLE]
    return combine_verdicts(testable) if testable else NOT_TESTABLE


def difference_text(diff: float, low: float, high: float) -> str:
    """A difference with its interval, as every claims table prints it: ``+0.120 [0.010, 0.230]``."""
    return f"{fmt(diff, signed=True)} {fmt_interval(low, high)}"


def interval_reading(low: float, high: float, missing: str = "no interval") -> str:
    """How a difference reads from its interval: "higher" / "lower" when it excludes 0, else
    "indistinguishable"; ``missing`` when there is no interval (NaN ends, e.g. one seed)."""
    if math.isnan(low) or math.isnan(high):
        return missing
    return "higher" if low > 0 else "lower" if high < 0 else "indistinguishable"


def claims_table(rows: Sequence[dict], columns: Sequence[str]):
    """One row per claim with ``columns`` in this order (a notebook's claims CSV), so a claim that lacks a
    column gets NaN there instead of moving the others."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(columns))


def verdict(low: float, high: float, null: float = 0.5) -> str:
    """"multi-fidelity better" when the whole interval lies above ``null``, "worse" below it, else
    "inconclusive" (the interval contains ``null``, or is missing)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > null:
        return VERDICTS[0]
    if high < null:
        return VERDICTS[1]
    return VERDICTS[2]


def first_reaching(spend: Sequence[float], values: Sequence[float], target: float) -> float:
    """The spend at the first point (in order) whose value reaches ``target`` (>=); inf when none does."""
    for s, v in zip(spend, values):
        if v >= target:
            return float(s)
    return math.inf


def ratio_summary(ratios: Sequence[float], delta: float = 0.05) -> dict:
    """Mean of per-seed ratios with a t-interval over seeds (df = seeds - 1).  A ratio of inf (target
    never reached) makes the mean and interval undefined (NaN); ``reached`` says how many seeds got there."""
    check_delta(delta)
    r = np.asarray(ratios, dtype=float)
    finite = r[np.isfinite(r)]
    out = {"seeds": int(r.size), "reached": int(finite.size), "mean": math.nan, "low": math.nan,
           "high": math.nan, "median": float(np.median(r)) if r.size else math.nan,
           "min": float(r.min()) if r.size else math.nan, "max": float(r.max()) if r.size else math.nan}
    if r.size and finite.size == r.size:
        out["mean"] = float(finite.mean())
        if r.size >= 2:
            half = float(stats.t.ppf(1 - delta / 2, r.size - 1)) * float(np.std(finite, ddof=1)) / math.sqrt(r.size)
            out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out
