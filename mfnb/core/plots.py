"""Figures for the notebooks (seaborn/matplotlib), each saved as PNG and PDF under results/<profile>/figures."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from mfnb.core import paths
from mfnb.core.atomic import atomic_path

sns.set_theme(context="notebook", style="whitegrid")


# No creation date or software version in the files: the same figure gives the same bytes, so an
# unchanged rerun leaves git clean.
_STABLE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}


def save_figure(fig: plt.Figure, profile: str, name: str) -> list[Path]:
    """Write ``fig`` as ``results/<profile>/figures/<name>.png`` and ``.pdf`` (atomically, byte-stable)."""
    folder = paths.results_dir(profile, "figures")
    written = []
    for ext in ("png", "pdf"):
        target = folder / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=150, metadata=_STABLE_METADATA[ext])
        written.append(target)
    return written


# ----------------------------------------------------------------------------------------------
# Win-rate statistics (notebooks 01, 02, 05)
# ----------------------------------------------------------------------------------------------

def axes_of(ax, figsize=(7, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def plot_winrates(df, label: str = "label", value: str = "win_rate", low: str | None = "low",
                  high: str | None = "high", reference: str | None = None, hue: str | None = None,
                  threshold: float | None = None, ax=None, title: str | None = None,
                  reference_label: str = "paper (reference)", xlabel: str = "win rate"):
    """Horizontal point plot of win rates with (low, high) error bars, one row per ``label``.

    ``reference`` names a column of the papers' numbers, drawn as a hollow diamond and labelled as a
    reference; ``hue`` colours and dodges several series per label; ``threshold`` draws a vertical line
    (e.g. gamma or 0.5).  Rows keep the frame's order.
    """
    fig, ax = axes_of(ax, figsize=(7, 0.45 * df[label].nunique() + 1.5))
    labels = list(dict.fromkeys(df[label]))
    y_of = {lab: i for i, lab in enumerate(labels)}
    groups = [(None, df)] if hue is None else list(df.groupby(hue, sort=False))
    palette = sns.color_palette(n_colors=max(len(groups), 1))
    step = 0.6 / max(len(groups), 1)
    for j, (name, sub) in enumerate(groups):
        offset = (j - (len(groups) - 1) / 2) * step if hue is not None else 0.0
        y = sub[label].map(y_of).to_numpy(dtype=float) + offset
        x = sub[value].to_numpy(dtype=float)
        xerr = None
        if low is not None and high is not None and low in sub and high in sub:
            xerr = [x - sub[low].to_numpy(dtype=float), sub[high].to_numpy(dtype=float) - x]
        ax.errorbar(x, y, xerr=xerr, fmt="o", color=palette[j], capsize=3, label=None if name is None else str(name))
        if reference is not None and reference in sub:
            ref = sub[reference].to_numpy(dtype=float)
            ax.scatter(ref, y, marker="D", facecolors="none", edgecolors="black", zorder=3,
                       label=reference_label if j == 0 else None)
    if threshold is not None:
        ax.axvline(threshold, color="grey", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:  # beside the axes: never over a point
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    return fig

