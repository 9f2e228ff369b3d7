"""Notebook 02's tables: the traces in the shape of the paper's Tables 2-3 (beside the paper's), every
decision checked against the Hoeffding radius, Table 4 and its computed verdict, the experts' gaps beside the
paper's Table 1, per-iteration details and where the time went.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from mfnb import stats
from mfnb.multifidelity.trace import TraceResult


def trace_rows(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Tables 2-3 in long form: every look of the multi-fidelity run, then vanilla(m)'s best model
    (its validation WinFreq against g^(m)) under fidelity m.  Radii: Lemma 1 at ``delta``."""
    rows = []
    for tr in traces:
        h = tr.mf.history
        for m, fid in enumerate(tr.config.fidelities, 1):
            for _, r in h[h["fidelity"] == m].iterrows():
                rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "fidelity": m,
                             "role": fid.role, "cost": fid.cost, "candidate": r["candidate"], "kind": r["kind"],
                             "t": r["t"], "n": r["n"], "failed": r["failed"], "win_rate": r["win_freq"],
                             "radius": r["radius"], "low": r["low"], "high": r["high"], "Lambda": r["Lambda"],
                             "action": r["action"], "reason": r["reason"]})
            van = tr.vanilla.get(m)
            if van is not None and van.best is not None:
                b = van.history[van.history["t"] == van.best["t"]].iloc[-1]
                rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "fidelity": m,
                             "role": fid.role, "cost": fid.cost, "candidate": f"vanilla(m={m})", "kind": "vanilla",
                             "t": b["t"], "n": b["n"], "failed": b["failed"], "win_rate": b["win_freq"],
                             "radius": b["radius"], "low": b["low"], "high": b["high"],
                             "Lambda": van.expert_cost(), "action": "", "reason": f"best of {van.history['kind'].eq('train').sum()} "
                             f"iterations ({b['candidate']})"})
    return pd.DataFrame(rows)


def paper_layout(rows: pd.DataFrame, batch_size: int, value: str = "win_rate", radius: str | None = "radius",
                 names: dict[int, str] | None = None) -> pd.DataFrame:
    """Tables 2-3's shape: one block of rows per fidelity, one (candidate, WinRate) column pair per
    trace, shorter traces padded with '-'."""
    sub = rows[rows["batch_size"] == batch_size]
    traces = list(dict.fromkeys(sub["trace"]))
    title = {k: f"trace {k}" if isinstance(k, (int, np.integer)) else str(k) for k in traces}
    blocks = []
    for m in sorted(sub["fidelity"].unique()):
        per = {k: sub[(sub["trace"] == k) & (sub["fidelity"] == m)].reset_index(drop=True) for k in traces}
        height = max(len(p) for p in per.values())
        role = sub.loc[sub["fidelity"] == m, "role"].iloc[0]
        label = (names or {}).get(m, f"g^({m}): {role}")
        for i in range(height):
            line = {("", "fidelity"): label}
            for k in traces:
                p = per[k]
                if i < len(p):
                    text = f"{p.loc[i, value]:.3f}"
                    if radius and radius in p and pd.notna(p.loc[i, radius]):
                        text += f" ± {p.loc[i, radius]:.3f}"
                    line[(title[k], "candidate")] = p.loc[i, "candidate"]
                    line[(title[k], "WinRate")] = text
                else:
                    line[(title[k], "candidate")] = "-"
                    line[(title[k], "WinRate")] = "-"
            blocks.append(line)
    out = pd.DataFrame(blocks)
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


PAPER_FIDELITIES = {1: "Llama", 2: "Mistral", 3: "Qwen"}


def paper_reference_rows(batch_size: int) -> pd.DataFrame:
    """The paper's Table 2 (B=1024) or 3 (B=512) from mfnb.reference, in ``trace_rows``' long form."""
    from mfnb import reference

    ref = reference.load("mf_traces")
    ref = ref[ref["batch_size"] == batch_size].copy()
    ref["fidelity"] = ref["fidelity"].map({v: k for k, v in PAPER_FIDELITIES.items()})
    ref["role"] = ref["fidelity"].map(PAPER_FIDELITIES)
    ref["radius"] = math.nan  # the paper reports none
    return ref


