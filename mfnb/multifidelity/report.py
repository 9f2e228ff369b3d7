"""Notebook 02's tables about the runs themselves: the traces in the shape of the paper's Tables 2-3 (beside
the paper's, in the metric it reports), every decision under both tie conventions and checked against the
radius and an exact interval, the experts' gaps beside the paper's Table 1, per-iteration details, where the
time went, and the departures from the paper's setting read from the parameters used.  Table 4, the verdicts
and the spend ratio are in :mod:`~mfnb.multifidelity.verdicts`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from mfnb import stats
from mfnb.core import reference
from mfnb.core.formatting import fmt
from mfnb.multifidelity.algorithm import decide, passes_gamma
from mfnb.multifidelity.trace import TraceResult, validation_cost

OTHER = {"half": "wins_over_total", "wins_over_total": "half"}


def trace_rows(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Tables 2-3 in long form: every look of the multi-fidelity run, then vanilla(m)'s best model
    (its validation look against g^(m)) under fidelity m.  Both conventions (``win_rate`` is WinFreq with
    ties 1/2, ``wins_over_total`` the paper's reported metric) and the one that decided (``value``);
    radius: Lemma 1 at ``delta``."""
    rows = []
    keep = ["t", "n", "failed", "wins", "ties", "losses", "win_freq", "wins_over_total", "value", "radius"]
    for tr in traces:
        h = tr.mf.history
        base = {"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "seed": tr.seed,
                "convention": tr.config.tie_convention}
        for m, fid in enumerate(tr.config.fidelities, 1):
            for _, r in h[h["fidelity"] == m].iterrows():
                rows.append({**base, "fidelity": m, "role": fid.role, "cost": fid.cost, "candidate": r["candidate"],
                             "kind": r["kind"], **{k: r[k] for k in keep}, "Lambda": r["Lambda"],
                             "action": r["action"], "reason": r["reason"]})
            van = tr.vanilla.get(m)
            if van is not None and van.best is not None:
                b = van.history[van.history["t"] == van.best["t"]].iloc[-1]
                iters = int(van.history["kind"].eq("train").sum())
                rows.append({**base, "fidelity": m, "role": fid.role, "cost": fid.cost,
                             "candidate": f"vanilla(m={m})", "kind": "vanilla", **{k: b[k] for k in keep},
                             "Lambda": van.expert_cost(), "action": "",
                             "reason": f"best of {iters} iteration{'s' if iters != 1 else ''} ({b['candidate']})"})
    out = pd.DataFrame(rows)
    if len(out):
        out = out.rename(columns={"win_freq": "win_rate"})
        out["low"] = (out["value"] - out["radius"]).clip(0, 1)
        out["high"] = (out["value"] + out["radius"]).clip(0, 1)
    return out


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
                    text = fmt(p.loc[i, value])
                    if radius and radius in p and pd.notna(p.loc[i, radius]):
                        text += f" ± {fmt(p.loc[i, radius])}"
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
    """The paper's Table 2 (B=1024) or 3 (B=512) from mfnb.core.reference, in ``trace_rows``' long form (its
    numbers are wins / total, Section 5)."""

    ref = reference.load("mf_traces")
    ref = ref[ref["batch_size"] == batch_size].copy()
    ref["fidelity"] = ref["fidelity"].map({v: k for k, v in PAPER_FIDELITIES.items()})
    ref["role"] = ref["fidelity"].map(PAPER_FIDELITIES)
    ref["wins_over_total"] = ref["win_rate"]
    ref["radius"] = math.nan  # the paper reports none
    return ref


