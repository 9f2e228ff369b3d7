"""WinFreq and wins / total from pairwise judgements, with fixed-n confidence intervals under either tie
convention.

The multi-fidelity paper decides "upgrade to the next fidelity" by comparing WinFreq (Section 2, ties
count 1/2) with a threshold gamma on n = 200 validation prompts, and justifies it with Lemma 1: with
probability >= 1 - delta, ``|WinFreq - WinRate| <= sqrt(log(2/delta) / n)``.  This module makes that
statement checkable: the paper's radius and tighter intervals, an anytime-valid confidence sequence
for the "check after every batch" use in Algorithm 2, planners for how many judgements a decision
needs, the closed-form bias of a noisy judge and the O(.) content of Theorem 5 (Eqs. 2-3).

Conventions: outcomes are judgements of "first model vs second model" valued 1 (win), 0.5 (tie),
0 (lose); failed judgements (``None``, ``-1``, NaN, "failed") are dropped and counted, never scored
as losses.  Every interval is for the mean of a [0, 1]-valued outcome and is clipped to [0, 1].  The paper's
Section 5 reports wins / total instead (a tie counts 0): ``win_rate_from_counts`` and ``convention_interval``
compute either convention from counts, with each one's exact interval.

A note on constants.  Hoeffding's inequality for n i.i.d. variables in [0, 1] gives
``P(|mean - mu| >= eps) <= 2 exp(-2 n eps^2)``, i.e. radius ``sqrt(log(2/delta) / (2 n))``.  The
paper's proof writes ``2 exp(-n eps^2)``: still true, but a factor sqrt(2) looser.  Likewise its
"separable" variant (a [-1, 1] variable) states ``sqrt(4 log(2/delta)/n)`` where Hoeffding gives
``sqrt(2 log(2/delta)/n)``.  ``hoeffding_radius`` returns the paper's values by default and the
standard ones with ``tight=True``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
from scipy import stats

from mfnb.core.params import did_you_mean
from mfnb.stats.checks import check_delta, check_n, scalar_or_array

# ----------------------------------------------------------------------------------------------
# WinFreq
# ----------------------------------------------------------------------------------------------

_LABELS = {"win": 1.0, "tie": 0.5, "lose": 0.0, "loss": 0.0}
_FAILED_LABELS = {"failed", "fail", "error"}
_VALID_NUMBERS = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class WinSummary:
    """Counts behind a WinFreq; ``failed`` judgements are excluded from ``n`` (reported, not scored)."""

    wins: int
    ties: int
    losses: int
    failed: int = 0

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_freq(self) -> float:
        """The paper's WINFREQ: (wins + ties/2) / n; NaN when every judgement failed."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else math.nan

    def interval(self, delta: float = 0.05, method: str = "hoeffding") -> tuple[float, float]:
        low, high = interval_from_counts(self.wins, self.ties, self.losses, delta, method)
        return float(low), float(high)


def _outcome_value(item, position: int) -> float | None:
    """One judgement as 1 / 0.5 / 0, or None when it is a failed judgement."""
    if item is None:
        return None
    if isinstance(item, str):
        key = item.strip().lower()
        if key in _LABELS:
            return _LABELS[key]
        if key in _FAILED_LABELS:
            return None
        raise ValueError(f"unknown outcome label {item!r} at position {position}; "
                         "expected 'win', 'tie', 'lose' (or None / -1 / 'failed' for a failed judgement)")
    if isinstance(item, (bool, np.bool_)):
        raise ValueError(f"unknown outcome {item!r} at position {position}: booleans are ambiguous, "
                         "use 1 / 0.5 / 0 or 'win' / 'tie' / 'lose'")
    try:
        value = float(item)
    except (TypeError, ValueError):
        raise ValueError(f"unknown outcome {item!r} at position {position}") from None
    if math.isnan(value) or value == -1.0:
        return None
    if value not in _VALID_NUMBERS:
        raise ValueError(f"unknown outcome value {item!r} at position {position}; "
                         "expected 1 (win), 0.5 (tie), 0 (lose) or -1 (failed)")
    return value


def summarize(outcomes: Iterable) -> WinSummary:
    """Count wins, ties, losses and failed judgements; unknown labels are an error (never guessed)."""
    wins = ties = losses = failed = 0
    for i, item in enumerate(outcomes):
        value = _outcome_value(item, i)
        if value is None:
            failed += 1
        elif value == 1.0:
            wins += 1
        elif value == 0.5:
            ties += 1
        else:
            losses += 1
    return WinSummary(wins, ties, losses, failed)


def outcome_values(outcomes: Iterable) -> np.ndarray:
    """The valid outcomes as a float array of 1 / 0.5 / 0, in order, failed judgements dropped."""
    values = [_outcome_value(item, i) for i, item in enumerate(outcomes)]
    return np.array([v for v in values if v is not None], dtype=float)


