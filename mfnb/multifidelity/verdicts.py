"""Notebook 02's verdicts: Table 4 per seed and over seeds (intervals that cover training seeds and test
prompts), "multi-fidelity better / worse / inconclusive" per comparison and overall, the spend at which the
multi-fidelity run first matches vanilla(m=M), and the fixed ladder's schedule.

Verdicts use WinFreq (ties 1/2): it is the convention in which 0.5 means "as good as the baseline" whatever
the tie rate.  wins / total (the metric of the paper's Section 5) is shown beside it, and the paper's numbers
only beside that column.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from mfnb import stats
from mfnb.core import reference
from mfnb.core.formatting import fmt, fmt_interval, round_half_up
from mfnb.multifidelity.config import vanilla_name
from mfnb.multifidelity.trace import TraceResult

PAPER_BASELINES = (vanilla_name(2), vanilla_name(3))  # the paper's vanilla(m=2), vanilla(m=3)


# ----------------------------------------------------------------------------------------------
# Table 4
# ----------------------------------------------------------------------------------------------

def table4(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Table 4 per seed: test win rate of the multi-fidelity model against each baseline in both conventions,
    exact and empirical-Bernstein intervals beside Lemma 1's radius, the budgets both ways, the fidelities the
    multi-fidelity run skipped, and the paper's wins / total for the same cell where it has one (its two
    traces are our first two seeds)."""

    frames = [tr.test for tr in traces if len(tr.test)]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    ref = reference.load("mf_table4")
    ref_map = {(str(r.sample_size), vanilla_name(int(r.baseline.split("=")[1].rstrip(")")))): r.win_rate
               for r in ref.itertuples()}  # the paper's "vanilla(m=2)" is our vanilla-m2
    out["paper_sample_size"] = [f"{b}" if k == 1 else f"{b}-{k}" for b, k in zip(out["batch_size"], out["trace"])]
    out["paper_wins_over_total (reference)"] = [ref_map.get((s, b), math.nan)
                                                for s, b in zip(out["paper_sample_size"], out["baseline"])]
    out["flag"] = np.where(out["mf_skipped"].astype(str).str.len() > 0,
                           "multi-fidelity skipped " + out["mf_skipped"].astype(str) + " (D^(m) empty)", "")
    cols = ["label", "batch_size", "trace", "seed", "baseline", "compared_at", "candidate", "baseline_candidate",
            "candidate_Lambda", "baseline_Lambda", "candidate_Lambda_with_validation", "baseline_Lambda_with_validation",
            "n", "failed", "wins", "ties", "losses",
            "win_rate", "win_rate_exact_low", "win_rate_exact_high", "win_rate_bernstein_low",
            "win_rate_bernstein_high", "radius",
            "wins_over_total", "wins_over_total_exact_low", "wins_over_total_exact_high",
            "paper_wins_over_total (reference)", "candidate_vs_top", "baseline_vs_top", "baseline_incremental_batch",
            "mf_skipped", "flag"]
    return out[cols]


def _score_matrix(traces: Sequence[TraceResult], batch_size: int, baseline: str, convention: str) -> np.ndarray:
    rows = []
    for tr in traces:
        if tr.batch_size != batch_size or not len(tr.outcomes):
            continue
        sub = tr.outcomes[tr.outcomes["baseline"] == baseline].sort_values("prompt")
        if len(sub):
            rows.append(stats.outcome_scores(sub["outcome"], convention))
    if not rows:
        return np.empty((0, 0))
    width = max(len(r) for r in rows)
    return np.vstack([np.pad(r, (0, width - len(r)), constant_values=np.nan) for r in rows])


