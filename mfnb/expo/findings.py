"""Notebook 03's plain statements that are not verdicts on a claim of the paper: whether the reward model
picks the right alpha, what the Figure 6 control says about *why* the optimal alpha falls with data, what
happens to length, and why the learning rate departs from the paper's.  Every number comes from the
tables passed in and is formatted by :mod:`mfnb.core.formatting`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from mfnb.core.formatting import fmt, fmt_interval
from mfnb.expo.control import Variant


def _alpha(x: float) -> str:
    return fmt(x, 1)


def claim_lines(claims) -> list[str]:
    """One Markdown line per row of the claims table: the claim, its scope, the paper's numbers and ours."""
    return [f"- **{r.claim}**, {r.scope} ({r.source}; {r.verdict}). Paper: {r.paper}. Ours: {r.ours}."
            for r in claims.itertuples()]


def verdict_lines(verdicts) -> list[str]:
    """One Markdown line per claim (:func:`mfnb.expo.claims.overall`): its verdict, and how many of its rows
    said what when it rests on several."""
    lines = []
    for r in verdicts.itertuples():
        untestable = int(getattr(r, "not_testable", 0))
        counts = [f"{r.reproduced} reproduced", f"{r.reversed} reversed", f"{r.inconclusive} inconclusive"]
        counts += [f"{untestable} not testable"] if untestable else []
        several = r.reproduced + r.reversed + r.inconclusive + untestable > 1
        lines.append(f"- **{r.claim}** ({r.source}): **{r.verdict}**" + (f" ({', '.join(counts)})" if several else ""))
    return lines


def _labels(optimal) -> list[str]:
    """Each row's data fraction, with its training seed where the table holds several."""
    if "train_seed" in optimal and optimal["train_seed"].nunique() > 1:
        return [f"{d} (seed {s})" for d, s in zip(optimal["data"], optimal["train_seed"])]
    return list(optimal["data"])


def reward_model_lines(optimal) -> list[str]:
    """Does the reward model pick the alpha that is best by the known quality (validation)?"""
    if "alpha_by_quality" not in optimal:
        return []
    same = int((optimal["alpha_by_reward"] == optimal["alpha_by_quality"]).sum())
    loss = float((optimal["quality_at_best"] - optimal["quality_at_chosen"]).max())
    models = "models (fraction and training seed)" if "seed" in _labels(optimal)[0] else "fractions"
    return [f"- **Does the reward model pick the right alpha?** It picks the quality-best alpha for {same} of "
            f"{len(optimal)} {models}; the most known quality its choice gives up is {fmt(loss)} (validation "
            "means). Alphas by known quality: "
            + ", ".join(f"{d}: {_alpha(a)}" for d, a in zip(_labels(optimal), optimal["alpha_by_quality"])) + "."]


def figure6_lines(shift, alphas, verdicts, variants: Sequence[Variant], full_key: str | None,
                  trend: str = "inconclusive") -> list[str]:
    """Why does the optimal alpha fall with data?  ``shift``: :func:`mfnb.expo.claims.alpha_shift`;
    ``alphas``: :func:`mfnb.expo.claims.alpha_summary` (with delta norms); ``verdicts``: the Figure 6 claim rows;
    ``trend``: the verdict on "the optimal alpha falls as the data grows" (the reading depends on it)."""
    if not len(variants):
        return []
    a = alphas.set_index("model")
    over = ("95% paired bootstrap interval over those prompts" if int(a["seeds"].max() if "seeds" in a else 1) <= 1
            else f"mean over {int(a['seeds'].max())} training seeds, 95% interval crossed over seeds and those prompts")
    lines = ["- **Why does the optimal alpha fall with data?** (the Figure 6 control: the same data trained "
             f"harder; optimal alpha chosen by reward on the validation prompts, {over})"]
    falls = 0
    peak = {r["scope"]: r["verdict"] for r in verdicts if r["claim"].startswith("training harder lowers")}
    for row in shift.itertuples():
        base, ctrl = row.control.split(",")[0], row.control
        moved = "falls" if row.alpha_falls else "rises" if row.alpha_rises else "does not move beyond the noise"
        falls += bool(row.alpha_falls)
        extra = ""
        if "delta_norm" in a:
            extra = (f"; ||delta theta|| {fmt(a.loc[base, 'delta_norm'], 2)} -> {fmt(a.loc[ctrl, 'delta_norm'], 2)}, "
                     f"extrapolated update (1 + alpha) ||delta theta|| {fmt(a.loc[base, 'extrapolated_norm'], 2)} "
                     f"-> {fmt(a.loc[ctrl, 'extrapolated_norm'], 2)}")
        lines.append(f"  - {ctrl}: the optimal alpha {moved}: {_alpha(row.default_alpha)} "
                     f"{fmt_interval(*a.loc[base, ['alpha_low', 'alpha_high']], 1)} -> {_alpha(row.control_alpha)} "
                     f"{fmt_interval(*a.loc[ctrl, ['alpha_low', 'alpha_high']], 1)} (difference "
                     f"{fmt(row.difference, 1, signed=True)} {fmt_interval(row.low, row.high, 1)}){extra}.")
    if full_key is not None and full_key in a.index and "delta_norm" in a:
        lines.append(f"  - For comparison, the full-data model: optimal alpha {_alpha(a.loc[full_key, 'alpha'])} "
                     f"{fmt_interval(*a.loc[full_key, ['alpha_low', 'alpha_high']], 1)}, ||delta theta|| "
                     f"{fmt(a.loc[full_key, 'delta_norm'], 2)}, extrapolated update "
                     f"{fmt(a.loc[full_key, 'extrapolated_norm'], 2)}.")
    n = len(shift)
    lower_peak = sum(v == "reproduced" for v in peak.values())
    same_peak = sum(v == "inconclusive" for v in peak.values())
    head = f"In {falls} of {n} controls the optimal alpha falls (resolved) when the same data is trained harder."
    if trend == "reproduced" and falls == n:
        head += (" The fall of the optimal alpha with more data is thus reproduced without more data: alpha (at "
                 "least partly) makes up for the size of the weight change.")
    elif trend == "reproduced" and falls == 0:
        head += " The size of the weight change does not explain the fall of the optimal alpha with data here."
    elif trend == "reproduced":
        head += " The size of the weight change explains the fall of the optimal alpha with data only in part."
    else:
        head += (f" (The fall of the optimal alpha with data is itself {trend} here, so there is no trend to "
                 "explain.)")
    tail = (f" Whether the data still matters once the update is as large: in {lower_peak} of {n} controls the "
            f"harder-trained model + ExPO stays below the default model + ExPO on the test prompts (resolved), in "
            f"{same_peak} they are indistinguishable and in {n - lower_peak - same_peak} it is above.")
    lines.append("  - " + head + tail)
    return lines


