"""The sentences notebook 05 prints under its tables: every number in them is read from the tables the
notebook just computed and formatted by :mod:`mfnb.core.formatting` (so a sentence and its table agree), and every
comparison ("narrower", "never", "supported") is decided here, not typed into the notebook's prose.
"""
from __future__ import annotations

import pandas as pd

from mfnb import stats
from mfnb.core.formatting import fmt

GUARANTEED = ("hoeffding_paper", "hoeffding", "bernstein", "clopper_pearson", "exact_ties")
NAMES = {"hoeffding_paper": "Lemma 1 (paper)", "hoeffding": "Hoeffding", "bernstein": "empirical Bernstein",
         "clopper_pearson": "Clopper-Pearson", "wilson": "Wilson", "exact_ties": "exact with ties",
         "cs_mixture": "the mixture sequence", "cs_union": "the union-bound sequence", "point": "the point rule"}


def radius_lines(at_n: pd.DataFrame, n: int, delta: float) -> list[str]:
    """Radii at n (one delta) from ``radius_table``: Lemma 1's against Hoeffding's and the mixture sequence's."""
    r = at_n[(at_n["n"] == n) & (at_n["delta"] == delta)].set_index("method")["radius"]
    lemma, hoeff, mix = r["Lemma 1 (paper)"], r["hoeffding"], r["cs_mixture"]
    return [f"- At n = {n} and delta = {fmt(delta, 2)}: Lemma 1's radius is {fmt(lemma)}, Hoeffding's own constant "
            f"gives {fmt(hoeff)} (a factor {fmt(lemma / hoeff, 2)} smaller), and the mixture confidence sequence, valid "
            f"at every n at once, has radius {fmt(mix)}: "
            + ("narrower than Lemma 1's fixed-n radius." if mix < lemma else "wider than Lemma 1's fixed-n radius.")]


def coverage_lines(coverage: pd.DataFrame, delta: float) -> list[str]:
    """Which intervals kept their 1 - delta coverage in simulation (within two Monte-Carlo SEs), in both tie
    conventions, and how wide the exact and Bernstein intervals are relative to Lemma 1's."""
    lines = []
    for conv, sub in coverage.groupby("convention", sort=False):
        ok = sub.assign(kept=sub["coverage"] + 2 * sub["coverage_se"] >= 1 - delta)
        kept = ok.groupby("method")["kept"].all()
        guaranteed = [m for m in GUARANTEED if m in kept.index]
        failing = [NAMES[m] for m in guaranteed if not kept[m]]
        worst = ok.loc[ok["coverage"].idxmin()]
        lines.append(f"- {stats.CONVENTION_NAMES[conv]}: "
                     + ("every guaranteed interval (" + ", ".join(NAMES[m] for m in guaranteed) + ") covered at "
                        f"least {fmt(1 - delta, 2)} in every scenario (within two Monte-Carlo SEs)"
                        if not failing else "below target: " + ", ".join(failing))
                     + f"; the lowest coverage of any method was {fmt(worst['coverage'])} ({NAMES[worst['method']]}, "
                     f"{worst['scenario']}, true {fmt(worst['target'], 2)}).")
    half = coverage[coverage["convention"] == "half"]
    widths = half.groupby(["scenario", "method"])["mean_width"].mean().unstack()
    if {"clopper_pearson", "hoeffding_paper"} <= set(widths.columns):
        ratio = (widths["clopper_pearson"] / widths["hoeffding_paper"]).dropna()
        lines.append(f"- Without ties the exact Clopper-Pearson interval is {fmt(ratio.min(), 2)} to {fmt(ratio.max(), 2)} "
                     "times as wide as Lemma 1's.")
    if {"bernstein", "hoeffding"} <= set(widths.columns):
        b = (widths["bernstein"] / widths["hoeffding"]).dropna()
        lines.append(f"- Empirical Bernstein is {fmt(b.min(), 2)} to {fmt(b.max(), 2)} times as wide as Hoeffding here: "
                     + ("it buys nothing at these n and win rates (its additive term dominates)." if b.min() >= 1 else
                        "narrower in some scenarios." if b.max() > 1 else "narrower everywhere."))
    return lines


def sequential_lines(last: pd.DataFrame, delta: float, gamma: float) -> list[str]:
    """After the last look of the repeated-check simulation (true win rate = gamma): which intervals still held
    at every look, and how often the point rule declared a (false) upgrade."""
    lines = []
    for tie, sub in last.groupby("tie_rate", sort=True):
        sub = sub.set_index("method")
        held = [NAMES[m] for m in sub.index if m != "point" and sub.loc[m, "coverage_so_far"] >= 1 - delta]
        lost = [f"{NAMES[m]} {fmt(sub.loc[m, 'coverage_so_far'])}" for m in sub.index
                if m != "point" and sub.loc[m, "coverage_so_far"] < 1 - delta]
        text = (f"- Tie rate {fmt(tie, 2)}, after {int(sub['look'].iloc[0])} looks: held at every look with probability "
                f"at least {fmt(1 - delta, 2)}: " + (", ".join(held) or "none"))
        if lost:
            text += "; lost it: " + ", ".join(lost)
        if "point" in sub.index:
            text += (f". The paper's point rule (upgrade once the estimate reaches gamma = {fmt(gamma, 2)}) "
                     f"\"upgraded\" at some look in {fmt(sub.loc['point', 'upgrade_so_far'], 1, percent=True)} of runs "
                     "whose true win rate is exactly gamma")
        lines.append(text + ".")
    return lines


