"""Notebook 04's verdicts: one per claim of the HbAT paper, from intervals over training seeds (with a single
seed, over test prompts where the runs kept per-prompt scores: :func:`pairwise_claims`).

Every comparison is a paired difference per seed (same data split, same order) with its Student-t interval
over seeds (:func:`mfnb.hbat.report.t_interval`).  Per metric: *reproduced* when the interval lies on the
paper's side of 0, *reversed* when on the other side, *inconclusive* when it contains 0 (the two are
indistinguishable).  A claim the paper makes on several metrics is *reproduced* only when every one is,
*reversed* when some are reversed and none reproduced, otherwise *inconclusive* (:func:`combine`).  The
paper's direction on each metric is read from its tables in ``mfnb/reference/``.  A metric the world never
measured (the paper world has no known quality: all NaN) is *not testable*: left out of the combination,
and a claim resting on it alone is *not testable* (:func:`combine_testable`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mfnb import stats
from mfnb.core import reference
from mfnb.core.formatting import fmt, fmt_interval
from mfnb.hbat.efficiency import memory_column
from mfnb.hbat.report import (METRICS, NOT_TESTABLE, PAPER_COLUMNS, PAPER_NAMES, known, paired_difference,
                              prompt_paired, seed_summary, t_interval, unknown_text)
from mfnb.stats import difference_text, interval_reading

VERDICTS = stats.CLAIM_VERDICTS
CLAIM_COLUMNS = ("claim", "source", "paper", "ours", "per_metric", "verdict")
ONE_SEED = "no interval (one seed)"   # how a difference over a single seed reads
MIN_MEMORY_REPEATS = 3   # fresh-process repeats behind Table 7's memory ratio before it counts
ORIGINAL_EWC = "HbAT w/ original EWC"
FIGURE2_METRICS = ("quality", "reward")   # the paper's Figure 2 plots PandaLM and Reward
METRIC_NAMES = {"quality": "quality", "reward": "reward", "win_rate": "win rate"}

# (claim, method a, method b, source of the paper's numbers): "a beats b"
PAIRWISE = (
    ("HbAT beats two-stage DPO", "HbAT", "DPO", "Table 4"),
    ("the modified EWC helps: HbAT beats w/o EWC", "HbAT", "w/o EWC", "Table 4"),
    ("alternating alignment helps: HbAT beats w/o alternating", "HbAT", "w/o alternating", "Table 4"),
    ("HbAT beats SFT", "HbAT", "SFT", "Table 4"),
    ("the penalty beats freezing: HbAT beats HbAT-Freeze", "HbAT", "HbAT-Freeze", "Table 1"),
)


verdict, combine = stats.claim_verdict, stats.combine_verdicts  # one rule for every paper's claims


# :func:`combine` over the metrics that could be tested; *not testable* when none could (a world with no known
# quality cannot test a claim made on quality alone)
combine_testable = stats.combine_testable


def paired(runs, a: str, b: str, metric: str, by: str = "method", key: str = "seed") -> tuple[float, float, float, int]:
    """(mean of a - b over the shared seeds, t-interval low, high, seeds)."""
    diff = paired_difference(runs, metric, a, b, by=by, key=key)
    if not len(diff):
        return math.nan, math.nan, math.nan, 0
    mean, _, low, high = t_interval(diff)
    return mean, low, high, len(diff)


def _paper_values() -> dict[tuple[str, str], dict[str, float]]:
    """(method, source) -> the paper's number per metric of ours (Table 4; HbAT-Freeze and HbAT from Table 1,
    LLaMA2-7B, DPO, dialogue)."""

    out = {}
    t4 = reference.load("hbat_table4")
    for row in t4.itertuples():
        name = {v: k for k, v in PAPER_NAMES.items()}.get(row.method, row.method)
        out[(name, "Table 4")] = {m: getattr(row, c) for m, c in PAPER_COLUMNS.items()}
    t1 = reference.load("hbat_table1")
    t1 = t1[(t1.base == "LLaMA2-7B") & ((t1.hpa == "DPO") | (t1.method == "SFT"))]
    for row in t1.itertuples():
        out[(row.method, "Table 1")] = {m: getattr(row, f"dial_{c}") for m, c in PAPER_COLUMNS.items()}
    return out


def _exp(*values: float) -> tuple[float, ...]:
    return tuple(v if math.isnan(v) else math.exp(v) for v in values)


def pairwise_claims(runs, metrics: Sequence[str] = METRICS, records: Sequence[dict] = ()) -> list[dict]:
    """The paper's "a beats b" claims, each on every metric where the paper's numbers order a and b. With a
    single seed, a metric whose records keep per-prompt test scores is paired over test prompts instead
    (:func:`mfnb.hbat.report.prompt_paired`): seed noise is then not in its interval, as the row says."""
    paper = _paper_values()
    present = set(runs["method"])
    rows = []
    for claim, a, b, source in PAIRWISE:
        if a not in present or b not in present:
            continue
        pa, pb = paper[(a, source)], paper[(b, source)]
        parts, said, verdicts, n = [], [], [], 0
        for m in metrics:
            if pa[m] == pb[m]:
                continue
            said.append(f"{METRIC_NAMES[m]} {fmt(pa[m] - pb[m], 2, signed=True)}")
            if not known(runs, m):
                parts.append(f"{METRIC_NAMES[m]}: {unknown_text(m)}")
                verdicts.append((m, NOT_TESTABLE))
                continue
            direction = 1 if pa[m] > pb[m] else -1
            mean, low, high, n = paired(runs, a, b, m)
            over = prompt_paired(runs, records, a, b, m) if n < 2 else None
            if over is not None:
                mean, _, low, high, n_prompts = over
            parts.append(f"{METRIC_NAMES[m]} {difference_text(mean, low, high)}"
                         + (f" (paired over {n_prompts} test prompts)" if over is not None else ""))
            verdicts.append((m, verdict(low, high, direction)))
        rows.append({"claim": claim, "source": source, "paper": f"{a} minus {b}: " + "; ".join(said),
                     "ours": f"{a} minus {b} over {n} seeds: " + "; ".join(parts),
                     "per_metric": ", ".join(f"{m}: {v}" for m, v in verdicts),
                     "verdict": combine_testable([v for _, v in verdicts])})
    return rows


def original_ewc_claims(runs, costs=None) -> list[dict]:
    """Table 7: the modified EWC matches the original EWC's win rate, and costs less time and memory.

    A *match* cannot be shown by an interval that merely contains 0 (no equivalence margin is given), so it
    is *inconclusive* then and *reversed* when the difference is resolved either way.  Time: the ratio of
    training seconds (Fisher estimation included) over the Table 4 runs, paired per seed, interval on the
    log ratio.  Memory: the ratio of peak process memory in Table 7's fresh processes, paired per repeat."""

    if ORIGINAL_EWC not in set(runs["method"]) or "HbAT" not in set(runs["method"]):
        return []
    t7 = reference.load("hbat_table7").set_index("method")
    mean, low, high, n = paired(runs, "HbAT", ORIGINAL_EWC, "win_rate")
    match = "inconclusive" if math.isnan(low) or low <= 0 <= high else "reversed"
    others = "; ".join(f"{METRIC_NAMES[m]} {difference_text(*paired(runs, 'HbAT', ORIGINAL_EWC, m)[:3])}"
                       if known(runs, m) else f"{METRIC_NAMES[m]}: {unknown_text(m)}" for m in ("quality", "reward"))
    rows = [{"claim": "the modified EWC matches the original EWC's win rate", "source": "Table 7",
             "paper": f"win rate {fmt(t7.loc['HbAT', 'gpt4_win'], 2)} vs {fmt(t7.loc[ORIGINAL_EWC, 'gpt4_win'], 2)}",
             "ours": f"HbAT minus original EWC over {n} seeds: win rate {difference_text(mean, low, high)} "
                     f"({interval_reading(low, high, missing=ONE_SEED)}); also {others}",
             "per_metric": f"win_rate: {match}", "verdict": match}]
    column = "cpu_seconds" if "cpu_seconds" in runs and runs["cpu_seconds"].notna().all() else "train_seconds"
    wide = runs.pivot_table(index="seed", columns="method", values=column)
    ratio = np.log(wide[ORIGINAL_EWC] / wide["HbAT"]).dropna()
    m, _, lo, hi = t_interval(ratio)
    paper_ratio = t7.loc[ORIGINAL_EWC, "relative_time"] / t7.loc["HbAT", "relative_time"]
    what = "CPU seconds" if column == "cpu_seconds" else "wall seconds"
    rows.append({"claim": "the modified EWC trains faster than the original EWC", "source": "Table 7",
                 "paper": f"original / modified time {fmt(paper_ratio, 2)}",
                 "ours": f"original / modified training {what} (Fisher estimation included) over {len(ratio)} seeds: "
                         f"{fmt(math.exp(m), 2)} {fmt_interval(*_exp(lo, hi), 2)}",
                 "per_metric": "", "verdict": verdict(lo, hi)})
    paper_mem = t7.loc[ORIGINAL_EWC, "memory_gb"] / t7.loc["HbAT", "memory_gb"]
    if costs is not None and len(costs) and ORIGINAL_EWC in set(costs["method"]):
        column, measure = memory_column(costs)   # the training processes' GPU peak where measured
        mem = costs.pivot_table(index="repeat", columns="method", values=column)
        ratio = np.log(mem[ORIGINAL_EWC] / mem["HbAT"]).dropna()
        m, sd, lo, hi = t_interval(ratio)
        state = costs.groupby("method")["state_mb"].median() if "state_mb" in costs else None
        extra = (f"; the constraint's own state (anchors, coefficients, kept importances): "
                 f"{fmt(state[ORIGINAL_EWC], 2)} MB vs {fmt(state['HbAT'], 2)} MB") if state is not None else ""
        ours = (f"original / modified {measure} over {len(ratio)} fresh-process repeats: "
                f"{fmt(math.exp(m), 4)} {fmt_interval(*_exp(lo, hi), 4)}")
        v = verdict(lo, hi)
        # a peak that did not move between repeats has no interval (the same page count every time says the
        # measurement's resolution, not that the ratio is known exactly), nor do fewer repeats than an interval needs
        if len(ratio) < MIN_MEMORY_REPEATS or sd == 0 or math.isnan(sd):
            why = (f"only {len(ratio)} repeat(s); an interval needs {MIN_MEMORY_REPEATS} (efficiency_repeats)"
                   if len(ratio) < MIN_MEMORY_REPEATS else "the ratio was the same in every repeat, so the repeats "
                   "give no interval")
            ours, v = f"{ours}; not shown: {why}", "inconclusive"
        ours += extra
    else:
        ours, v = "not measured (efficiency_repeats is 0)", "inconclusive"
    rows.append({"claim": "the modified EWC needs less memory than the original EWC", "source": "Table 7",
                 "paper": f"original / modified memory {fmt(paper_mem, 2)}", "ours": ours, "per_metric": "",
                 "verdict": v})
    return rows