def paper_layout_with_reference(rows: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Our traces and the paper's (labelled "paper trace k (reference)") side by side, fidelity blocks
    aligned; the paper's rows have no radius because it reports none."""
    ours = rows[rows["batch_size"] == batch_size].assign(trace=lambda f: "ours trace " + f["trace"].astype(str))
    ref = paper_reference_rows(batch_size)
    ref = ref.assign(trace="paper trace " + ref["trace"].astype(str) + " (reference)")
    roles = ours.groupby("fidelity")["role"].first().to_dict()
    names = {m: f"g^({m}): {roles.get(m, '?')} | paper: {PAPER_FIDELITIES.get(m, '-')}" for m in
             sorted(set(ours["fidelity"]) | set(ref["fidelity"]))}
    cols = ["batch_size", "trace", "fidelity", "role", "candidate", "win_rate", "radius"]
    return paper_layout(pd.concat([ours[cols], ref[cols]], ignore_index=True), batch_size, names=names)


def decision_table(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Every look of every multi-fidelity run and the decision it led to, with whether the validation
    set supports it: |WinFreq - gamma| > Lemma 1 radius for threshold decisions, |WinFreq - previous|
    > the paired-difference radius (paper constant) for declines.  Caps and convergence are not
    statistical decisions (supported = NA)."""
    rows = []
    for tr in traces:
        c = tr.config
        for _, r in tr.mf.history.iterrows():
            n = int(r["n"])
            rad = float(stats.hoeffding_radius(n, c.delta))
            drad = float(stats.difference_radius(n, c.delta, tight=False))
            gamma_ok = abs(r["win_freq"] - c.gamma) > rad
            prev = r["prev"]
            has_prev = prev is not None and not (isinstance(prev, float) and math.isnan(prev))
            decline_ok = abs(r["win_freq"] - prev) > drad if has_prev else None
            reason = r["reason"]
            if reason == "reached gamma" or (reason == "below gamma" and not r["final_fidelity"]):
                test, supported, against, radius = "WinFreq vs gamma", gamma_ok, c.gamma, rad
            elif reason == "declined":
                test, supported, against, radius = "WinFreq vs previous look", decline_ok, prev, drad
            elif reason == "below gamma":  # continue at the last fidelity: below gamma and no decline
                both = gamma_ok and (decline_ok if has_prev else True)
                test, supported, against, radius = ("below gamma and no decline" if has_prev else "WinFreq vs gamma",
                                                    both, prev if has_prev else c.gamma, drad if has_prev else rad)
            else:
                test, supported, against, radius = "not statistical (" + reason + ")", pd.NA, math.nan, math.nan
            flag = ("" if supported is pd.NA else "supported" if supported else
                    "NOT statistically supported (within the radius)")
            rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "fidelity": r["fidelity"],
                         "role": r["role"], "candidate": r["candidate"], "win_rate": r["win_freq"], "n": n,
                         "action": r["action"], "reason": reason, "test": test, "compared_to": against,
                         "radius_used": radius, "supported": supported, "flag": flag})
    return pd.DataFrame(rows)


def table4(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Table 4: test WinFreq of the multi-fidelity model against vanilla(m), with Lemma 1 intervals,
    and the paper's number for the same cell beside it (labelled as the paper's)."""
    from mfnb import reference

    frames = [tr.test for tr in traces if len(tr.test)]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    ref = reference.load("mf_table4")
    ref_map = {(str(r.sample_size), r.baseline): r.win_rate for r in ref.itertuples()}
    out["paper_sample_size"] = [f"{b}" if k == 1 else f"{b}-{k}" for b, k in zip(out["batch_size"], out["trace"])]
    out["paper_win_rate (reference)"] = [ref_map.get((s, b), math.nan)
                                         for s, b in zip(out["paper_sample_size"], out["baseline"])]
    cols = ["label", "batch_size", "trace", "baseline", "candidate", "baseline_candidate", "candidate_Lambda",
            "baseline_Lambda", "n", "failed", "wins", "ties", "losses", "win_rate", "radius", "low", "high", "verdict",
            "candidate_vs_top", "baseline_vs_top", "paper_win_rate (reference)"]
    return out[cols]


def beat_statement(t4: pd.DataFrame) -> str:
    """A sentence computed from Table 4: did the multi-fidelity model beat vanilla at equal budget?"""
    if t4 is None or not len(t4):
        return "No test comparison was run (no vanilla baseline had a budget)."
    n = len(t4)
    higher = int((t4["win_rate"] > 0.5).sum())
    mf_sig = int((t4["verdict"] == "multi-fidelity better").sum())
    van_sig = int((t4["verdict"] == "vanilla better").sum())
    parts = [f"In {higher} of {n} comparisons the multi-fidelity model's test WinFreq against vanilla at equal "
             f"budget was above 0.5 (mean {t4['win_rate'].mean():.3f})."]
    parts.append(f"The Lemma 1 interval (delta as configured) excludes 0.5 in favour of multi-fidelity in {mf_sig} "
                 f"of {n}, in favour of vanilla in {van_sig} of {n}, and is unresolved in {n - mf_sig - van_sig}.")
    for base, sub in t4.groupby("baseline"):
        parts.append(f"Against {base}: WinFreq " + ", ".join(f"{w:.3f} ± {r:.3f} ({lab})" for w, r, lab in
                                                               zip(sub["win_rate"], sub["radius"], sub["label"])) + ".")
    if mf_sig == n:
        verdict = "Multi-fidelity beat vanilla at equal budget in every comparison, each supported by its interval."
    elif mf_sig > 0 and van_sig == 0:
        verdict = "Multi-fidelity beat vanilla where the data resolve it; no comparison significantly favours vanilla."
    elif van_sig > 0 and mf_sig == 0:
        verdict = "Vanilla was better where the data resolve it: our runs do not reproduce the paper's claim."
    elif mf_sig == 0 and van_sig == 0:
        verdict = "No comparison is resolved at this test-set size: our runs neither confirm nor refute the claim."
    else:
        verdict = "Mixed: some comparisons significantly favour multi-fidelity, others vanilla."
    return " ".join(parts + [verdict])


def iterations_table(traces: Sequence[TraceResult]) -> pd.DataFrame:
    frames = []
    for tr in traces:
        for run in [tr.mf, *tr.vanilla.values()]:
            if len(run.iterations):
                frames.append(run.iterations.assign(label=tr.label, batch_size=tr.batch_size, trace=tr.trace))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def time_shares(timings: dict[str, float]) -> pd.DataFrame:
    """Seconds and share of the total per activity (generation, judging, dpo, evaluation, ...)."""
    total = sum(timings.values()) or 1.0
    frame = pd.DataFrame({"activity": list(timings), "seconds": list(timings.values())})
    frame["share"] = frame["seconds"] / total
    return frame.sort_values("seconds", ascending=False).reset_index(drop=True)


def fidelity_gaps(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Measured WinRate between consecutive models of the ladder (mean over traces) beside the paper's
    Table 1 (Vicuna -> Llama -> Mistral -> Qwen), labelled as the paper's."""
    from mfnb import reference

    frames = [tr.expert_pairs.assign(label=tr.label) for tr in traces]
    pairs = pd.concat(frames, ignore_index=True)
    consecutive = pairs[pairs["m"] - pairs["m_prime"] == 1]
    out = consecutive.groupby(["m", "better", "worse"], as_index=False).agg(
        win_rate_mean=("win_rate", "mean"), win_rate_min=("win_rate", "min"), win_rate_max=("win_rate", "max"),
        n=("n", "first"), traces=("label", "nunique"))
    ref = reference.load("mf_table1")
    names = [f"{b} > {a}" for a, b in zip(ref["baseline"], ref["candidate"])]
    pad = max(0, len(out) - len(ref))
    out["paper_pair (reference)"] = (names + [""] * pad)[: len(out)]
    out["paper_win_rate (reference)"] = (list(ref["win_rate"]) + [math.nan] * pad)[: len(out)]
    return out