def win_freq(outcomes: Iterable) -> float:
    """WINFREQ (Section 2): ties count 1/2, failed judgements are excluded (see ``summarize``)."""
    summary = summarize(outcomes)
    if summary.n == 0:
        raise ValueError(f"no valid outcomes to compute a win frequency ({summary.failed} failed)")
    return summary.win_freq


# ----------------------------------------------------------------------------------------------
# Fixed-n intervals
# ----------------------------------------------------------------------------------------------

def hoeffding_radius(n, delta, separable: bool = False, *, tight: bool = False):
    """Lemma 1's radius ``sqrt(log(2/delta)/n)``; ``separable=True`` is the [-1, 1] variant
    ``sqrt(4 log(2/delta)/n)``.  ``tight=True`` uses Hoeffding's own constant (``/(2n)``, i.e. a
    factor sqrt(2) smaller), which is what the inequality actually gives.  Vectorised over n and delta.
    """
    n = check_n(n)
    delta = check_delta(delta)
    span = 2.0 if separable else 1.0
    denom = 2.0 * n if tight else n
    return scalar_or_array(span * np.sqrt(np.log(2.0 / delta) / denom))


def difference_radius(n, delta, *, tight: bool = True):
    """Radius for the change in WinFreq between two evaluations on the *same* n prompts.

    Per prompt the difference lies in [-1, 1] whatever the dependence between the two judgements, so
    Hoeffding on the paired differences applies: ``sqrt(2 log(2/delta)/n)`` (tight) or the paper's
    separable-variant constant ``sqrt(4 log(2/delta)/n)`` (``tight=False``).
    """
    return hoeffding_radius(n, delta, separable=True, tight=tight)


INTERVAL_METHODS = ("hoeffding_paper", "hoeffding", "bernstein", "clopper_pearson", "wilson", "exact_ties")
BINARY_ONLY = ("clopper_pearson", "wilson")