def table4_summary(traces: Sequence[TraceResult], t4: pd.DataFrame, delta: float = 0.05) -> pd.DataFrame:
    """Table 4 over seeds, one row per (B, baseline): mean test win rate in both conventions with an interval
    over training seeds *and* test prompts (:func:`mfnb.stats.seed_prompt_interval`), the verdict it supports,
    the seeds where the multi-fidelity run skipped a fidelity, and the paper's wins / total (mean of its two
    traces, a reference)."""
    if t4 is None or not len(t4):
        return pd.DataFrame()
    rows = []
    for (b, base), sub in t4.groupby(["batch_size", "baseline"], sort=False):
        row = {"batch_size": b, "baseline": base, "compared_at": sub["compared_at"].iloc[0], "seeds": len(sub),
               "Lambda_mean": sub["candidate_Lambda"].mean(),
               "candidate_Lambda_with_validation_mean": sub["candidate_Lambda_with_validation"].mean(),
               "baseline_Lambda_with_validation_mean": sub["baseline_Lambda_with_validation"].mean()}
        for conv, prefix in (("half", "win_rate"), ("wins_over_total", "wins_over_total")):
            iv = stats.seed_prompt_interval(_score_matrix(traces, b, base, conv), delta)
            row.update({prefix: iv["mean"], f"{prefix}_low": iv["low"], f"{prefix}_high": iv["high"],
                        f"{prefix}_seed_sd": iv["seed_sd"]})
            if conv == "half":
                row.update(interval=iv["method"], df=iv["df"])
        row["verdict"] = stats.verdict(row["win_rate_low"], row["win_rate_high"])
        row["identical_models"] = bool((sub["ties"] == sub["n"]).all())  # every test pair a tie: same responses
        row["seed_verdicts"] = ", ".join(stats.verdict(lo, hi).replace("multi-fidelity ", "")
                                         for lo, hi in zip(sub["win_rate_exact_low"], sub["win_rate_exact_high"]))
        row["seeds_mf_skipped"] = int((sub["mf_skipped"].astype(str).str.len() > 0).sum())
        row["skipped"] = "; ".join(sorted({s for s in sub["mf_skipped"].astype(str) if s}))
        ref = sub["paper_wins_over_total (reference)"].dropna()
        row["paper_wins_over_total (reference)"] = float(ref.mean()) if len(ref) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def overall_verdict(summary: pd.DataFrame) -> dict:
    """Counts of comparisons per verdict, and whether the paper's claim (better than vanilla(m=2) and
    vanilla(m=3) at equal budget) is reproduced, reversed or inconclusive across its comparisons."""
    counts = summary["verdict"].value_counts().to_dict() if len(summary) else {}
    paper = summary[summary["baseline"].isin(PAPER_BASELINES)]
    clean = paper[paper["seeds_mf_skipped"] == 0]
    better = (paper["verdict"] == stats.VERDICTS[0])
    worse = (paper["verdict"] == stats.VERDICTS[1])
    if len(paper) and better.all():
        claim = "reproduced"
    elif len(paper) and worse.any() and not better.any():
        claim = "reversed"
    elif better.any() and worse.any():
        claim = "mixed"
    else:
        claim = "inconclusive"
    return {"comparisons": len(summary), "better": counts.get(stats.VERDICTS[0], 0),
            "worse": counts.get(stats.VERDICTS[1], 0), "inconclusive": counts.get(stats.VERDICTS[2], 0),
            "paper_comparisons": len(paper), "paper_better": int(better.sum()), "paper_worse": int(worse.sum()),
            "paper_better_without_skips": int((clean["verdict"] == stats.VERDICTS[0]).sum()),
            "paper_claim": claim}