def figure2_claims(grid, n_splits: int, paper_fmax: float = 50.0, metrics: Sequence[str] = METRICS) -> list[dict]:
    """Figure 2: too many splits hurt (our largest N against the paper's N, ``n_splits``), and the best
    Fmax is 50 (against every other Fmax tried).  The verdict uses the paper's Figure 2 metrics (quality for
    PandaLM, and reward); the win rate is reported beside them."""
    rows = []
    n = grid[grid["axis"] == "N"]
    if len(n) and n["value"].max() > n_splits and n_splits in set(n["value"]):
        top = float(n["value"].max())
        parts, verdicts, per, k = [], [], [], 0
        for m in metrics:
            if not known(n, m):
                v = NOT_TESTABLE
                parts.append(f"{METRIC_NAMES[m]}: {unknown_text(m)}")
            else:
                mean, low, high, k = paired(n, n_splits, top, m, by="value")
                v = verdict(low, high)
                parts.append(f"{METRIC_NAMES[m]} {difference_text(mean, low, high)}")
            per.append(f"{m}: {v}")
            if m in FIGURE2_METRICS:
                verdicts.append(v)
        rows.append({"claim": "too many splits hurt", "source": "Figure 2",
                     "paper": "excessive dataset splits can hurt",
                     "ours": f"N = {n_splits:g} minus N = {top:g} over {k} seeds: " + "; ".join(parts),
                     "per_metric": ", ".join(per), "verdict": combine_testable(verdicts)})
    f = grid[grid["axis"] == "Fmax"]
    if len(f) and paper_fmax in set(f["value"]) and f["value"].nunique() > 1:
        parts, verdicts, per = [], [], []
        for m in metrics:
            if not known(f, m):
                v = NOT_TESTABLE
                parts.append(f"{METRIC_NAMES[m]}: {unknown_text(m)}")
            else:
                per_value = []
                for other in sorted(set(f["value"]) - {paper_fmax}):
                    mean, low, high, k = paired(f, paper_fmax, other, m, by="value")
                    per_value.append(verdict(low, high))
                    parts.append(f"{METRIC_NAMES[m]} vs {other:g}: {difference_text(mean, low, high)}")
                v = combine(per_value)
            per.append(f"{m}: {v}")
            if m in FIGURE2_METRICS:
                verdicts.append(v)
        rows.append({"claim": f"the best Fmax is {paper_fmax:g}", "source": "Figure 2",
                     "paper": f"the optimal Fmax is {paper_fmax:g} (dialogue)",
                     "ours": f"Fmax = {paper_fmax:g} minus each other Fmax: " + "; ".join(parts),
                     "per_metric": ", ".join(per), "verdict": combine_testable(verdicts)})
    return rows


