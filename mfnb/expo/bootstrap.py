"""Intervals for notebook 03: a paired percentile bootstrap over prompts.

Every model is sampled on the same prompts with the same seeds, so one matrix of resampling counts
(``counts[b, i]``: how often prompt i is drawn in replicate b) serves every model and every statistic.
A prompt carries all its samples (one per sampling seed) into a replicate, so the intervals cover
prompt-to-prompt variation and sampling noise, and differences between two models are paired (both are
measured on the same resampled prompts).  The training run is fixed: training-seed variance is not in them.

Statistics that *choose* something (the optimal alpha, the best data fraction) are recomputed inside each
replicate, so their intervals include the noise of the choice.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def bootstrap_counts(n_prompts: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``counts[b, i]``: how often prompt i is drawn in replicate b (each row sums to ``n_prompts``)."""
    if n_prompts < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs n_prompts >= 1 and n_boot >= 1, got {n_prompts}, {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot).astype(np.float64)


def replicate_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means of per-prompt ``values`` (shape ``[n]``, or ``[k, n]`` for k statistics at once) under each
    replicate: shape ``[n_boot]`` (or ``[n_boot, k]``)."""
    values = np.asarray(values, dtype=np.float64)
    return counts @ values.T / counts.sum(axis=1, keepdims=values.ndim > 1)


def percentile_interval(replicates: Sequence[float], level: float = 0.95, *,
                        discrete: bool = False) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaNs ignored).  ``discrete``:
    both ends are values the replicates took (for a chosen alpha, which lives on a grid), rounded outwards
    instead of interpolated."""
    x = np.asarray(replicates, dtype=np.float64)
    x = x[~np.isnan(x)]
    if not len(x):
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    if discrete:
        return float(np.percentile(x, tail, method="lower")), float(np.percentile(x, 100.0 - tail, method="higher"))
    low, high = np.percentile(x, [tail, 100.0 - tail])
    return float(low), float(high)


def argmax_replicates(values: np.ndarray, counts: np.ndarray, options: Sequence[float]) -> np.ndarray:
    """The option with the highest mean per replicate (the smallest option on a tie), e.g. the optimal
    alpha: ``values[k, i]`` is option k's value on prompt i."""
    options = np.asarray(options, dtype=np.float64)
    order = np.argsort(options, kind="stable")
    means = replicate_means(np.asarray(values, dtype=np.float64)[order], counts)  # [n_boot, k]
    return options[order][np.argmax(means, axis=1)]


def best_value_replicates(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The highest mean over options per replicate (the value at the chosen option)."""
    return replicate_means(np.asarray(values, dtype=np.float64), counts).max(axis=1)


def rank_correlation_replicates(x: Sequence[float], y: np.ndarray) -> np.ndarray:
    """Spearman correlation of fixed ``x`` with each replicate's ``y[b, :]`` (ties take average ranks);
    0 where a replicate's ``y`` is constant (no ordering to correlate)."""
    from scipy.stats import rankdata

    rx = rankdata(np.asarray(x, dtype=np.float64))
    ry = rankdata(np.asarray(y, dtype=np.float64), axis=1)
    rx = rx - rx.mean()
    ry = ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ry @ rx) / denom
    return np.where(denom > 0, rho, 0.0)


def lc_replicates(outcomes: np.ndarray, candidate_lengths: np.ndarray, baseline_lengths: np.ndarray,
                  counts: np.ndarray, *, l2: float = 1e-3, max_iter: int = 100) -> np.ndarray:
    """The length-controlled win rate (:func:`mfnb.expo.report.length_controlled_win_rate`) in every
    replicate at once: a weighted logistic fit per replicate, weights = how often each prompt was drawn.

    ``outcomes``, ``candidate_lengths``, ``baseline_lengths``: shape ``[n_prompts, n_seeds]`` (win 1, tie
    1/2, lose 0, NaN for a failed judgement, which is dropped).  The length scale (sd of the differences)
    is the full sample's, as in the point estimate; with all counts 1 this *is* the point estimate.
    """
    y = np.asarray(outcomes, dtype=np.float64)
    diff = np.asarray(candidate_lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    valid = ~np.isnan(y)
    sd = float(diff[valid].std()) if valid.any() else 0.0
    x = np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff)
    y, x = np.where(valid, y, 0.0).ravel(), x.ravel()
    n_seeds = outcomes.shape[1] if np.ndim(outcomes) > 1 else 1
    weights = np.repeat(counts, n_seeds, axis=1) * valid.ravel()          # [B, n * s]
    beta = np.zeros((counts.shape[0], 2))
    eye = l2 * np.eye(2)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(beta[:, :1] + beta[:, 1:] * x)))        # [B, m]
        r = weights * (y - p)
        grad = np.stack([r.sum(axis=1), (r * x).sum(axis=1)], axis=1) - l2 * beta
        w = weights * p * (1 - p)
        h00, h01, h11 = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1)
        hess = np.stack([np.stack([h00, h01], axis=1), np.stack([h01, h11], axis=1)], axis=1) + eye
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return 1.0 / (1.0 + np.exp(-beta[:, 0]))
