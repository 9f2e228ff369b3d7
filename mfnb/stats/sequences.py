"""Anytime-valid confidence sequences: a radius that holds at every look of Algorithm 2's "check after every
batch" at once."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize

from mfnb.stats.checks import check_delta, check_n, scalar_or_array
from mfnb.stats.winrate import hoeffding_radius, interval_from_counts, outcome_values

# ----------------------------------------------------------------------------------------------
# Anytime-valid confidence sequences
# ----------------------------------------------------------------------------------------------

def mixture_rho(t_opt: float, delta: float) -> float:
    """Mixing precision rho that makes ``mixture_cs_radius`` narrowest at time ``t_opt`` (numerically).

    Any rho > 0 gives a valid sequence; rho only moves where it is tightest.
    """
    check_n(t_opt)
    check_delta(delta)

    def radius_at(log_rho):
        return _mixture_radius(t_opt, delta, math.exp(log_rho))

    v = t_opt / 4.0
    res = optimize.minimize_scalar(radius_at, bounds=(math.log(v) - 10, math.log(v) + 10), method="bounded")
    return float(math.exp(res.x))


def _mixture_radius(t, delta, rho):
    v = np.asarray(t, dtype=float) / 4.0 + rho
    return np.sqrt(v * np.log(v / (rho * delta**2))) / np.asarray(t, dtype=float)


def mixture_cs_radius(t, delta: float, *, t_opt: float = 200, rho: float | None = None):
    """Radius at time t of a two-sided normal-mixture confidence sequence for a [0, 1] mean.

    Why it is valid at every t at once: a [0, 1] variable is 1/2-sub-Gaussian (Hoeffding's lemma), so
    ``exp(lam S_t - lam^2 t/8)`` (``S_t`` = centred sum) is a nonnegative supermartingale for every
    lam; mixing lam ~ N(0, 1/rho) gives ``sqrt(rho/(V+rho)) exp(S_t^2 / (2 (V+rho)))`` with V = t/4,
    and Ville's inequality bounds the chance that it ever exceeds 1/delta by delta.  Solving for S_t:
    ``|mean_t - mu| <= sqrt((V+rho) log((V+rho)/(rho delta^2))) / t`` for all t, w.p. >= 1 - delta
    (Robbins' normal mixture; Howard et al. 2021).  Checking "WinFreq >= gamma" after every batch, or
    stopping whenever one likes, keeps the 1 - delta guarantee.  Vectorised over t.
    """
    t_arr = check_n(t)
    check_delta(delta)
    rho = mixture_rho(t_opt, delta) if rho is None else float(rho)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    return scalar_or_array(_mixture_radius(t_arr, delta, rho))


def union_bound_radius(n, check, delta: float, n_checks: int | None = None):
    """Hoeffding radius at the ``check``-th look (1-based) with a union bound over looks.

    With a known number of looks K each uses delta/K; with an open-ended number look k uses
    delta/(k(k+1)), which sums to delta.  Valid only at the looks themselves (not between them).
    """
    n = check_n(n)
    k = check_n(check)
    check_delta(delta)
    if n_checks is not None:
        if n_checks < 1:
            raise ValueError(f"n_checks must be >= 1, got {n_checks!r}")
        if np.any(k > n_checks):
            raise ValueError(f"check index exceeds n_checks={n_checks}")
        delta_k = delta / n_checks
    else:
        delta_k = delta / (k * (k + 1))
    return scalar_or_array(np.sqrt(np.log(2.0 / delta_k) / (2.0 * n)))


CS_METHODS = ("cs_mixture", "cs_union")


def confidence_sequence(outcomes: Iterable, delta: float = 0.05, batch_size: int = 1,
                        method: str = "cs_mixture", *, t_opt: float | None = None,
                        n_checks: int | None = None) -> pd.DataFrame:
    """WinFreq and an anytime-valid (low, high) after every batch of ``batch_size`` valid outcomes.

    ``cs_mixture``: normal-mixture sequence (valid at all times, tuned to be tightest near ``t_opt``,
    default the total number of outcomes).  ``cs_union``: Hoeffding with a union bound over the looks.
    """
    x = outcome_values(outcomes)
    if x.size == 0:
        raise ValueError("no valid outcomes to build a confidence sequence")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    ends = np.arange(batch_size, x.size + batch_size, batch_size).clip(max=x.size)
    ends = np.unique(ends)
    means = np.cumsum(x)[ends - 1] / ends
    if method == "cs_mixture":
        r = mixture_cs_radius(ends, delta, t_opt=t_opt or x.size)
    elif method == "cs_union":
        r = union_bound_radius(ends, np.arange(1, ends.size + 1), delta,
                               n_checks=n_checks if n_checks is not None else None)
    else:
        raise ValueError(f"unknown confidence-sequence method {method!r}; known: {list(CS_METHODS)}")
    r = np.asarray(r)
    return pd.DataFrame({"check": np.arange(1, ends.size + 1), "n": ends, "win_freq": means,
                         "low": np.clip(means - r, 0, 1), "high": np.clip(means + r, 0, 1)})


def radius_table(ns: Sequence[int], deltas: Sequence[float], win_rate: float = 0.3,
                 t_opt: float = 200) -> pd.DataFrame:
    """Half-widths of every interval as n grows, long format (n, delta, method, radius).

    Data-free ones (Hoeffding variants, confidence sequences) are exact; the data-dependent ones
    (Bernstein, Clopper-Pearson, Wilson) are evaluated at win/lose data with WinFreq = ``win_rate``.
    ``cs_union`` assumes one look per n value listed up to that n (K = len(ns)).
    """
    ns = np.asarray(sorted(set(int(n) for n in ns)), dtype=float)
    rows = []
    for delta in deltas:
        curves = {
            "Lemma 1 (paper)": hoeffding_radius(ns, delta),
            "Lemma 1 separable (paper)": hoeffding_radius(ns, delta, separable=True),
            "hoeffding": hoeffding_radius(ns, delta, tight=True),
            "cs_mixture": mixture_cs_radius(ns, delta, t_opt=t_opt),
            "cs_union": union_bound_radius(ns, np.arange(1, ns.size + 1), delta, n_checks=ns.size),
        }
        k = np.round(win_rate * ns)
        for method in ("bernstein", "clopper_pearson", "wilson"):
            n_ok = ns >= 2
            low, high = interval_from_counts(k[n_ok], 0, ns[n_ok] - k[n_ok], delta, method)
            curves[method] = np.where(n_ok, 0, np.nan)
            curves[method][n_ok] = (np.asarray(high) - np.asarray(low)) / 2
        for method, r in curves.items():
            rows.append(pd.DataFrame({"n": ns.astype(int), "delta": delta, "method": method, "radius": r}))
    return pd.concat(rows, ignore_index=True)