def paper_layout_with_reference(rows: pd.DataFrame, batch_size: int, traces: Sequence[int] = (1, 2)) -> pd.DataFrame:
    """Our traces ``traces`` (default the first two, as the paper's two) and the paper's side by side, fidelity
    blocks aligned, all in wins / total: the metric the paper's numbers were computed with.  The paper's rows
    have no radius because it reports none."""
    ours = rows[(rows["batch_size"] == batch_size) & rows["trace"].isin(list(traces))]
    ours = ours.assign(trace=lambda f: "ours trace " + f["trace"].astype(str))
    ref = paper_reference_rows(batch_size)
    ref = ref.assign(trace="paper trace " + ref["trace"].astype(str) + " (reference)")
    roles = ours.groupby("fidelity")["role"].first().to_dict()
    names = {m: f"g^({m}): {roles.get(m, '?')} | paper: {PAPER_FIDELITIES.get(m, '-')}" for m in
             sorted(set(ours["fidelity"]) | set(ref["fidelity"]))}
    cols = ["batch_size", "trace", "fidelity", "role", "candidate", "wins_over_total", "radius"]
    return paper_layout(pd.concat([ours[cols], ref[cols]], ignore_index=True), batch_size, value="wins_over_total",
                        names=names)


def _exact_interval(r, convention: str, delta: float) -> tuple[float, float]:
    return stats.convention_interval(r["wins"], r["ties"], r["losses"], convention, delta)