def interval_from_counts(wins, ties, losses, delta: float = 0.05, method: str = "hoeffding"):
    """(low, high) for the WinRate from outcome counts, vectorised over arrays of counts.

    Methods: ``hoeffding_paper`` (Lemma 1's radius), ``hoeffding`` (standard constant), ``bernstein``
    (empirical Bernstein, Maurer & Pontil 2009 Thm 4, two-sided at delta/2 per side; adapts to the
    small variance of win rates far from 1/2), ``clopper_pearson`` (exact binomial, via scipy's beta
    quantiles) and ``wilson`` (score interval; approximate, no coverage guarantee).  Those two
    need win/lose outcomes only: with ties the outcome is not binomial and they raise.
    ``exact_ties`` is exact with ties: WinRate = (P(win) + P(win or tie)) / 2, and each of the two is
    a binomial proportion, so two Clopper-Pearson intervals at delta/2 (a union bound) bound their
    mean with probability >= 1 - delta.  Without ties it is plain Clopper-Pearson at delta.
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}; known: {list(INTERVAL_METHODS)}")
    check_delta(delta)
    w, t, l = (np.asarray(a, dtype=float) for a in (wins, ties, losses))
    n = w + t + l
    check_n(n)
    mean = (w + 0.5 * t) / n
    if method == "hoeffding_paper":
        r = hoeffding_radius(n, delta)
        low, high = mean - r, mean + r
    elif method == "hoeffding":
        r = hoeffding_radius(n, delta, tight=True)
        low, high = mean - r, mean + r
    elif method == "bernstein":
        check_n(n, minimum=2)
        sum_sq = w + 0.25 * t
        var = np.maximum(sum_sq - n * mean**2, 0.0) / (n - 1)
        log_term = np.log(4.0 / delta)  # two one-sided bounds at delta/2 each
        r = np.sqrt(2.0 * var * log_term / n) + 7.0 * log_term / (3.0 * (n - 1))
        low, high = mean - r, mean + r
    elif method == "exact_ties":
        split = np.where(t > 0, delta / 2, delta)
        low_w, high_w = _clopper_pearson(w, n, split)
        low_wt, high_wt = _clopper_pearson(w + t, n, split)
        low, high = (low_w + low_wt) / 2, (high_w + high_wt) / 2
    else:
        if np.any(t > 0):
            raise ValueError(f"{method} needs win/lose outcomes only (got ties); "
                             "use 'hoeffding' or 'bernstein' for outcomes with ties")
        k = w
        if method == "clopper_pearson":
            low, high = _clopper_pearson(k, n, delta)
        else:  # wilson
            z = stats.norm.ppf(1 - delta / 2)
            centre = (k + z**2 / 2) / (n + z**2)
            half = z / (n + z**2) * np.sqrt(k * (n - k) / n + z**2 / 4)
            low, high = centre - half, centre + half
    return scalar_or_array(np.clip(low, 0.0, 1.0)), scalar_or_array(np.clip(high, 0.0, 1.0))


def _clopper_pearson(k, n, delta):
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, stats.beta.ppf(delta / 2, np.maximum(k, 1e-12), n - k + 1), 0.0)
        high = np.where(k < n, stats.beta.ppf(1 - delta / 2, k + 1, np.maximum(n - k, 1e-12)), 1.0)
    return low, high


def confidence_interval(outcomes: Iterable, delta: float = 0.05, method: str = "hoeffding") -> tuple[float, float]:
    """(low, high) in [0, 1] for the WinRate behind ``outcomes``, by method name (see
    ``interval_from_counts``); failed judgements are excluded first."""
    s = summarize(outcomes)
    if s.n == 0:
        raise ValueError(f"no valid outcomes to build an interval ({s.failed} failed)")
    return s.interval(delta, method)


# ----------------------------------------------------------------------------------------------
# Tie conventions: WinFreq (ties 1/2, Section 2) and wins / total (the numbers Section 5 reports)
# ----------------------------------------------------------------------------------------------

TIE_CONVENTIONS = ("wins_over_total", "half")
CONVENTION_NAMES = {"half": "WinFreq (ties 1/2)", "wins_over_total": "wins / total"}
TieConvention = Literal["wins_over_total", "half"]


def check_convention(convention: str, field: str = "tie_convention") -> str:
    """``convention`` if it is one of :data:`TIE_CONVENTIONS`, else a ValueError naming ``field``."""
    if convention not in TIE_CONVENTIONS:
        raise ValueError(f"parameter {field!r}: unknown tie convention {convention!r}"
                         f"{did_you_mean(str(convention), set(TIE_CONVENTIONS))}; known: {', '.join(TIE_CONVENTIONS)}")
    return convention


def win_rate_from_counts(wins, ties, losses, convention: str = "half"):
    """The win rate under a tie convention: ``half`` is WinFreq = (wins + ties/2) / n (the paper's
    definition, Section 2); ``wins_over_total`` is wins / n (how Section 5 computes the numbers it
    reports).  NaN where n = 0.  Vectorised over arrays of counts."""
    check_convention(convention, "convention")
    w, t, l = (np.asarray(a, dtype=float) for a in (wins, ties, losses))
    n = w + t + l
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(n > 0, (w + (0.5 * t if convention == "half" else 0.0)) / np.where(n > 0, n, 1), np.nan)
    return scalar_or_array(value)


EXACT_METHOD = {"half": "exact_ties", "wins_over_total": "clopper_pearson"}


def convention_interval(wins, ties, losses, convention: str = "half", delta: float = 0.05,
                        method: str = "exact"):
    """(low, high) for the win rate under ``convention``.

    ``method="exact"``: wins / total is a binomial proportion (a tie is simply not a win), so its exact
    interval is Clopper-Pearson on (wins, n); WinFreq with ties uses ``exact_ties`` (two Clopper-Pearson
    intervals joined by a union bound).  Any other method of :func:`interval_from_counts` applies to the
    convention's outcome (for wins / total: wins against ties and losses pooled as non-wins)."""
    check_convention(convention, "convention")
    if method == "exact":
        method = EXACT_METHOD[convention]
    w, t, l = (np.asarray(a, dtype=float) for a in (wins, ties, losses))
    if convention == "wins_over_total":
        t, l = np.zeros_like(t), t + l
    return interval_from_counts(w, t, l, delta, method)


def convention_summary(wins: int, ties: int, losses: int, convention: str = "half", delta: float = 0.05) -> dict:
    """One win rate under ``convention`` with its exact interval, the empirical Bernstein interval and
    Lemma 1's radius (the paper's constant), as a dict of plain floats."""
    n = int(wins + ties + losses)
    out = {"convention": check_convention(convention, "convention"), "n": n,
           "value": float(win_rate_from_counts(wins, ties, losses, convention))}
    if n == 0:
        return {**out, "exact_low": math.nan, "exact_high": math.nan, "bernstein_low": math.nan,
                "bernstein_high": math.nan, "radius": math.nan, "exact_method": EXACT_METHOD[convention]}
    low, high = convention_interval(wins, ties, losses, convention, delta)
    b_low, b_high = convention_interval(wins, ties, losses, convention, delta, "bernstein") if n >= 2 else \
        (math.nan, math.nan)
    return {**out, "exact_low": float(low), "exact_high": float(high), "bernstein_low": float(b_low),
            "bernstein_high": float(b_high), "radius": float(hoeffding_radius(n, delta)),
            "exact_method": EXACT_METHOD[convention]}


def outcome_scores(outcomes: Iterable, convention: str = "half") -> np.ndarray:
    """Per-judgement scores under ``convention``, NaN for failed judgements (kept in place, so scores of
    the same prompts line up across runs): half -> 1 / 0.5 / 0, wins_over_total -> 1 / 0 / 0."""
    check_convention(convention, "convention")
    values = [_outcome_value(item, i) for i, item in enumerate(outcomes)]
    out = np.array([np.nan if v is None else v for v in values], dtype=float)
    if convention == "wins_over_total":
        out = np.where(np.isnan(out), np.nan, (out == 1.0).astype(float))
    return out