def all_claims(runs, records: Sequence[dict] = (), costs=None, grid=None, n_splits: int | None = None) -> list[dict]:
    """Every claim row of notebook 04, in its order: Table 4's pairs, Table 7's, then Figure 2's (where ``grid``
    and ``n_splits`` are given)."""
    rows = pairwise_claims(runs, records=records) + original_ewc_claims(runs, costs)
    if grid is not None and n_splits is not None:
        rows += figure2_claims(grid, n_splits)
    return rows


def seed_claims(runs, records: Sequence[dict] = (), costs=None, grid=None, n_splits: int | None = None):
    """How far single-seed verdicts move: each claim's verdict over all seeds beside the verdict each seed alone
    gives it (that seed's runs and Figure 2 grid; its Table 4 pairs over test prompts where the records keep
    per-prompt scores, as a single-seed run reads them; Table 7's memory repeats are not per seed and stay), whether
    any seed alone reads it otherwise, and how many seeds alone resolve it.  Empty with fewer than two seeds."""
    import pandas as pd

    seeds = sorted(int(s) for s in set(runs["seed"]))
    if len(seeds) < 2:
        return pd.DataFrame()
    out = claims_table(all_claims(runs, records, costs, grid, n_splits))[["claim", "source", "verdict"]].copy()
    for seed in seeds:
        alone_grid = grid[grid["seed"] == seed] if grid is not None and "seed" in grid else grid
        rows = all_claims(runs[runs["seed"] == seed], records, costs, alone_grid, n_splits)
        said = {r["claim"]: r["verdict"] for r in rows}
        out[f"seed {seed}"] = [said.get(c, "not run") for c in out["claim"]]
    columns = [f"seed {s}" for s in seeds]
    out["moved"] = out[columns].ne(out["verdict"], axis=0).any(axis=1)
    out["seeds_resolving"] = [sum(v in ("reproduced", "reversed") for v in row) for row in out[columns].to_numpy()]
    return out