def verdict_lines(summary: pd.DataFrame, delta: float) -> list[str]:
    """The notebook's verdict on Table 4, one line per comparison and an overall line, every number
    formatted as the displayed table formats it."""
    if summary is None or not len(summary):
        return ["No test comparison was run (no baseline had a budget)."]
    level = fmt(1 - delta, 0, percent=True)
    lines = []
    for _, r in summary.iterrows():
        skip = (f"; flagged: the multi-fidelity run skipped {r['skipped']} in {r['seeds_mf_skipped']} of "
                f"{r['seeds']} seeds" if r["seeds_mf_skipped"] else "")
        paper = r["paper_wins_over_total (reference)"]
        lines.append(f"- B = {r['batch_size']}, vs **{r['baseline']}** ({r['compared_at']}): WinFreq {fmt(r['win_rate'])} "
                     f"{fmt_interval(r['win_rate_low'], r['win_rate_high'])} over {r['seeds']} seeds and the test "
                     f"prompts ({level}); wins / total {fmt(r['wins_over_total'])} "
                     f"{fmt_interval(r['wins_over_total_low'], r['wins_over_total_high'])}"
                     + (f", paper {fmt(paper)} (reference, wins / total)" if pd.notna(paper) else "")
                     + f" -> **{r['verdict']}**{skip}."
                     + (" Every test pair was a tie in every seed: the two runs ended with the same model (with the "
                        "same seeds, the fixed schedule made exactly the adaptive run's choices)."
                        if r["identical_models"] else ""))
    o = overall_verdict(summary)
    lines.append("")
    lines.append(f"**Overall:** of {o['comparisons']} comparisons at equal Lambda, multi-fidelity is better in "
                 f"{o['better']}, worse in {o['worse']} and inconclusive in {o['inconclusive']} (intervals over "
                 f"seeds and prompts, WinFreq against 0.5). The paper's claim (better than vanilla(m=2) and "
                 f"vanilla(m=3)): **{o['paper_claim']}** ({o['paper_better']} of {o['paper_comparisons']} "
                 f"comparisons resolved in its favour, {o['paper_better_without_skips']} of them without a skipped "
                 f"fidelity; {o['paper_worse']} resolved against it).")
    return lines


# ----------------------------------------------------------------------------------------------
# The paper's thesis as a number: the spend at which the multi-fidelity run matches vanilla(m=M)
# ----------------------------------------------------------------------------------------------

def spend_ratio_table(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Per trace: vanilla(m=M)'s final test WinFreq against the top expert (the target), the first
    multi-fidelity iterate whose test WinFreq against the top expert reaches it, the Lambda spent by then, and
    that spend over vanilla(m=M)'s (inf when no iterate reaches the target)."""
    rows = []
    for tr in traces:
        M = len(tr.config.fidelities)
        name = vanilla_name(M)
        top = tr.vs_top
        if name not in tr.baselines or not len(top):
            continue
        target_row = top[top["what"] == f"{name} (chosen)"]
        if not len(target_row):
            continue
        target = float(target_row["win_rate"].iloc[0])
        its = top[top["what"] == "multi-fidelity iterate"].sort_values("t")
        spend = stats.first_reaching(its["Lambda"], its["win_rate"], target)
        hit = its[its["Lambda"] == spend].head(1) if math.isfinite(spend) else its.iloc[0:0]
        van_spend = tr.baselines[name].expert_cost()
        rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "seed": tr.seed,
                     "target_run": name, "target_win_rate_vs_top": target, "target_Lambda": van_spend,
                     "mf_first_reaching": hit["candidate"].iloc[0] if len(hit) else "not reached",
                     "mf_first_reaching_win_rate_vs_top": float(hit["win_rate"].iloc[0]) if len(hit) else math.nan,
                     "mf_spend_to_match": spend, "spend_ratio": spend / van_spend if van_spend > 0 else math.nan,
                     "mf_final_win_rate_vs_top": float(its.loc[its["t"] == tr.mf.best["t"], "win_rate"].iloc[0])
                     if tr.mf.best is not None and (its["t"] == tr.mf.best["t"]).any() else math.nan})
    return pd.DataFrame(rows)


def spend_ratio_summary(ratios: pd.DataFrame, delta: float = 0.05) -> pd.DataFrame:
    """Mean spend ratio per B and over all traces, with a t-interval over seeds."""
    if not len(ratios):
        return pd.DataFrame()
    groups = [(str(b), sub) for b, sub in ratios.groupby("batch_size", sort=False)] + [("all", ratios)]
    rows = []
    for b, sub in groups:
        s = stats.ratio_summary(sub["spend_ratio"].to_numpy(dtype=float), delta)
        rows.append({"batch_size": b, **s})
    return pd.DataFrame(rows)