def decision_table(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Every look of every multi-fidelity run and the decision it led to, under the convention that decided
    and (``other_action``) what the same rule would have said under the other convention at that look.

    Support: a threshold decision is supported when gamma lies outside the look's exact interval in the
    deciding convention (Clopper-Pearson for wins / total, exact-with-ties for WinFreq); ``supported_lemma1``
    asks |value - gamma| > Lemma 1's radius, the paper's own bound.  A stop on a decline is supported when the
    drop exceeds the radius of a paired difference on the same prompts (paper constant).  Caps and
    convergence are not statistical decisions (supported = NA)."""
    rows = []
    for tr in traces:
        c = tr.config
        other = OTHER[c.tie_convention]
        prev_other: dict[int, float] = {}
        iters: dict[int, int] = {}
        for _, r in tr.mf.history.iterrows():
            m, n = int(r["fidelity"]), int(r["n"])
            value = float(r["value"])
            rad = float(stats.hoeffding_radius(n, c.delta))
            drad = float(stats.difference_radius(n, c.delta, tight=False))
            low, high = _exact_interval(r, c.tie_convention, c.delta)
            gamma_exact = bool(low > c.gamma or high < c.gamma)
            gamma_lemma = abs(value - c.gamma) > rad
            prev = r["prev"]
            has_prev = prev is not None and not (isinstance(prev, float) and math.isnan(prev))
            decline_ok = abs(value - prev) > drad if has_prev else None
            reason = r["reason"]
            final = bool(r["final_fidelity"])
            if reason == "passed gamma" or (reason == "below gamma" and not final):
                test, supported, lemma, against, radius = "value vs gamma", gamma_exact, gamma_lemma, c.gamma, rad
            elif reason == "declined":
                test, supported, lemma, against, radius = "value vs previous look", decline_ok, decline_ok, prev, drad
            elif reason == "below gamma":  # continue at the last fidelity: below gamma and no decline
                if has_prev:
                    test, against, radius = "below gamma and no decline", prev, drad
                    supported, lemma = gamma_exact and decline_ok, gamma_lemma and decline_ok
                else:
                    test, supported, lemma, against, radius = "value vs gamma", gamma_exact, gamma_lemma, c.gamma, rad
            else:
                test, supported, lemma, against, radius = "not statistical (" + reason + ")", pd.NA, pd.NA, math.nan, \
                    math.nan
            # the same look under the other convention (the rule as written; caps and epsilon as they were)
            other_value = float(stats.win_rate_from_counts(r["wins"], r["ties"], r["losses"], other))
            delta_norm = r["delta_norm"] if r["kind"] == "train" else None
            if delta_norm is not None and isinstance(delta_norm, float) and math.isnan(delta_norm):
                delta_norm = None
            if r["kind"] == "train":  # the runner counts the iteration before its look
                iters[m] = iters.get(m, 0) + 1
            other_action, other_reason = decide(other_value, prev=prev_other.get(m), final=final, gamma=c.gamma,
                                                delta_norm=delta_norm, epsilon=c.epsilon,
                                                iters_here=iters.get(m, 0), cap_here=c.max_iters_per_fidelity,
                                                gamma_rule=c.gamma_rule)
            prev_other[m] = other_value
            flag = ("" if supported is pd.NA else "supported" if supported else
                    "NOT statistically supported (gamma inside the exact interval)" if test != "value vs previous look"
                    else "NOT statistically supported (within the radius)")
            rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "seed": tr.seed,
                         "fidelity": m, "role": r["role"], "candidate": r["candidate"], "kind": r["kind"],
                         "convention": c.tie_convention, "gamma_rule": c.gamma_rule, "value": value,
                         "win_freq": r["win_freq"], "wins_over_total": r["wins_over_total"], "n": n, "ties": r["ties"],
                         "action": r["action"], "reason": reason, "test": test, "compared_to": against,
                         "radius_used": radius, "exact_low": low, "exact_high": high, "supported": supported,
                         "supported_lemma1": lemma, "flag": flag, "other_convention": other,
                         "other_value": other_value, "other_action": other_action, "other_reason": other_reason,
                         "same_under_other": other_action == r["action"]})
    return pd.DataFrame(rows)


def convention_lines(decisions: pd.DataFrame, traces: Sequence[TraceResult]) -> list[str]:
    """Which convention and gamma rule decided, and what the other convention would have done: per run, the
    first look where it disagrees, plus the evidence behind the choice (ties, wins against the top expert)."""
    if not len(decisions):
        return ["No decisions were made."]
    conv = decisions["convention"].iloc[0]
    rule = decisions["gamma_rule"].iloc[0]
    gamma = traces[0].config.gamma
    words = {"exceeds": "exceeds", "at_least": "reaches or exceeds"}[rule]
    lines = [f"- Decisions used **{stats.CONVENTION_NAMES[conv]}** (`tie_convention: {conv}`): a fidelity ends when "
             f"it {words} gamma = {fmt(gamma, 2)} (`gamma_rule: {rule}`)."]
    diverged = decisions[~decisions["same_under_other"]]
    per_run = decisions.groupby("label", sort=False)
    first = diverged.groupby("label", sort=False).head(1)
    lines.append(f"- Under {stats.CONVENTION_NAMES[OTHER[conv]]} the same rule would have decided differently at "
                 f"{len(diverged)} of {len(decisions)} looks, in {first['label'].nunique()} of {per_run.ngroups} runs; "
                 "a run is identical under both conventions up to its first such look:")
    for r in first.itertuples():
        lines.append(f"  - {r.label}: at {r.candidate} vs {r.role}, {stats.CONVENTION_NAMES[conv]} {fmt(r.value)} -> "
                     f"{r.action}; {stats.CONVENTION_NAMES[r.other_convention]} {fmt(r.other_value)} -> {r.other_action}")
    ev = convention_evidence(traces)
    lines.append(f"- Ties are {fmt(ev['tie_share'], 1, percent=True)} of all validation judgements of the looks; the "
                 f"largest wins / total of any model against the top expert {ev['top_role']} is {fmt(ev['max_wot_vs_top'])} "
                 f"(WinFreq {fmt(ev['max_winfreq_vs_top'])}), so under wins / total "
                 + ("no look at the top fidelity could pass gamma: there only the decline rule and our caps can stop a run."
                    if not passes_gamma(ev["max_wot_vs_top"], gamma, rule) else
                    "the top fidelity's gamma can be passed."))
    return lines


def convention_evidence(traces: Sequence[TraceResult]) -> dict:
    """Measured facts behind the tie-convention choice: the share of ties among the looks' validation
    judgements, and the best wins / total and WinFreq any evaluated model reached against the top expert."""
    ties = n = 0
    best_wot = best_wf = -math.inf
    for tr in traces:
        h = tr.mf.history
        ties += int(h["ties"].sum())
        n += int(h["n"].sum())
        M = len(tr.config.fidelities)
        for run in tr.runs:
            ev = run.evals
            ev = ev[ev["fidelity"] == M]
            if len(ev):
                wot = ev["wins"] / (ev["wins"] + ev["ties"] + ev["losses"])
                best_wot, best_wf = max(best_wot, float(wot.max())), max(best_wf, float(ev["win_freq"].max()))
    return {"tie_share": ties / n if n else math.nan, "max_wot_vs_top": best_wot, "max_winfreq_vs_top": best_wf,
            "top_role": traces[0].config.fidelities[-1].role if traces else "?"}


def decision_summary(decisions: pd.DataFrame) -> pd.DataFrame:
    """Per action: how many looks, how many are statistical, how many the exact interval and Lemma 1 support."""
    frame = decisions.assign(statistical=decisions["supported"].notna())
    out = frame.groupby("action", sort=False).agg(
        looks=("value", "size"), statistical=("statistical", "sum"),
        supported_exact=("supported", lambda x: int(x.dropna().astype(bool).sum())),
        supported_lemma1=("supported_lemma1", lambda x: int(x.dropna().astype(bool).sum())),
        same_under_other_convention=("same_under_other", "sum"))
    return out.reset_index()


def iterations_table(traces: Sequence[TraceResult]) -> pd.DataFrame:
    frames = []
    for tr in traces:
        for run in tr.runs:
            if len(run.iterations):
                frames.append(run.iterations.assign(label=tr.label, batch_size=tr.batch_size, trace=tr.trace,
                                                    seed=tr.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def time_shares(timings: dict[str, float]) -> pd.DataFrame:
    """Seconds and share of the total per activity (generation, judging, dpo, sft, evaluation, ...)."""
    total = sum(timings.values()) or 1.0
    frame = pd.DataFrame({"activity": list(timings), "seconds": list(timings.values())})
    frame["share"] = frame["seconds"] / total
    return frame.sort_values("seconds", ascending=False).reset_index(drop=True)


def fidelity_gaps(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Measured WinRate between consecutive models of the ladder (mean over traces), in both conventions,
    beside the paper's Table 1 (Vicuna -> Llama -> Mistral -> Qwen, wins / total), labelled as the paper's."""

    frames = [tr.expert_pairs.assign(label=tr.label) for tr in traces]
    pairs = pd.concat(frames, ignore_index=True)
    consecutive = pairs[pairs["m"] - pairs["m_prime"] == 1]
    out = consecutive.groupby(["m", "better", "worse"], as_index=False).agg(
        win_rate_mean=("win_rate", "mean"), wins_over_total_mean=("wins_over_total", "mean"),
        win_rate_min=("win_rate", "min"), win_rate_max=("win_rate", "max"), n=("n", "first"),
        traces=("label", "nunique"))
    ref = reference.load("mf_table1")
    names = [f"{b} > {a}" for a, b in zip(ref["baseline"], ref["candidate"])]
    pad = max(0, len(out) - len(ref))
    out["paper_pair (reference)"] = (names + [""] * pad)[: len(out)]
    out["paper_wins_over_total (reference)"] = (list(ref["win_rate"]) + [math.nan] * pad)[: len(out)]
    return out


def departures(P, n_student_parameters: float | None, world_costs: dict) -> pd.DataFrame:
    """What differs from the paper's setting, each row read from the parameters actually used."""
    size = f"a {n_student_parameters / 1e6:.2f}M-parameter model" if n_student_parameters else "this world's student"
    conv = stats.CONVENTION_NAMES[P.tie_convention]
    ref = {"base": "the initial student (adapter disabled), fixed for every update",
           "previous": "theta_{t-1}, the policy as each update starts"}[P.dpo.reference]
    rows = [
        ("win rate compared with gamma", "wins / total pairs (Section 5: how its reported win rates are computed; "
         "Section 2 defines WinFreq with ties 1/2)",
         f"{conv} (`tie_convention: {P.tie_convention}`)" + (
             ": where ties dominate and the top expert is never beaten outright, wins / total could not pass gamma at "
             "the last fidelity; the measured tie share and best wins / total are printed with the decisions below"
             if P.tie_convention == "half" else "")),
        ("gamma rule", "move on when the win rate exceeds gamma (strict)",
         {"exceeds": "exceeds (strict, as the paper)", "at_least": "reaches or exceeds (>=)"}[P.gamma_rule]
         + f" (`gamma_rule: {P.gamma_rule}`)"),
        ("DPO learning rate", "5e-6 (full 7B models)",
         f"{P.dpo.lr:g}: a rank-{P.lora.r} LoRA on {size} barely moves at 5e-6"),
        ("DPO reference model", "not stated (Algorithm 2: DPO_Update(f, theta_{t-1}, D^(m)))",
         f"{ref} (`dpo.reference: {P.dpo.reference}`)"),
        ("response length", "256 tokens (training and test)",
         f"{P.sampling.max_new_tokens} new tokens while training, {P.test_sampling.max_new_tokens} at test"),
        ("batch sizes B", "512, 1024", ", ".join(map(str, P.batch_sizes))),
        ("training seeds per B", "2 traces", f"{len(P.trace_seeds)} ({', '.join(map(str, P.trace_seeds))}); "
         "the first two are shown beside the paper's traces"),
        ("costs per response", "1 : 4 : 16", " : ".join(f"{c:g}" for c in P.costs) + f" (world: {world_costs})"),
        ("gamma / validation / test prompts", "0.3 / 200 / 500", f"{P.gamma:g} / {P.n_validation} / {P.n_test}"),
        ("parameter-change epsilon", "not given", f"{P.epsilon:g} on the LoRA weights; vacuous at a fidelity's first look"),
        ("iteration caps (multi-fidelity run)", "none",
         f"{P.max_iters_per_fidelity} per fidelity, {P.max_iters} per run (labelled wherever they decide): without "
         "one, a fidelity whose look never passes gamma while the weights keep moving never ends"),
        ("validation cost", "not in Lambda (unstated)",
         f"Lambda counts training responses only, for every run; the validation responses behind each run's "
         f"decisions ({P.n_validation} per expert looked at) are added in the 'with validation' columns"),
        ("judge cost", "not priced", f"{P.judge_cost:g} per judgement, separate ledger column, never in Lambda"),
        ("baselines at equal Lambda", "vanilla(m=2), vanilla(m=3)",
         ", ".join(f"{b} (only at B = {', '.join(map(str, P.baseline_batch_sizes[b]))})" if b in P.baseline_batch_sizes
                   else b for b in P.baselines)),
        ("vanilla(m) selection", "best model under the same budget",
         "spends exactly the budget (last batch partial), keeps its best validation look; a budget that would need "
         f"more than max_iters = {P.max_iters} batches of B is bought in max_iters larger batches and each DPO step "
         "trains on the new batch only (DPO on all of D^(m) after every batch costs quadratically many passes: "
         "vanilla(m=1) at the full budget)"),
        ("multi-fidelity iterates on the test set", "the final models (Table 4); no per-iterate test curve",
         "every iterate, for the spend-to-match curve (`test_iterates: all`)" if P.test_iterates == "all" else
         "only the initial student, those Table 4 compares, the chosen one, each fidelity's last one and the "
         "run's last one (`test_iterates: compared`): "
         "the spend-to-match crossing is read from these points, so it can land later than with every iterate"),
        ("torch threads", "-", "torch's default" if P.torch_threads is None else f"{P.torch_threads}" + (
            " (tiny ops: threading overhead dominates on 2 shared cores)" if P.torch_threads == 1 else "")),
    ]
    return pd.DataFrame(rows, columns=["what", "paper", "here"])


def budget_table(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Per trace and run: Lambda (expert responses bought for training, the paper's), the expert validation
    responses behind the run's decisions, and Lambda with them; student and judge costs beside."""

    rows = []
    for tr in traces:
        for run in tr.runs:
            led = run.ledger
            val = validation_cost(run, tr.config.n_validation)
            rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "seed": tr.seed,
                         "run": run.name, "iterations": len(run.iterations), "Lambda": run.expert_cost(),
                         "validation_expert_cost": val, "Lambda_with_validation": run.expert_cost() + val,
                         "student_cost": float(led.loc[led["payer"] == "student", "cost"].sum()),
                         "judge_cost": float(led.loc[led["payer"] == "judge", "cost"].sum()),
                         "incremental_batch": run.state["identity"].get("incremental_batch")})
    return pd.DataFrame(rows)
