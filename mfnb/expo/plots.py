"""Notebook 03's figures: the paper's Figure 5 (reward, known quality and length against alpha), Figure 6 (the
control), and the bars of Table 1."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _alpha_axis(ax, low: float, high: float) -> None:
    """Symlog alpha axis from the grid's smallest to its largest alpha (alpha = 0 stays visible)."""
    ax.set_xscale("symlog", linthresh=1.0)
    span = max(high - low, 1e-3)
    ax.set_xlim(low - 0.02 * min(span, 1.0), high * 1.15 if high > 0 else high + 0.1)
    ticks = [t for t in (-1, 0, 0.3, 1, 3, 10, 30, 100, 300, 1000) if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])


def winrate_rows(table1, models: Sequence[str]):
    """Table 1's win rate and LC win rate of ``models`` as one long frame (columns metric, value, low, high,
    paper): the bars :func:`mfnb.core.plots.plot_winrates` draws, ours beside the paper's."""
    import pandas as pd

    long = pd.concat([
        table1.assign(metric="win rate", value=table1["win_rate"], low=table1["win_rate_low"],
                      high=table1["win_rate_high"], paper=table1["paper_win_rate"]),
        table1.assign(metric="LC win rate", value=table1["lc_win_rate"], low=table1["lc_win_rate_low"],
                      high=table1["lc_win_rate_high"], paper=table1["paper_lc_win_rate"]),
    ], ignore_index=True)
    return long[long["model"].isin(models)]


def plot_alpha_curves(sweeps, chosen: Mapping[str, float], oracle_best: Mapping[str, float] | None = None,
                      sft: Mapping[str, float] | None = None, title: str | None = None):
    """Figure 5 of the paper: reward vs alpha (left) and length vs alpha (right), one line per data
    fraction, the reward-chosen alpha as a dashed vertical line; plus the known quality vs alpha (middle)
    with the reward-chosen (dashed) and quality-best (dotted) alphas.  ``sweeps``: a frame with columns
    data, alpha, reward, quality, length_words; ``sft``: the SFT model's value per column (grey line).
    Symlog x axis: the paper's grids span 0.1 to 10."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [("reward", "reward-model score"), ("quality", "known quality (oracle)"),
              ("length_words", "response length (words)")]
    panels = [p for p in panels if p[0] in sweeps]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    axes = np.atleast_1d(axes)
    labels = list(dict.fromkeys(sweeps["data"]))
    palette = dict(zip(labels, sns.color_palette("colorblind", n_colors=len(labels))))
    low, high = float(sweeps["alpha"].min()), float(sweeps["alpha"].max())
    for ax, (col, ylabel) in zip(axes, panels):
        for label in labels:
            sub = sweeps[sweeps["data"] == label].sort_values("alpha")
            ax.plot(sub["alpha"], sub[col], marker="o", ms=3, color=palette[label], label=label)
            if label in chosen:
                ax.axvline(chosen[label], color=palette[label], ls="--", lw=1)
            if col == "quality" and oracle_best and label in oracle_best:
                ax.axvline(oracle_best[label], color=palette[label], ls=":", lw=1.5)
        if sft and col in sft:
            ax.axhline(sft[col], color="grey", lw=1, label="SFT model")
        _alpha_axis(ax, low, high)
        ax.set_xlabel("alpha (ExPO)")
        ax.set_ylabel(ylabel)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, title="DPO data", fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    if "quality" in sweeps and len(axes) > 1:
        axes[1].set_title("dashed: alpha chosen by reward; dotted: best by quality", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_figure6(sweeps, chosen: Mapping[str, float], title: str | None = None):
    """The paper's Figure 6 for every control fraction: reward (and known quality) and length against alpha
    for the default DPO model and the models trained harder on the same data, each with its reward-chosen
    alpha dashed.  ``sweeps``: columns model (the sweep's key), fraction, alpha, reward, [quality],
    length_words; ``chosen``: model key -> chosen alpha."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [c for c in ("reward", "quality", "length_words") if c in sweeps]
    fractions = sorted(sweeps["fraction"].unique())
    fig, axes = plt.subplots(len(panels), len(fractions), figsize=(4.6 * len(fractions), 3.3 * len(panels)),
                             squeeze=False)
    names = {"reward": "reward-model score", "quality": "known quality (oracle)",
             "length_words": "response length (words)"}
    for j, fraction in enumerate(fractions):
        sub = sweeps[sweeps["fraction"] == fraction]
        keys = list(dict.fromkeys(sub["model"]))
        palette = dict(zip(keys, sns.color_palette("colorblind", n_colors=len(keys))))
        for i, col in enumerate(panels):
            ax = axes[i][j]
            for key in keys:
                line = sub[sub["model"] == key].sort_values("alpha")
                ax.plot(line["alpha"], line[col], marker="o", ms=3, color=palette[key], label=key)
                if key in chosen:
                    ax.axvline(chosen[key], color=palette[key], ls="--", lw=1)
            _alpha_axis(ax, float(sweeps["alpha"].min()), float(sweeps["alpha"].max()))
            ax.set_ylabel(names[col])
            if i == 0:
                ax.set_title(f"{fraction * 100:g}% data", fontsize="medium")
            if i == len(panels) - 1:
                ax.set_xlabel("alpha (ExPO)")
            if i == 0:
                ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