def spend_ratio_lines(summary: pd.DataFrame, delta: float) -> list[str]:
    """The thesis as a sentence per row of ``spend_ratio_summary``."""
    if not len(summary):
        return ["No spend ratio: vanilla(m=M) was not among the baselines."]
    level = fmt(1 - delta, 0, percent=True)
    lines = []
    for r in summary.itertuples():
        where = "over all traces" if r.batch_size == "all" else f"at B = {r.batch_size}"
        if r.reached < r.seeds:
            lines.append(f"- {where}: the multi-fidelity run never matched vanilla's final test WinFreq against the "
                         f"top expert in {r.seeds - r.reached} of {r.seeds} seeds (ratio > 1 there); median ratio "
                         f"{fmt(r.median)}.")
        elif math.isfinite(r.low):
            lines.append(f"- {where}: it matched vanilla's final quality after spending {fmt(r.mean)} of vanilla's "
                         f"Lambda on average, {level} t-interval over {r.seeds} seeds {fmt_interval(r.low, r.high)}"
                         + (" (entirely below 1: cheaper)" if r.high < 1 else " (contains 1: not shown cheaper)"
                            if r.low <= 1 else " (entirely above 1)") + ".")
        else:
            lines.append(f"- {where}: ratio {fmt(r.mean)} from one seed (no interval).")
    lines.append("- Caution: the first crossing compares point estimates, each with its own test noise, and takes the "
                 "earliest of several iterates, so it leans early; the interval covers the spread over seeds, not that "
                 "selection. Table 4's head-to-head comparison of the final models carries no such selection.")
    return lines


# ----------------------------------------------------------------------------------------------
# The fixed ladder's schedule
# ----------------------------------------------------------------------------------------------

def ladder_schedule(mf_runs: Sequence, fixed: Sequence[int] | None = None) -> list[int]:
    """Iterations per fidelity below the top for the fixed ladder: ``fixed`` when given, else the mean number
    the adaptive runs made there, rounded half up."""
    if fixed is not None:
        return [int(k) for k in fixed]
    M = len(mf_runs[0].config.fidelities)
    per = []
    for m in range(1, M):
        counts = [int(((run.history["fidelity"] == m) & (run.history["kind"] == "train")).sum()) for run in mf_runs]
        per.append(int(round_half_up(float(np.mean(counts)), 0)))
    return per


def final_vs_top(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Every run's output model on one scale: test WinFreq (and wins / total) against the top expert, mean,
    seed spread and range over the seeds at each B."""
    rows = []
    for tr in traces:
        top = tr.vs_top
        if not len(top):
            continue
        best = tr.mf.best["t"] if tr.mf.best is not None else None
        mine = top[(top["what"] == "multi-fidelity iterate") & (top["t"] == best)]
        for what, sub in [("multi-fidelity (chosen)", mine),
                          *[(w, top[top["what"] == w]) for w in top["what"].unique() if w.endswith("(chosen)")]]:
            if len(sub):
                rows.append({"batch_size": tr.batch_size, "seed": tr.seed, "run": what.replace(" (chosen)", ""),
                             "Lambda_at_model": float(sub["Lambda"].iloc[0]), "win_rate": float(sub["win_rate"].iloc[0]),
                             "wins_over_total": float(sub["wins_over_total"].iloc[0])})
    frame = pd.DataFrame(rows)
    if not len(frame):
        return frame
    return frame.groupby(["batch_size", "run"], sort=False).agg(
        seeds=("seed", "size"), Lambda_at_model=("Lambda_at_model", "mean"), win_rate=("win_rate", "mean"),
        win_rate_seed_sd=("win_rate", "std"), win_rate_min=("win_rate", "min"), win_rate_max=("win_rate", "max"),
        wins_over_total=("wins_over_total", "mean")).reset_index()
