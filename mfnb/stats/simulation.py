"""Vectorised simulations of judged outcomes: how often an interval covers the truth, at fixed n and per look."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from mfnb.stats.sequences import CS_METHODS, mixture_cs_radius, union_bound_radius
from mfnb.stats.winrate import BINARY_ONLY, INTERVAL_METHODS, check_convention, interval_from_counts

# ----------------------------------------------------------------------------------------------
# Simulation helpers (vectorised)
# ----------------------------------------------------------------------------------------------

def outcome_probs(win_rate: float, tie_rate: float) -> tuple[float, float, float]:
    """(P(win), P(tie), P(lose)) with WinRate = P(win) + P(tie)/2 and the given tie rate."""
    w = win_rate - tie_rate / 2
    l = 1 - win_rate - tie_rate / 2
    if min(w, l) < -1e-12 or not 0 <= tie_rate <= 1:
        raise ValueError(f"win_rate={win_rate} is not reachable with tie_rate={tie_rate}")
    return max(w, 0.0), tie_rate, max(l, 0.0)


def simulate_counts(win_rate: float, tie_rate: float, n: int, n_reps: int, rng: np.random.Generator):
    """(wins, ties, losses) arrays of shape (n_reps,) for n judgements each."""
    counts = rng.multinomial(n, outcome_probs(win_rate, tie_rate), size=n_reps)
    return counts[:, 0], counts[:, 1], counts[:, 2]


def coverage_table(win_rates: Sequence[float], tie_rates: Sequence[float], ns: Sequence[int], delta: float,
                   n_reps: int, seed: int = 0, methods: Sequence[str] = INTERVAL_METHODS,
                   convention: str = "half") -> pd.DataFrame:
    """Empirical coverage and mean width of each fixed-n interval, one look per repetition.

    ``convention="half"``: the target is the WinRate (ties 1/2); binary-only methods are reported only where
    tie_rate == 0.  ``convention="wins_over_total"``: the target is P(win) = WinRate - tie_rate/2 and every
    interval is built on wins against everything else (binary, so Clopper-Pearson is exact with ties too).
    """
    check_convention(convention, "convention")
    rng = np.random.default_rng(seed)
    rows = []
    for mu in win_rates:
        for tie in tie_rates:
            for n in ns:
                w, t, l = simulate_counts(mu, tie, n, n_reps, rng)
                target = mu if convention == "half" else mu - tie / 2
                if convention == "wins_over_total":
                    t, l = np.zeros_like(t), t + l
                for method in methods:
                    if method in BINARY_ONLY and np.any(t > 0):
                        continue
                    low, high = interval_from_counts(w, t, l, delta, method)
                    covered = (low <= target) & (target <= high)
                    cov = covered.mean()
                    rows.append({"scenario": f"n={n}, ties={tie:g}", "convention": convention, "win_rate": mu,
                                 "target": target, "tie_rate": tie, "n": n, "method": method,
                                 "coverage": cov, "coverage_se": math.sqrt(cov * (1 - cov) / n_reps),
                                 "mean_width": float(np.mean(high - low)), "level": 1 - delta,
                                 "n_reps": n_reps})
    return pd.DataFrame(rows)


def sequential_coverage(win_rate: float, tie_rate: float, batch_size: int, n_batches: int, delta: float,
                        n_reps: int, seed: int = 0, methods: Sequence[str] | None = None,
                        gamma: float | None = None) -> pd.DataFrame:
    """Coverage when the interval is looked at after every batch (Algorithm 2's repeated check).

    Returns one row per (method, look k): ``coverage_so_far`` = fraction of runs whose interval
    contained the true WinRate at *every* look up to k.  A fixed-n interval's guarantee is per look,
    so this drifts below 1 - delta as looks accumulate; a confidence sequence's does not.  With
    ``gamma``, also ``upgrade_so_far`` = fraction of runs that have declared "WinRate > gamma"
    (interval's low end above gamma, or the point estimate for method ``point``) by look k.
    """
    if methods is None:
        methods = ["hoeffding_paper", "hoeffding", "bernstein"] + (list(BINARY_ONLY) if tie_rate == 0 else []) \
            + list(CS_METHODS)
    rng = np.random.default_rng(seed)
    batches = rng.multinomial(batch_size, outcome_probs(win_rate, tie_rate), size=(n_reps, n_batches))
    cum = batches.cumsum(axis=1)
    w, t, l = cum[..., 0], cum[..., 1], cum[..., 2]
    n = (np.arange(1, n_batches + 1) * batch_size)[None, :]
    mean = (w + 0.5 * t) / n
    rows = []
    for method in methods:
        if method == "cs_mixture":
            r = mixture_cs_radius(n, delta, t_opt=batch_size * n_batches)
            low, high = np.clip(mean - r, 0, 1), np.clip(mean + r, 0, 1)
        elif method == "cs_union":
            r = union_bound_radius(n, np.arange(1, n_batches + 1)[None, :], delta, n_checks=n_batches)
            low, high = np.clip(mean - r, 0, 1), np.clip(mean + r, 0, 1)
        elif method == "point":
            low = high = mean
        else:
            low, high = interval_from_counts(w, t, l, delta, method)
        covered = (low <= win_rate) & (win_rate <= high)
        so_far = np.logical_and.accumulate(covered, axis=1).mean(axis=0)
        per_look = covered.mean(axis=0)
        row = {"method": method, "look": np.arange(1, n_batches + 1), "n": n[0],
               "coverage_so_far": so_far, "coverage_at_look": per_look}
        if gamma is not None:
            row["upgrade_so_far"] = np.logical_or.accumulate(low > gamma if method != "point" else mean >= gamma,
                                                              axis=1).mean(axis=0)
        frame = pd.DataFrame(row)
        frame["win_rate"], frame["tie_rate"], frame["batch_size"] = win_rate, tie_rate, batch_size
        frame["target"], frame["n_reps"] = 1 - delta, n_reps
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)