def claims_table(rows: Sequence[dict]):
    """Notebook 04's claims CSV: one row per claim, its verdict per metric beside the combined one."""
    return stats.claims_table(rows, CLAIM_COLUMNS)


def lambda_choice(lam_runs, chosen: float, paper_lam: float = 1.0, by: str = "val_win_rate") -> tuple[object, str]:
    """The lambda sweep's table (mean and t-interval over seeds per lambda, DPO beside) and a statement of
    the choice computed from it: the best lambda by mean validation win rate, those indistinguishable from
    it, where the parameters' lambda stands, and what the paper's lambda does to the preference reward."""
    sweep = lam_runs[lam_runs["axis"] == "lambda"]
    table = seed_summary(lam_runs, by=["axis", "value"], metrics=("val_win_rate", "quality", "reward", "win_rate"))
    if sweep.empty:
        return table, "No lambda sweep (lam_grid is empty)."
    means = sweep.groupby("value")[by].mean()
    best = float(means.idxmax())
    ties = []
    for value in means.index:
        mean, low, high, _ = paired(sweep, best, value, by, by="value")
        if value == best or math.isnan(low) or low <= 0:
            ties.append(float(value))
    if chosen == best:
        where = "is the best"
    elif chosen in ties:
        where = "is indistinguishable from the best"
    elif chosen in set(means.index):
        where = "is resolved below the best"
    else:
        where = "was not in the sweep"
    lines = [f"By mean validation win rate over seeds the sweep prefers lambda = {best:g} "
             f"({fmt(means[best])}); indistinguishable from it (paired t-interval over seeds contains 0): "
             f"{', '.join(f'{v:g}' for v in sorted(ties))}. The parameters use lambda = {chosen:g}, which {where}."]
    if paper_lam in set(means.index) and "DPO" in set(lam_runs["axis"]):
        labels = [("DPO" if axis == "DPO" else f"{value:g}")
                  for axis, value in zip(lam_runs["axis"], lam_runs["value"])]
        mean, low, high, k = paired(lam_runs.assign(method=labels), f"{paper_lam:g}", "DPO", "reward")
        effect = {"lower": "it holds DPO's preference learning back (the reward stays resolved below two-stage DPO's)",
                  "higher": "its reward is resolved above two-stage DPO's",
                  "indistinguishable": "its reward is indistinguishable from two-stage DPO's",
                  }.get(interval_reading(low, high), "no interval")
        lines.append(f"At the paper's lambda = {paper_lam:g}, test reward minus DPO's: "
                     f"{difference_text(mean, low, high)} over {k} seeds: {effect}.")
    return table, " ".join(lines)


