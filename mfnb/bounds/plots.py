"""Notebook 05's figures: radius curves, coverage at fixed n and per look, a noisy judge's bias, Theorem 5's region."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from mfnb.core.plots import axes_of


def plot_radius_curves(df, x: str = "n", y: str = "radius", hue: str = "method", style: str = "delta",
                       ax=None, title: str = "Confidence radius vs number of judgements"):
    """Radius (half-width) against n on log-log axes, one line per method and delta."""
    fig, ax = axes_of(ax, figsize=(8, 5))
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=style, ax=ax)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n (judgements)")
    ax.set_ylabel("radius")
    ax.set_title(title)
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def plot_coverage(df, target: float, x: str = "method", y: str = "coverage", hue: str | None = None,
                  col: str | None = None, se: str | None = "coverage_se", title: str | None = None,
                  col_wrap: int = 2):
    """Empirical coverage per interval method with +-2 SE bars and the 1 - delta target line."""
    panels = [(None, df)] if col is None else list(df.groupby(col, sort=False))
    ncols = min(col_wrap, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), sharey=True, squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (name, sub) in zip(axes.ravel(), panels):
        cats = list(dict.fromkeys(sub[x]))
        groups = [(None, sub)] if hue is None else list(sub.groupby(hue, sort=False))
        palette = sns.color_palette(n_colors=len(groups))
        step = 0.7 / max(len(groups), 1)
        for j, (gname, g) in enumerate(groups):
            xs = g[x].map({c: i for i, c in enumerate(cats)}).to_numpy(dtype=float)
            xs = xs + ((j - (len(groups) - 1) / 2) * step if hue is not None else 0)
            yerr = 2 * g[se].to_numpy(dtype=float) if se and se in g else None
            ax.errorbar(xs, g[y], yerr=yerr, fmt="o", color=palette[j], capsize=2, ms=4,
                        label=None if gname is None else f"{hue}={gname}")
        ax.axhline(target, color="red", ls="--", lw=1, label=f"target {target:g}")
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
        ax.set_title("" if name is None else str(name))
        ax.set_xlabel("")
        ax.set_ylabel("empirical coverage")
    axes.ravel()[len(panels) - 1].legend(fontsize="x-small", loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_sequential_coverage(df, target: float, x: str = "look", y: str = "coverage_so_far",
                             hue: str = "method", ax=None,
                             title: str = "Coverage at every look so far (check after each batch)"):
    """Fraction of runs whose interval held at every look up to k, against k."""
    fig, ax = axes_of(ax, figsize=(8, 4.5))
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=hue, markers=False, ax=ax)
    ax.axhline(target, color="red", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("number of looks (batches)")
    ax.set_ylabel("P(interval held at all looks so far)")
    ax.set_title(title)
    # below the axes, so that it never covers the curves (they fill the whole panel)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    return fig


def plot_label_noise(df, x: str = "flip_prob", sim: str = "simulated_mean", closed: str = "closed_form",
                     group: str = "true_win_rate", se: str | None = "simulated_se", ax=None,
                     title: str = "Win rate seen through a judge that flips Win/Lose"):
    """Simulated WinFreq (points, +-2 SE) against the closed form (lines), per true win rate."""
    fig, ax = axes_of(ax, figsize=(7, 4.5))
    for colour, (name, sub) in zip(sns.color_palette(n_colors=df[group].nunique()), df.groupby(group)):
        sub = sub.sort_values(x)
        ax.plot(sub[x], sub[closed], color=colour, lw=1.5, label=f"closed form, true {name:g}")
        ax.errorbar(sub[x], sub[sim], yerr=2 * sub[se] if se else None, fmt="o", color=colour, ms=4,
                    capsize=2, label=f"simulated, true {name:g}")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("judge flip probability p")
    ax.set_ylabel("expected WinFreq")
    ax.set_title(title)
    ax.legend(fontsize="x-small", ncol=2)
    return fig


def plot_theorem5_region(df, x: str = "cost_ratio", y: str = "step_winrate",
                         value: str = "mf_minus_hf_per_top_cost", wins: str = "mf_wins", col: str | None = "B",
                         row: str | None = "alpha", title: str | None = None):
    """Sign map of the MF - HF cost bound (Eqs. 2-3) over cost ratio and fidelity WinRate, one panel per
    (row, col) value; cells where the MF bound is smaller are dotted.  Colour is symmetric-log scaled."""
    from matplotlib.colors import SymLogNorm

    row_vals = [None] if row is None else sorted(df[row].unique())
    col_vals = [None] if col is None else sorted(df[col].unique())
    fig, axes = plt.subplots(len(row_vals), len(col_vals), figsize=(4.0 * len(col_vals) + 1.5, 3.6 * len(row_vals) + 0.8),
                             squeeze=False, sharex=True, sharey=True, constrained_layout=True)
    lim = float(np.nanmax(np.abs(df[value].to_numpy()))) or 1.0
    norm = SymLogNorm(linthresh=0.1, vmin=-lim, vmax=lim)
    for i, rv in enumerate(row_vals):
        for j, cv in enumerate(col_vals):
            ax = axes[i][j]
            sub = df
            if row is not None:
                sub = sub[sub[row] == rv]
            if col is not None:
                sub = sub[sub[col] == cv]
            grid = sub.pivot(index=y, columns=x, values=value).sort_index(ascending=False)
            win = sub.pivot(index=y, columns=x, values=wins).sort_index(ascending=False)
            im = ax.imshow(grid.to_numpy(), cmap="RdBu_r", norm=norm, aspect="auto")
            r_idx, c_idx = np.nonzero(win.to_numpy().astype(bool))
            ax.scatter(c_idx, r_idx, marker="o", color="black", s=10, label="MF bound < HF bound")
            ax.grid(False)
            ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns], fontsize="x-small")
            ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index], fontsize="x-small")
            if i == len(row_vals) - 1:
                ax.set_xlabel("cost ratio c (costs 1 : c : c^2 ...)", fontsize="small")
            if j == 0:
                ax.set_ylabel("WinRate(g^(m), g^(m-1))", fontsize="small")
            parts = [f"{row} = {rv:g}" if row else "", f"{col} = {cv:g}" if col else ""]
            ax.set_title(", ".join(p for p in parts if p), fontsize="small")
    handles = [plt.Line2D([], [], marker="o", color="black", ls="", ms=4, label="MF bound < HF bound")]
    fig.legend(handles=handles, loc="outside lower center", fontsize="small")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="(MF bound - HF bound) / top-fidelity cost")
    if title:
        fig.suptitle(title)
    return fig
