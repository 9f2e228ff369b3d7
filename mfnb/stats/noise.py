"""Noisy judges: the win rate a judge that flips labels reports, and how to undo it."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from mfnb.stats.checks import scalar_or_array
from mfnb.stats.simulation import outcome_probs, simulate_counts

# ----------------------------------------------------------------------------------------------
# Noisy judges
# ----------------------------------------------------------------------------------------------

def noisy_win_rate(p_win, p_tie, p_lose, flip_prob):
    """Expected WinFreq through a judge that swaps Win/Lose with probability p (ties unchanged):
    ``(1-p) w + p l + t/2``, which equals ``1/2 + (1-2p)(WinRate - 1/2)``: shrunk toward 1/2."""
    w, t, l, p = (np.asarray(a, dtype=float) for a in (p_win, p_tie, p_lose, flip_prob))
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"flip probability must be in [0, 1], got {flip_prob!r}")
    return scalar_or_array((1 - p) * w + p * l + t / 2)


def debias_win_rate(observed, flip_prob):
    """Invert the shrinkage of ``noisy_win_rate``: ``1/2 + (observed - 1/2)/(1 - 2p)``; needs p < 1/2."""
    p = np.asarray(flip_prob, dtype=float)
    if np.any((p < 0) | (p >= 0.5)):
        raise ValueError(f"flip probability must be in [0, 0.5) to debias, got {flip_prob!r}")
    return scalar_or_array(0.5 + (np.asarray(observed, dtype=float) - 0.5) / (1 - 2 * p))


def simulate_noisy_judge(win_rate: float, tie_rate: float, flip_prob: float, n: int, n_reps: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Observed WinFreqs (shape (n_reps,)) of n judgements seen through a Win/Lose-flipping judge."""
    w, t, l = simulate_counts(win_rate, tie_rate, n, n_reps, rng)
    seen_wins = rng.binomial(w, 1 - flip_prob) + rng.binomial(l, flip_prob)
    return (seen_wins + 0.5 * t) / n


def label_noise_table(win_rates: Sequence[float], tie_rate: float, flip_probs: Sequence[float], n: int,
                      n_reps: int, seed: int = 0) -> pd.DataFrame:
    """Simulated mean WinFreq through a noisy judge vs the closed form, per true win rate and p."""
    rng = np.random.default_rng(seed)
    rows = []
    for mu in win_rates:
        pw, pt, pl = outcome_probs(mu, tie_rate)
        for p in flip_probs:
            obs = simulate_noisy_judge(mu, tie_rate, p, n, n_reps, rng)
            rows.append({"true_win_rate": mu, "tie_rate": tie_rate, "flip_prob": p,
                         "simulated_mean": obs.mean(), "simulated_se": obs.std(ddof=1) / math.sqrt(n_reps),
                         "closed_form": noisy_win_rate(pw, pt, pl, p), "n": n, "n_reps": n_reps})
    out = pd.DataFrame(rows)
    out["z"] = (out["simulated_mean"] - out["closed_form"]) / out["simulated_se"]
    return out