def figure2_lines(grid, metrics: Sequence[str] = METRICS) -> list[str]:
    """The best N and Fmax on *every* metric, each with its mean and t-interval over seeds."""
    swept = grid[grid["axis"].isin(["N", "Fmax"])]
    if swept.empty:
        return ["- Figure 2 was not run: `n_grid` and `fmax_grid` are both empty."]
    summary = seed_summary(swept, by=["axis", "value"], metrics=metrics)
    lines = []
    for axis in ("N", "Fmax"):
        sub = summary[summary["axis"] == axis]
        if sub.empty:
            continue
        parts = []
        for m in metrics:
            if not known(sub, m):   # idxmax raises on an all-NaN column
                parts.append(f"by {METRIC_NAMES[m]}: {unknown_text(m)}")
                continue
            r = sub.loc[sub[m].idxmax()]
            interval = fmt_interval(r[m + "_low"], r[m + "_high"])
            parts.append(f"by {METRIC_NAMES[m]} {r['value']:g} ({fmt(r[m])} {interval})")
        lines.append(f"- {axis}: best " + ", ".join(parts)
                     + f" (values tried: {', '.join(f'{v:g}' for v in sorted(sub['value']))}).")
    return lines


def figure2_statement(grid) -> str:
    """Best N and Fmax on every score, each with its mean and t-interval over seeds (the paper's claims
    about N and Fmax get their verdicts in :func:`mfnb.hbat.claims.figure2_claims`)."""
    return "\n".join(figure2_lines(grid))
