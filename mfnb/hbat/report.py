"""Notebook 04's tables and verdicts: means and t-intervals over seeds, Table 4 beside the paper's, the
paper's pairwise orderings tested on our runs, the alignment-tax check, Figure 2's read-out, the
importances under both EWC variants, and the departures from the paper's setting.
"""
from __future__ import annotations

import math
from typing import Sequence

from mfnb import stats
from mfnb.core import reference
from mfnb.core.formatting import fmt, fmt_interval
from mfnb.hbat.config import EWCParams, HbatParams
from mfnb.hbat.importance import importance_from_changes


def t_interval(values, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of a Student-t interval over seeds (NaN interval for one seed)."""
    import numpy as np
    from scipy import stats as st

    x = np.asarray(list(values), dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return mean, sd, mean - half, mean + half


_t_interval = t_interval


METRICS = ("quality", "reward", "win_rate")
NOT_TESTABLE = stats.NOT_TESTABLE   # the verdict where a score was never measured (a judge-only world's quality)
# our score -> the paper's Table 4 column it stands in for
PAPER_COLUMNS = {"quality": "pandalm", "reward": "reward", "win_rate": "gpt4_win"}
PAPER_NAMES = {"w/o alternating": "w/o Alternating Alignment"}


def known(frame, metric: str) -> bool:
    """Whether ``metric`` was measured at all: a world with no known quality (the paper world's judges are
    LLMs and reward models) leaves the quality column all NaN (or None)."""
    import pandas as pd

    return metric in frame and bool(pd.to_numeric(frame[metric], errors="coerce").notna().any())


def unknown_text(metric: str) -> str:
    return "no known quality" if metric == "quality" else f"{metric} not measured"


def _numeric(frame, metrics: Sequence[str]):
    """``frame`` with each metric as floats (None -> NaN; a missing column -> all NaN)."""
    import pandas as pd

    return frame.assign(**{m: pd.to_numeric(frame[m], errors="coerce") if m in frame else math.nan for m in metrics})


def seed_summary(runs, by: Sequence[str], metrics: Sequence[str] = METRICS + ("train_seconds",)):
    """Mean, sd and 95% t-interval over seeds of each metric, per group (NaN for a metric never measured)."""
    import pandas as pd

    out = []
    for key, group in _numeric(runs, metrics).groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key), seeds=len(group))
        for m in metrics:
            row[m], row[f"{m}_sd"], row[f"{m}_low"], row[f"{m}_high"] = _t_interval(group[m])
        out.append(row)
    return pd.DataFrame(out)


def best_methods(summary, metrics: Sequence[str] = METRICS, by: str = "method") -> dict[str, str]:
    """The best ``by`` (highest mean) per metric; ``unknown_text`` for a metric with no value at all
    (``idxmax`` raises on an all-NaN column)."""
    summary = _numeric(summary, metrics)
    return {m: str(summary.loc[summary[m].idxmax(), by]) if known(summary, m) else unknown_text(m) for m in metrics}


def paired_difference(runs, metric: str, a: str, b: str, by: str = "method", key: str = "seed"):
    """Per ``key`` (seed): ``a``'s minus ``b``'s ``metric``, where both have one (empty when either never does)."""
    import pandas as pd

    wide = _numeric(runs, [metric]).pivot_table(index=key, columns=by, values=metric)
    if a not in wide or b not in wide:
        return pd.Series(dtype=float)
    return (wide[a] - wide[b]).dropna()


def paper_table4():
    """The paper's Table 4 (dialogue validation, LLaMA2-7B, DPO), with HbAT-Freeze from Table 1 (test set) and
    the original EWC's win rate from Table 7 (its other scores are not reported)."""
    import pandas as pd

    t4 = reference.load("hbat_table4").assign(source="Table 4 (validation)")
    t1 = reference.load("hbat_table1")
    freeze = t1[(t1.base == "LLaMA2-7B") & (t1.hpa == "DPO") & (t1.method == "HbAT-Freeze")]
    freeze = pd.DataFrame({"method": ["HbAT-Freeze"], "pandalm": freeze.dial_pandalm.to_list(),
                           "reward": freeze.dial_reward.to_list(), "gpt4_win": freeze.dial_gpt4_win.to_list(),
                           "source": ["Table 1 (test)"]})
    t7 = reference.load("hbat_table7")
    original = t7[t7.method == "HbAT w/ original EWC"]
    original = pd.DataFrame({"method": original.method.to_list(), "pandalm": [math.nan], "reward": [math.nan],
                             "gpt4_win": original.gpt4_win.to_list(), "source": ["Table 7"]})
    return pd.concat([t4, freeze, original], ignore_index=True)


def table4_with_paper(summary):
    """Our means and intervals with the paper's numbers beside them (labelled ``paper_*``)."""
    paper = paper_table4()
    paper = paper.assign(method=paper["method"].map({v: k for k, v in PAPER_NAMES.items()}).fillna(paper["method"]))
    paper = paper.rename(columns={c: f"paper_{c}" for c in ("pandalm", "reward", "gpt4_win", "source")})
    cols = ["method", "seeds"] + [c for m in METRICS for c in (m, f"{m}_low", f"{m}_high")] + ["train_seconds"]
    return summary[cols].merge(paper, on="method", how="left")


def _paper_claims():
    """(method a, method b, paper column, a's value, b's value, source) for every paper ordering we test:
    all pairs of Table 4, and HbAT-Freeze against HbAT and DPO within Table 1 (LLaMA2-7B, DPO, dialogue)."""
    import itertools

    claims = []
    t4 = reference.load("hbat_table4")
    t4["method"] = t4["method"].map({v: k for k, v in PAPER_NAMES.items()}).fillna(t4["method"])
    t4 = t4.set_index("method")
    for a, b in itertools.combinations(t4.index, 2):
        for col in PAPER_COLUMNS.values():
            claims.append((a, b, col, t4.loc[a, col], t4.loc[b, col], "Table 4"))
    t1 = reference.load("hbat_table1")
    t1 = t1[(t1.base == "LLaMA2-7B") & ((t1.hpa == "DPO") | (t1.method == "SFT"))].set_index("method")
    for other in ("HbAT", "DPO"):
        for col in PAPER_COLUMNS.values():
            claims.append(("HbAT-Freeze", other, col, t1.loc["HbAT-Freeze", f"dial_{col}"],
                           t1.loc[other, f"dial_{col}"], "Table 1"))
    return claims


def orderings(runs, metrics: Sequence[str] = METRICS, records: Sequence[dict] = ()):
    """Every pairwise ordering of the paper's Table 4 (and HbAT-Freeze vs HbAT / DPO within Table 1), with
    ours beside it: ``reproduced`` when our mean difference has the paper's sign, ``resolved`` when the
    95% t-interval of the per-seed (paired) difference excludes zero. With a single seed the difference is
    paired over test prompts where ``records`` keep per-prompt scores (:func:`prompt_paired`), exactly as the
    claims table does (:func:`mfnb.hbat.claims.pairwise_claims`), so the two agree by construction."""
    import pandas as pd

    present = set(runs["method"])
    column_metric = {v: k for k, v in PAPER_COLUMNS.items()}
    rows = []
    for a, b, col, pa, pb, source in _paper_claims():
        m = column_metric[col]
        if m not in metrics or a not in present or b not in present or pa == pb:
            continue
        better, worse = (a, b) if pa > pb else (b, a)
        if not known(runs, m):   # e.g. no known quality: the ordering cannot be tested
            rows.append({"metric": m, "paper_metric": col, "source": source, "paper_says": f"{better} > {worse}",
                         "paper_gap": abs(pa - pb), "our_gap": math.nan, "our_low": math.nan, "our_high": math.nan,
                         "seeds": 0, "paired_over": "", "ours": unknown_text(m), "reproduced": False,
                         "resolved": False, "verdict": NOT_TESTABLE})
            continue
        diff = paired_difference(runs, m, better, worse)
        mean, _, low, high = _t_interval(diff)
        over = f"{len(diff)} seeds"
        by_prompt = prompt_paired(runs, records, better, worse, m) if len(diff) < 2 else None
        if by_prompt is not None:
            mean, _, low, high, prompts = by_prompt
            over = f"{prompts} test prompts (one seed)"
        rows.append({"metric": m, "paper_metric": col, "source": source, "paper_says": f"{better} > {worse}",
                     "paper_gap": abs(pa - pb), "our_gap": mean, "our_low": low, "our_high": high,
                     "seeds": len(diff), "paired_over": over,
                     "ours": "same order" if mean > 0 else "tie" if mean == 0 else "opposite",
                     "reproduced": bool(mean > 0),
                     "resolved": bool(low > 0 or high < 0) if not math.isnan(low) else False,
                     "verdict": "inconclusive" if math.isnan(low) or low <= 0 <= high
                                else "reproduced" if low > 0 else "reversed"})
    return pd.DataFrame(rows).sort_values(["metric", "source"], kind="stable", ignore_index=True)


def ordering_statement(table, level: float = 0.95) -> str:
    """A plain-text verdict computed from :func:`orderings`: every ordering is reproduced, reversed or
    inconclusive by the t-interval of its paired difference over seeds (over test prompts with one seed)."""
    lines = []
    n, k = len(table), int(table["reproduced"].sum())
    counts = table["verdict"].value_counts()
    ties = int((table["ours"] == "tie").sum())
    untestable = int(counts.get(NOT_TESTABLE, 0))
    lines.append(f"Of the paper's {n} pairwise orderings (over {table['metric'].nunique()} scores), our mean differences "
                 f"point the paper's way in {k}{f' ({ties} exact ties)' if ties else ''}; by the {level:.0%} t-interval "
                 f"of the paired difference over {_over(table)}, {int(counts.get('reproduced', 0))} are reproduced, "
                 f"{int(counts.get('reversed', 0))} reversed and {int(counts.get('inconclusive', 0))} inconclusive"
                 + (f"; {untestable} are not testable ("
                    + ", ".join(sorted({o for o in table.loc[table["verdict"] == NOT_TESTABLE, "ours"]})) + ")"
                    if untestable else "") + ".")
    for metric, group in table.groupby("metric", sort=False):
        if (group["verdict"] == NOT_TESTABLE).all():
            lines.append(f"- {metric} (paper: {group.paper_metric.iloc[0]}): {NOT_TESTABLE}, {group.ours.iloc[0]} "
                         "in this world.")
            continue
        parts = [f"{v}: " + (", ".join(group[group["verdict"] == v].paper_says) or "none")
                 for v in ("reproduced", "reversed", "inconclusive")]
        lines.append(f"- {metric} (paper: {group.paper_metric.iloc[0]}): " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _over(table) -> str:
    """What the orderings' intervals are over, in words: seeds, or test prompts where there was one seed."""
    if "paired_over" in table and table["paired_over"].astype(str).str.contains("test prompts").any():
        return "test prompts (one seed: seed noise is not in the interval)"
    return "seeds"


def departures(params):
    """Each training setting: the paper's value (HbatParams defaults, App. A) beside ours."""
    import pandas as pd

    paper, ours = HbatParams().model_dump(), params.hbat.model_dump()

    def get(d, path):
        for part in path.split("."):
            d = d[part]
        return d

    rows = []
    for path in ("n_splits", "sft.lr", "sft.batch_size", "sft.epochs", "dpo.lr", "dpo.batch_size", "dpo.epochs",
                 "dpo.beta", "ewc.lam", "ewc.fmax", "ewc.reduce", "ewc.change_scale", "ewc.lam_placement",
                 "ewc.accumulate", "ewc.freeze_fraction", "ewc.fisher_scale", "select_by"):
        p, o = get(paper, path), get(ours, path)
        ratio = o / p if isinstance(p, (int, float)) and isinstance(o, (int, float)) and not isinstance(p, bool) \
            and p and o != p else None
        rows.append({"setting": path, "paper": p, "ours": o, "ours / paper": ratio})
    rows.append({"setting": "sampling (temperature, top_p)", "paper": (0.75, 0.95),
                 "ours": (params.sampling.temperature, params.sampling.top_p)})
    rows.append({"setting": "fine-tuning", "paper": "full", "ours": "full" if params.lora is None else "LoRA"})
    frame = pd.DataFrame(rows)
    frame["differs"] = [str(a) != str(b) for a, b in zip(frame["paper"], frame["ours"])]
    frame["ours / paper"] = [fmt(r, 2) if r is not None and r == r else "" for r in frame["ours / paper"]]
    return frame.astype({"paper": str, "ours": str})


def prompt_paired(runs, records: Sequence[dict], a: str, b: str, metric: str) -> tuple | None:
    """With a single seed: (mean, sd, low, high, prompts) of method ``a`` minus ``b`` paired over test prompts,
    from the records' per-prompt test scores (matched to ``runs`` by key). None where there is more than one
    seed (the interval over seeds applies) or a record lacks the scores (runs recorded before they were kept)."""
    if not len(records) or "key" not in runs or runs["seed"].nunique() != 1:
        return None
    scores = {r.get("key"): r.get("per_prompt") or {} for r in records}
    lists = []
    for method in (a, b):
        rows = runs[runs["method"] == method]
        if len(rows) != 1:
            return None
        lists.append(scores.get(rows["key"].iloc[0], {}).get(metric))
    xa, xb = lists
    if xa is None or xb is None or len(xa) == 0 or len(xa) != len(xb):
        return None
    diff = [p - q for p, q in zip(xa, xb)                 # failed judgements (None or NaN) drop out
            if p is not None and q is not None and not (math.isnan(p) or math.isnan(q))]
    return (*_t_interval(diff), len(diff))


def conflict_check(runs, records: Sequence[dict] = ()) -> tuple[dict, str]:
    """Does two-stage SFT -> DPO lose instruction quality relative to SFT? Paired over seeds; with a single
    seed, paired over test prompts instead (:func:`prompt_paired`), where the records hold per-prompt scores."""
    by_prompt = {m: prompt_paired(runs, records, "DPO", "SFT", m) for m in ("quality", "reward")}
    over_prompts = all(v is not None for v in by_prompt.values())
    out = {}
    for metric in ("quality", "reward"):
        if over_prompts:
            mean, sd, low, high, n = by_prompt[metric]
            out[metric] = dict(mean=mean, sd=sd, low=low, high=high, seeds=1, prompts=n)
        else:
            diff = paired_difference(runs, metric, "DPO", "SFT")
            out[metric] = dict(zip(("mean", "sd", "low", "high"), _t_interval(diff)), seeds=len(diff))
    q, r = out["quality"], out["reward"]
    if not known(runs, "quality"):
        q["verdict"] = NOT_TESTABLE
        over = (f"over {r['prompts']} test prompts, paired; one seed, so seed noise is not in it" if over_prompts
                else f"over {r['seeds']} seeds")
        return out, (f"This world has {unknown_text('quality')} (its judges are LLMs or reward models), so the "
                     f"alignment tax, a loss of instruction-following quality from SFT -> DPO, is {NOT_TESTABLE} "
                     f"here; two-stage SFT -> DPO changes the preference reward by {fmt(r['mean'], signed=True)} "
                     f"{fmt_interval(r['low'], r['high'])} ({over}) relative to SFT alone.")
    exists = q["mean"] < 0 and r["mean"] > 0
    firm = exists and not math.isnan(q["high"]) and q["high"] < 0
    over = (f"over {q['prompts']} test prompts, paired; one seed, so seed noise is not in it" if over_prompts
            else f"over {q['seeds']} seeds")
    noise = "the test prompts' noise" if over_prompts else "seed noise"
    text = (f"Two-stage SFT -> DPO changes instruction-following quality by {fmt(q['mean'], signed=True)} "
            f"(95% t-interval {fmt_interval(q['low'], q['high'])} {over}) and the preference "
            f"reward by {fmt(r['mean'], signed=True)} {fmt_interval(r['low'], r['high'])} relative to SFT alone: "
            + ((f"the alignment tax is there and resolved beyond {noise}." if firm else
                ("quality falls on average, but there is no interval" if math.isnan(q["high"]) else
                 "quality falls on average, but its interval includes zero")
                + f": no tax is shown, not resolved beyond {noise}.")
               if exists else "no alignment tax in this setting (DPO does not lose quality while gaining reward)."))
    return out, text


def importance_table(record: dict, ewc, stage: int = 0):
    """F per tensor from one stored stage's changes, under our settings and the released-code variant."""
    import pandas as pd

    sums = next(c["sums"] for c in record["change_sums"] if c["stage"] == stage)
    released = EWCParams.released_code(fmax=ewc.fmax, lam=ewc.lam)
    frame = pd.DataFrame({"tensor": list(sums), "C_mean": [s / n for s, n in sums.values()],
                          "C_sum": [s for s, _ in sums.values()], "numel": [n for _, n in sums.values()]})
    for label, variant in (("F_ours", ewc), ("F_released_code", released)):
        changes = dict(zip(frame["tensor"], frame["C_mean"] if variant.reduce == "mean" else frame["C_sum"]))
        imp = importance_from_changes(changes, variant.fmax, variant.change_scale)
        frame[label] = frame["tensor"].map(imp)
    return frame.sort_values("C_mean", ascending=False, ignore_index=True)


def effective_tensors(weights) -> float:
    """exp(entropy) of the normalised importances: how many tensors the penalty effectively covers."""
    import numpy as np

    p = np.asarray(list(weights), dtype=float)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def fisher_summary(record: dict, ewc) -> dict:
    """For an original-EWC run: the raw Fisher's mean per element (the first penalised stage's, weighted by
    tensor size), the modified EWC's mean weight per element at a uniform softmax (fmax / #tensors), and
    the factor ``fisher_scale: fmax`` multiplies the Fisher by."""
    used = next((i["F"] for i in record.get("importance", []) if i["F"]), None)
    sums = record["change_sums"][0]["sums"]
    if not used:
        return {}
    numel = {k: n for k, (_, n) in sums.items()}
    raw = sum(used[k] * numel[k] for k in used) / sum(numel[k] for k in used)
    modified = ewc.fmax / len(numel)
    return {"raw_fisher_mean": raw, "modified_mean_weight": modified, "scale_factor": modified / raw if raw else math.nan}
