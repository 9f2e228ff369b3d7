"""Theorem 5 (Eqs. 2-3) of the multi-fidelity paper: the O(.) content of its cost bounds, constants dropped."""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import pandas as pd

# ----------------------------------------------------------------------------------------------
# Theorem 5 (Eqs. 2-3): the O(.) content, constants dropped
# ----------------------------------------------------------------------------------------------

def _t5_log_arg(gap, alpha, beta, gamma, rad):
    if not (rad > 0 and 1 - gamma - rad > 0):
        raise ValueError(f"need rad > 0 and 1 - gamma - rad > 0 (got gamma={gamma}, rad={rad})")
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"alpha and beta must be > 0 (got alpha={alpha}, beta={beta})")
    return (2 * alpha * rad + alpha * beta * np.asarray(gap, dtype=float)) / (1 - gamma - rad)


def theorem5_cost_terms(costs: Sequence[float], gaps: Sequence[float], alpha: float, beta: float,
                        gamma: float, rad: float, B: float) -> pd.DataFrame:
    """Per-fidelity terms of Eq. 2: ``cost_m * (log((2 a rad + a b gap_m) / (1 - gamma - rad)) + B)``.

    ``gaps[m]`` is WinRate(g^(m), g^(m-1)), with g^(0) the initial model (> 0.5 by the paper's labelling).  The log term is the number
    of DPO iterations Assumption 4 allows for the parameter distance Lemma 2 / Assumption 3 bound;
    it can be negative when the argument is < 1 (the O(.) then says nothing about that fidelity).
    """
    costs = np.asarray(costs, dtype=float)
    gaps = np.asarray(gaps, dtype=float)
    if costs.shape != gaps.shape or costs.ndim != 1:
        raise ValueError(f"costs and gaps must be 1-D of equal length, got {costs.shape} and {gaps.shape}")
    arg = _t5_log_arg(gaps, alpha, beta, gamma, rad)
    log_term = np.log(arg)
    return pd.DataFrame({"fidelity": np.arange(1, costs.size + 1), "cost": costs, "gap": gaps,
                         "log_arg": arg, "log_term": log_term, "batch_term": float(B),
                         "term": costs * (log_term + B)})


def mf_cost_bound(costs: Sequence[float], winrates_between_fidelities: Sequence[float], alpha: float,
                  beta: float, gamma: float, rad: float, B: float) -> float:
    """Eq. 2 without its O(.) constant: the multi-fidelity cost bound summed over fidelities."""
    return float(theorem5_cost_terms(costs, winrates_between_fidelities, alpha, beta, gamma, rad, B)["term"].sum())


def hf_cost_bound(cost_top: float, gap_top_to_initial: float, alpha: float, beta: float, gamma: float,
                  rad: float, B: float) -> float:
    """Eq. 3 without its O(.) constant: high-fidelity-only alignment, gap WinRate(g^(M), g^(0))."""
    return float(cost_top * (np.log(_t5_log_arg(gap_top_to_initial, alpha, beta, gamma, rad)) + B))


def chain_win_rate(win_rates: Sequence[float]) -> float:
    """WinRate of the top of a chain from the consecutive WinRates, under a Bradley-Terry model
    (logits add up): ``sigmoid(sum(logit(w_m)))``.  Used for WinRate(g^(M), g^(0)), which the paper
    does not report."""
    w = np.asarray(win_rates, dtype=float)
    if np.any((w <= 0) | (w >= 1)):
        raise ValueError(f"win rates must be in (0, 1) to chain, got {win_rates!r}")
    return float(1 / (1 + np.exp(-np.sum(np.log(w / (1 - w))))))


def theorem5_grid(cost_ratios: Sequence[float], step_winrates: Sequence[float], n_fidelities: int,
                  alphas: Sequence[float], beta: float, gamma: float, rad: float,
                  batches: Sequence[float]) -> pd.DataFrame:
    """MF (Eq. 2) vs HF (Eq. 3) bounds over cost ratio c (costs 1, c, c^2, ...), a common WinRate
    between consecutive fidelities (the paper's convention: > 0.5 for the better one) and batch sizes B.

    WinRate(g^(M), g^(0)) for Eq. 3 is not determined by the steps; it is taken from ``chain_win_rate``.
    alpha (Lemma 2) is swept too: with the O(.) constants dropped, it sets the scale inside the log
    and so decides how much the log terms weigh against B.
    """
    if n_fidelities < 1:
        raise ValueError(f"n_fidelities must be >= 1, got {n_fidelities}")
    rows = []
    for alpha, B, c, g in itertools.product(alphas, batches, cost_ratios, step_winrates):
        costs = float(c) ** np.arange(n_fidelities)
        top = chain_win_rate([g] * n_fidelities)
        mf = mf_cost_bound(costs, [g] * n_fidelities, alpha, beta, gamma, rad, B)
        hf = hf_cost_bound(costs[-1], top, alpha, beta, gamma, rad, B)
        rows.append({"alpha": float(alpha), "B": float(B), "cost_ratio": float(c), "step_winrate": float(g),
                     "hf_winrate": top, "mf_bound": mf, "hf_bound": hf,
                     "mf_minus_hf_per_top_cost": (mf - hf) / costs[-1], "mf_wins": mf < hf})
    return pd.DataFrame(rows)


def theorem5_paper_setting(step_winrates: Sequence[float], cost_ratio: float, batches: Sequence[float],
                           alphas: Sequence[float], beta: float, gamma: float, rad: float) -> pd.DataFrame:
    """Eqs. 2-3 at the paper's own setting: its Table 1 WinRates between consecutive fidelities and
    costs 1 : c : c^2 (the paper uses 1:4:16), one row per (alpha, B)."""
    costs = float(cost_ratio) ** np.arange(len(step_winrates))
    top = chain_win_rate(step_winrates)
    rows = []
    for alpha, B in itertools.product(alphas, batches):
        mf = mf_cost_bound(costs, step_winrates, alpha, beta, gamma, rad, B)
        hf = hf_cost_bound(costs[-1], top, alpha, beta, gamma, rad, B)
        rows.append({"alpha": float(alpha), "B": float(B), "costs": ":".join(f"{c:g}" for c in costs),
                     "hf_winrate_chained": top, "mf_bound": mf, "hf_bound": hf,
                     "mf_over_hf": mf / hf if hf > 0 else np.nan, "mf_wins": mf < hf})
    return pd.DataFrame(rows)