def length_lines(optimal, sweeps, length_bias: float, threshold: float = 0.25) -> list[str]:
    """Length at the chosen alpha, the alpha where length departs, and the preference data's length bias."""
    shifts = {}
    for label, sw in sweeps.groupby("data", sort=False):
        sw = sw.sort_values("alpha")
        base = float(sw["length_words"].iloc[0])
        moved = sw[(sw["length_words"] - base).abs() > threshold * base]
        shifts[label] = float(moved["alpha"].iloc[0]) if len(moved) else math.inf
    change = float((optimal["length_at_chosen"] - optimal["length_at_0"]).abs().max())
    lengths = ", ".join(f"{label}: {fmt(r.length_at_0, 2)} -> {fmt(r.length_at_chosen, 2)}"
                        for label, r in zip(_labels(optimal), optimal.itertuples()))
    departs = ", ".join(f"{k}: {_alpha(v) if math.isfinite(v) else 'never'}" for k, v in shifts.items())
    return [f"- **Length** (words, validation, alpha 0 -> the chosen alpha): {lengths}; no chosen alpha changes the "
            f"mean length by more than {fmt(change, 2)} words. The smallest alpha at which the mean length moves by "
            f"more than {threshold:.0%}: {departs}. The paper explains its 40% model's early length growth by the "
            f"length bias of its preference data; ours has a mean chosen-minus-rejected length of "
            f"{fmt(length_bias, 2, signed=True)} words per pair, so a length change here is degeneration past the "
            "optimum, not a learned preference."]


def lr_lines(probe, sft_metrics: Mapping[str, float], dpo_lr: float, knows_quality: bool) -> list[str]:
    """Why our learning rate departs from the paper's (the learning-rate probe on all the data)."""
    if not len(probe):
        return []
    lines = []
    paper = probe[probe["paper"]]
    used = probe[probe["used"]]
    if len(paper) and len(used):
        r, u = paper.iloc[0], used.iloc[0]
        lines.append(f"- **Learning rate**: with the paper's lr {r['lr']:g} the adapter barely moves (||delta theta|| "
                     f"{fmt(r['delta_norm'], 4)} against {fmt(u['delta_norm'], 2)} at lr {u['lr']:g}), and even at "
                     f"its reward-chosen alpha {_alpha(r['alpha_by_reward'])} the reward is "
                     f"{fmt(r['reward_at_chosen'])} "
                     f"(SFT model: {fmt(sft_metrics['reward'])}); hence our lr {dpo_lr:g}.")
    col = "quality" if knows_quality else "reward"
    lines.append(f"  - {'Known quality' if knows_quality else 'Reward'} at alpha 0 -> at the reward-chosen alpha, per "
                 "learning rate (all the data): "
                 + "; ".join(f"lr {r.lr:g}: {fmt(getattr(r, col + '_at_alpha_min'))} -> "
                             f"{fmt(getattr(r, col + '_at_chosen'))} (alpha {_alpha(r.alpha_by_reward)})"
                             for r in probe.itertuples()) + ".")
    return lines