def paper_decision_lines(decisions: pd.DataFrame, n: int, delta: float) -> list[str]:
    """How many of the paper's own decisions (Tables 2-3) each check supports at n validation prompts."""
    thr = decisions[decisions["kind"] == "threshold"]
    lines = [f"- Of the paper's {len(decisions)} decisions, Lemma 1's radius at delta = {fmt(delta, 2)} and n = {n} "
             f"supports {int(decisions['supported_paper'].sum())}, Hoeffding's {int(decisions['supported_hoeffding'].sum())}"
             f", Hoeffding with a union bound over each trace's looks {int(decisions['supported_union'].sum())}.",
             f"- The paper's win rates are wins / total, a binomial proportion whatever the ties, so the exact "
             f"Clopper-Pearson test applies to its threshold looks: it supports "
             f"{int(thr['supported_exact'].astype(bool).sum())} of {len(thr)} "
             f"({int((thr['supported_exact'].astype(bool) & (thr['decision'] == 'upgrade')).sum())} of the "
             f"{int((thr['decision'] == 'upgrade').sum())} upgrades).",
             f"- The median look would have needed {fmt(int(decisions['n_needed_paper'].median()))} validation prompts "
             f"for Lemma 1's radius to clear its observed gap (range {fmt(int(decisions['n_needed_paper'].min()))} to "
             f"{fmt(int(decisions['n_needed_paper'].max()))})."]
    return lines


def convention_threshold_line(gamma: float, tie_rates) -> str:
    """gamma on WinFreq against gamma on wins / total: with tie rate t, WinFreq = P(win) + t/2."""
    parts = [f"P(win) = {fmt(gamma - t / 2, 2)} at tie rate {fmt(t, 2)}" for t in sorted(set(tie_rates)) if t > 0]
    return ("- The two conventions put gamma in different places: WinFreq = P(win) + ties/2, so WinFreq = "
            f"{fmt(gamma, 2)} is reached with " + (" and ".join(parts) if parts else "the same P(win) without ties")
            + f", while wins / total = {fmt(gamma, 2)} needs P(win) = {fmt(gamma, 2)} whatever the ties.")


def noise_lines(noise: pd.DataFrame, gamma: float) -> list[str]:
    """The label-noise simulation against the closed form, and the true win rate a noisy judge shows at gamma."""
    lines = [f"- Largest |simulated - closed form| / SE: {fmt(noise['z'].abs().max(), 2)} (about 3.5 is the most "
             "one expects by chance over this many cells): the closed form holds."]
    for p in sorted(noise["flip_prob"].unique()):
        if p > 0:
            true = 0.5 + (gamma - 0.5) / (1 - 2 * p)
            if 0 <= true <= 1:
                lines.append(f"- At flip probability {fmt(p, 2)} a true WinRate of {fmt(true)} is seen as gamma = "
                             f"{fmt(gamma, 2)}: a noisy judge triggers upgrades early.")
                break
    return lines


def theorem5_lines(paper_setting: pd.DataFrame, region: pd.DataFrame) -> list[str]:
    """Where the MF bound (Eq. 2) falls below the HF bound (Eq. 3): at the paper's own setting and over the grid."""
    lines = []
    wins = paper_setting[paper_setting["mf_wins"]]
    lines.append("- At the paper's own setting (its Table 1 win rates, costs 1 : c : c^2 with c = 4): the MF bound is "
                 + ("below the HF bound only at " + ", ".join(f"alpha = {fmt(r.alpha, 0)}, B = {fmt(r.B, 0)}"
                                                               for r in wins.itertuples())
                    if len(wins) else "never below the HF bound")
                 + f" of {len(paper_setting)} (alpha, B) settings; MF / HF ranges from {fmt(paper_setting['mf_over_hf'].min(), 2)}"
                 f" to {fmt(paper_setting['mf_over_hf'].max(), 2)}.")
    frac = region.groupby("B")["mf_wins"].mean()
    for B, f in frac.items():
        lines.append(f"- Over the grid at B = {fmt(B, 0)}: the MF bound is smaller in {fmt(f, 1, percent=True)} of the "
                     "(alpha, cost ratio, step win rate) cells.")
    big = [B for B, f in frac.items() if B >= 512]
    if big and all(frac[B] == 0 for B in big):
        lines.append("- So at batch sizes like the paper's, Eqs. 2-3 as printed never favour multi-fidelity alignment in "
                     "this grid: every fidelity pays its own additive B term. The paper's measured savings (Tables 2-4) "
                     "are not what these equations establish.")
    return lines


def summary_lines(radius: list[str], coverage: list[str], sequential: list[str], decisions: list[str],
                  noise: list[str], t5: list[str]) -> list[str]:
    """The notebook's summary, assembled from the sections' computed sentences."""
    out = ["- Lemma 1 holds but is looser than Hoeffding's inequality gives (both variants); its proof counts a tie "
           "as a win while WinFreq counts it one half."]
    out += radius[:1] + coverage + sequential + decisions[:2] + noise[1:] + t5[:1] + t5[-1:]
    return list(dict.fromkeys(out))
