"""Notebook 02's figures: the traces against cumulative cost (vanilla at equal budget beside them), and cost
against quality for multi-fidelity vs high-fidelity-only alignment.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mfnb import stats
from mfnb.multifidelity.ledger import paper_lambda
from mfnb.multifidelity.trace import TraceResult


def _errors(win, low, high):
    """Asymmetric error bars clipped to [0, 1] (a radius can reach past either end)."""
    win, low, high = (np.asarray(x, dtype=float) for x in (win, low, high))
    return [win - low, high - win]


def _cost_axis(ax, batch_size: int) -> None:
    # costs grow 1:4:16, so the cheap fidelities would be squeezed against 0 on a linear axis
    ax.set_xscale("symlog", linthresh=batch_size, linscale=0.6)
    ax.set_xlim(left=-0.08 * batch_size)
    ax.set_xlabel(f"cumulative expert cost Lambda (symlog, linear below {batch_size})")


def _figure_legend(fig, axes) -> None:
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(text, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(4, len(seen)), fontsize="small")


def _panel_grid(traces: Sequence[TraceResult], width: float = 6.0, height: float = 4.0):
    import matplotlib.pyplot as plt

    batches = list(dict.fromkeys(tr.batch_size for tr in traces))
    ntr = max(sum(tr.batch_size == b for tr in traces) for b in batches)
    fig, axes = plt.subplots(len(batches), ntr, figsize=(width * ntr, height * len(batches)), squeeze=False,
                             constrained_layout=True)
    where = {}
    for i, b in enumerate(batches):
        for j, tr in enumerate([tr for tr in traces if tr.batch_size == b]):
            where[id(tr)] = axes[i][j]
    for ax in axes.ravel():
        if ax not in where.values():
            ax.set_visible(False)
    return fig, where


def plot_traces(traces: Sequence[TraceResult]):
    """The validation win rate that decided (vs the expert being trained against, in the run's tie convention,
    Lemma 1 interval) against cumulative Lambda; dotted lines mark fidelity switches, dashed curves are
    vanilla(m) at equal budget, stars the chosen models."""
    import seaborn as sns

    fig, where = _panel_grid(traces)
    colours = sns.color_palette(n_colors=max(len(tr.config.fidelities) for tr in traces))
    for tr in traces:
        ax = where[id(tr)]
        h = tr.mf.history
        for m, fid in enumerate(tr.config.fidelities, 1):
            sub = h[h["fidelity"] == m]
            if len(sub):
                ax.errorbar(sub["Lambda"], sub["value"], yerr=_errors(sub["value"], sub["low"], sub["high"]),
                            fmt="-o", ms=4, capsize=2, color=colours[m - 1],
                            label=f"multi-fidelity vs g^({m}) {fid.role}")
            van = tr.vanilla.get(m)
            if van is not None:
                vh = van.history
                ax.plot(vh["Lambda"], vh["value"], ls="--", marker="s", ms=3, color=colours[m - 1], alpha=0.8,
                        label=f"vanilla(m={m}) vs g^({m}) {fid.role}")
                if van.best:
                    bh = vh[vh["t"] == van.best["t"]].iloc[-1]
                    ax.scatter([bh["Lambda"]], [bh["value"]], marker="*", s=140, color=colours[m - 1],
                               edgecolors="black", zorder=4)
        switches = [(m, ex) for m, ex in sorted(tr.mf.exits.items()) if m < len(tr.config.fidelities)
                    and any(h["fidelity"] == m + 1)]
        for i, (m, ex) in enumerate(switches):
            ax.axvline(ex["Lambda"], color="grey", ls=":", lw=1)
            ax.annotate(f"-> g^({m + 1})", (ex["Lambda"], 0.97 - 0.07 * i), xycoords=("data", "axes fraction"),
                        fontsize="x-small", ha="left", va="top", xytext=(3, 0), textcoords="offset points")
        if tr.mf.best:
            b = h[(h["t"] == tr.mf.best["t"]) & (h["fidelity"] == tr.mf.best["fidelity"])].iloc[-1]
            ax.scatter([b["Lambda"]], [b["value"]], marker="*", s=200, color=colours[int(b["fidelity"]) - 1],
                       edgecolors="black", zorder=5, label="chosen model (star)")
        ax.axhline(tr.config.gamma, color="red", ls="--", lw=1, label=f"gamma = {tr.config.gamma:g}")
        ax.set_title(tr.label, fontsize="small")
        _cost_axis(ax, tr.batch_size)
        ax.set_ylabel(f"validation {stats.CONVENTION_NAMES[tr.config.tie_convention]} vs current expert",
                      fontsize="small")
        ax.set_ylim(0, max(0.6, float(h["high"].max()) + 0.05))
    _figure_legend(fig, where.values())
    fig.suptitle("Multi-fidelity traces (Algorithm 2) and vanilla baselines at equal budget")
    return fig


def plot_spend_to_match(traces: Sequence[TraceResult], ratios):
    """The thesis as a picture: test WinFreq against the top expert of every multi-fidelity iterate against the
    Lambda spent by then, the final model of vanilla(m=M) (the target, dashed) and of every other baseline at
    its own Lambda; a ring marks the first iterate that matches the target (``spend_ratio_table``)."""
    import seaborn as sns

    fig, where = _panel_grid(traces)
    names = sorted({n for tr in traces for n in tr.baselines})
    colours = dict(zip(["multi-fidelity", *names], sns.color_palette(n_colors=len(names) + 1)))
    for tr in traces:
        ax = where[id(tr)]
        top = tr.vs_top
        if not len(top):
            continue
        its = top[top["what"] == "multi-fidelity iterate"].sort_values("t")
        ax.plot(its["Lambda"], its["win_rate"], "-o", ms=4, color=colours["multi-fidelity"],
                label="multi-fidelity iterates")
        for name in tr.baselines:
            row = top[top["what"] == f"{name} (chosen)"]
            if len(row):
                ax.scatter(row["Lambda"], row["win_rate"], marker="s", s=50, color=colours[name], zorder=4,
                           label=f"{name} (final)")
        hit = ratios[ratios["label"] == tr.label] if len(ratios) else ratios
        if len(hit):
            h = hit.iloc[0]
            ax.axhline(h["target_win_rate_vs_top"], color=colours.get(h["target_run"], "grey"), ls="--", lw=1,
                       label="target: vanilla(m=M) final")
            if np.isfinite(h["mf_spend_to_match"]):
                ax.scatter([h["mf_spend_to_match"]], [h["mf_first_reaching_win_rate_vs_top"]], s=220,
                           facecolors="none", edgecolors="black", zorder=5, label="first match")
        ax.set_title(tr.label, fontsize="small")
        _cost_axis(ax, tr.batch_size)
        ax.set_ylabel(f"test WinFreq vs {tr.config.fidelities[-1].role}", fontsize="small")
    _figure_legend(fig, where.values())
    fig.suptitle("Spend to match: multi-fidelity iterates vs the baselines' final models (test set)")
    return fig


def plot_cost_quality(traces: Sequence[TraceResult]):
    """Quality (validation WinFreq vs the top expert g^(M)) against cumulative Lambda: every model of the
    multi-fidelity run vs the high-fidelity-only run (vanilla(m=M)) at the same total budget."""
    import seaborn as sns

    fig, where = _panel_grid(traces)
    colours = sns.color_palette(n_colors=3)
    for tr in traces:
        ax = where[id(tr)]
        M = len(tr.config.fidelities)
        runs = [("multi-fidelity", tr.mf, colours[0])]
        if M in tr.vanilla:
            runs.append((f"high-fidelity only (vanilla m={M})", tr.vanilla[M], colours[1]))
        for name, run, colour in runs:
            ev = run.evals
            ev = ev[ev["fidelity"] == M]
            cost = {0: 0.0}
            for it in run.iterations.itertuples():
                cost[int(it.t)] = paper_lambda([r for r in run.state["ledger"] if r["t"] <= it.t])
            ev = ev.assign(Lambda=ev["t"].map(cost)).dropna(subset=["Lambda"]).sort_values("t")
            rad = np.array([float(stats.hoeffding_radius(max(1, w + ti + lo), tr.config.delta))
                            for w, ti, lo in zip(ev["wins"], ev["ties"], ev["losses"])])
            win = ev["win_freq"].to_numpy(dtype=float)
            ax.errorbar(ev["Lambda"], win, yerr=_errors(win, np.clip(win - rad, 0, 1), np.clip(win + rad, 0, 1)),
                        fmt="-o", ms=4, capsize=2, color=colour, label=name)
        ax.set_title(tr.label, fontsize="small")
        _cost_axis(ax, tr.batch_size)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"validation WinFreq vs g^({M}) {tr.config.fidelities[-1].role}")
    _figure_legend(fig, where.values())
    fig.suptitle("Cost vs quality: multi-fidelity vs high-fidelity-only alignment")
    return fig
