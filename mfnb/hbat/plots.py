"""Notebook 04's figures: Figure 2 (scores against N and Fmax) and the two objectives per method."""
from __future__ import annotations

import math
from typing import Sequence

from mfnb.hbat.report import METRICS, known, seed_summary, unknown_text


def plot_figure2(grid, metrics: Sequence[str] = METRICS, world: str | None = None):
    """Figure 2: HbAT's scores against N and Fmax (mean and 95% interval over seeds), DPO dashed."""
    import matplotlib.pyplot as plt

    summary = seed_summary(grid, by=["axis", "value"], metrics=metrics)
    dpo = summary[summary["axis"] == "DPO"]
    fig, axes = plt.subplots(2, len(metrics), figsize=(4 * len(metrics), 6.5), squeeze=False)
    for row, axis in enumerate(("N", "Fmax")):
        sub = summary[summary["axis"] == axis].sort_values("value")
        for col, m in enumerate(metrics):
            ax = axes[row][col]
            yerr = None
            if sub[f"{m}_low"].notna().any():
                yerr = [sub[m] - sub[f"{m}_low"], sub[f"{m}_high"] - sub[m]]
            ax.errorbar(sub["value"], sub[m], yerr=yerr, marker="o", capsize=3, label="HbAT")
            if len(dpo):
                ax.axhline(float(dpo[m].iloc[0]), color="grey", ls="--", label="DPO (two-stage)")
            ax.set_xlabel(axis if axis == "N" else "$F_{max}$")
            ax.set_ylabel(m)
            if not known(summary, m):   # a judge-only world: say so rather than leave an empty panel
                ax.text(0.5, 0.5, unknown_text(m), transform=ax.transAxes, ha="center", va="center", color="grey")
            if row == 0 and col == 0:
                ax.legend(fontsize="small")
    fig.suptitle("HbAT vs number of splits N (top, Fmax fixed) and Fmax (bottom, N fixed)"
                 + (f"; {world} world" if world else ""))
    fig.tight_layout()
    return fig


def plot_tradeoff(summary, ax=None):
    """Quality (instruction following) against reward (preference) per method, with 95% intervals."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.5))
    for _, r in summary.iterrows():
        xerr = None if math.isnan(r["reward_low"]) else [[r["reward"] - r["reward_low"]], [r["reward_high"] - r["reward"]]]
        yerr = None if math.isnan(r["quality_low"]) else [[r["quality"] - r["quality_low"]], [r["quality_high"] - r["quality"]]]
        ax.errorbar([r["reward"]], [r["quality"]], xerr=xerr, yerr=yerr, marker="o", capsize=3, label=r["method"])
    ax.set_xlabel("preference reward (style rate)")
    ax.set_ylabel("instruction-following quality")
    if not known(summary, "quality"):
        ax.text(0.5, 0.5, f"{unknown_text('quality')} in this world", transform=ax.transAxes, ha="center",
                va="center", color="grey")
    ax.set_title("Table 4 methods: the two objectives")
    ax.legend(fontsize="small")
    return ax.figure
