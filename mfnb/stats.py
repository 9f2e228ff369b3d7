"""Win-rate statistics: WinFreq and wins / total, confidence intervals and sequences, intervals over seeds and
prompts, sample-size planning, Theorem 5.

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

One module although it is ~900 lines: it holds no algorithm, storage or report, only small independent
formulas and their vectorised simulations, all under the conventions above; splitting it would scatter them.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Annotated, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from scipy import optimize, stats

from mfnb.params import Params

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
# Argument checks
# ----------------------------------------------------------------------------------------------

def _check_delta(delta) -> np.ndarray:
    d = np.asarray(delta, dtype=float)
    if np.any(~(d > 0) | ~(d < 1)):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return d


def _check_n(n, minimum: int = 1) -> np.ndarray:
    arr = np.asarray(n, dtype=float)
    if np.any(~(arr >= minimum)):
        raise ValueError(f"n must be >= {minimum}, got {n!r}")
    return arr


def _scalar_or_array(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x


# ----------------------------------------------------------------------------------------------
# Fixed-n intervals
# ----------------------------------------------------------------------------------------------

def hoeffding_radius(n, delta, separable: bool = False, *, tight: bool = False):
    """Lemma 1's radius ``sqrt(log(2/delta)/n)``; ``separable=True`` is the [-1, 1] variant
    ``sqrt(4 log(2/delta)/n)``.  ``tight=True`` uses Hoeffding's own constant (``/(2n)``, i.e. a
    factor sqrt(2) smaller), which is what the inequality actually gives.  Vectorised over n and delta.
    """
    n = _check_n(n)
    delta = _check_delta(delta)
    span = 2.0 if separable else 1.0
    denom = 2.0 * n if tight else n
    return _scalar_or_array(span * np.sqrt(np.log(2.0 / delta) / denom))


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
    _check_delta(delta)
    w, t, l = (np.asarray(a, dtype=float) for a in (wins, ties, losses))
    n = w + t + l
    _check_n(n)
    mean = (w + 0.5 * t) / n
    if method == "hoeffding_paper":
        r = hoeffding_radius(n, delta)
        low, high = mean - r, mean + r
    elif method == "hoeffding":
        r = hoeffding_radius(n, delta, tight=True)
        low, high = mean - r, mean + r
    elif method == "bernstein":
        _check_n(n, minimum=2)
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
    return _scalar_or_array(np.clip(low, 0.0, 1.0)), _scalar_or_array(np.clip(high, 0.0, 1.0))


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
        from mfnb.params import did_you_mean

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
    return _scalar_or_array(value)


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

# ----------------------------------------------------------------------------------------------
# Anytime-valid confidence sequences
# ----------------------------------------------------------------------------------------------

def mixture_rho(t_opt: float, delta: float) -> float:
    """Mixing precision rho that makes ``mixture_cs_radius`` narrowest at time ``t_opt`` (numerically).

    Any rho > 0 gives a valid sequence; rho only moves where it is tightest.
    """
    _check_n(t_opt)
    _check_delta(delta)

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
    t_arr = _check_n(t)
    _check_delta(delta)
    rho = mixture_rho(t_opt, delta) if rho is None else float(rho)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    return _scalar_or_array(_mixture_radius(t_arr, delta, rho))


def union_bound_radius(n, check, delta: float, n_checks: int | None = None):
    """Hoeffding radius at the ``check``-th look (1-based) with a union bound over looks.

    With a known number of looks K each uses delta/K; with an open-ended number look k uses
    delta/(k(k+1)), which sums to delta.  Valid only at the looks themselves (not between them).
    """
    n = _check_n(n)
    k = _check_n(check)
    _check_delta(delta)
    if n_checks is not None:
        if n_checks < 1:
            raise ValueError(f"n_checks must be >= 1, got {n_checks!r}")
        if np.any(k > n_checks):
            raise ValueError(f"check index exceeds n_checks={n_checks}")
        delta_k = delta / n_checks
    else:
        delta_k = delta / (k * (k + 1))
    return _scalar_or_array(np.sqrt(np.log(2.0 / delta_k) / (2.0 * n)))


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


# ----------------------------------------------------------------------------------------------
# Sample sizes and decisions
# ----------------------------------------------------------------------------------------------

def n_for_radius(radius, delta: float, separable: bool = False, *, tight: bool = False):
    """Smallest n with ``hoeffding_radius(n, delta, ...) <= radius`` (same constants)."""
    r = np.asarray(radius, dtype=float)
    if np.any(~(r > 0)):
        raise ValueError(f"radius must be > 0, got {radius!r}")
    _check_delta(delta)
    span = 2.0 if separable else 1.0
    n = span**2 * np.log(2.0 / delta) / (r**2 * (2.0 if tight else 1.0))
    # guard against n landing a hair above an integer through rounding
    return _scalar_or_array(np.ceil(n - 1e-9).astype(int))


def n_to_resolve(difference, delta: float, *, tight: bool = False, gap: str = "observed"):
    """Prompts needed to tell a win rate apart from a threshold that is ``difference`` away.

    ``gap="observed"``: the radius must not exceed the observed |WinFreq - threshold| (post hoc:
    "with this many prompts, the decision we saw would have been supported").  ``gap="true"``: the
    true win rate is ``difference`` away and the decision should come out supported with probability
    >= 1 - delta, which needs radius <= |difference|/2, i.e. four times as many prompts.
    """
    d = np.abs(np.asarray(difference, dtype=float))
    if gap not in ("observed", "true"):
        raise ValueError(f"gap must be 'observed' or 'true', got {gap!r}")
    if np.any(~(d > 0)):
        raise ValueError(f"difference must be nonzero, got {difference!r}")
    return n_for_radius(d / 2 if gap == "true" else d, delta, tight=tight)


def decision_supported(win_freq_value, threshold, radius):
    """True where the decision's side of the threshold is outside the noise: |WinFreq - thr| > radius."""
    w, thr, r = (np.asarray(a, dtype=float) for a in (win_freq_value, threshold, radius))
    return _scalar_or_array(np.abs(w - thr) > r)


def trace_decisions(traces: pd.DataFrame, gamma: float = 0.3, n_validation: int = 200,
                    delta: float = 0.05) -> pd.DataFrame:
    """Every decision in the paper's Tables 2-3 traces, with whether n_validation prompts support it.

    Decisions follow the paper's rule: at a non-final fidelity each evaluated row is a look at
    "WinFreq > gamma" (``upgrade`` if above, ``continue`` if not); at the final fidelity each row after
    the first compares with the previous one (``stop`` on a decline, ``continue`` otherwise).  Vanilla
    baselines are not decisions and are skipped.  Threshold looks are judged with Lemma 1's radius
    (paper constant) and the standard Hoeffding constant, plus a union bound over all looks in the
    trace; declines use the paired-difference radius (``difference_radius``).
    """
    _check_delta(delta)
    rows = []
    for (batch, trace), group in traces.groupby(["batch_size", "trace"], sort=False):
        group = group[~group["candidate"].str.startswith("vanilla")]
        fidelities = list(dict.fromkeys(group["fidelity"]))
        looks = []
        for fid in fidelities:
            sub = group[group["fidelity"] == fid].reset_index(drop=True)
            final = fid == fidelities[-1]
            for i, row in sub.iterrows():
                if final and i == 0:
                    continue
                base = {"batch_size": batch, "trace": trace, "fidelity": fid, "candidate": row["candidate"],
                        "win_rate": float(row["win_rate"])}
                if not final:
                    up = row["win_rate"] > gamma
                    looks.append({**base, "kind": "threshold", "decision": "upgrade" if up else "continue",
                                  "compared_to": gamma, "gap": float(row["win_rate"] - gamma)})
                else:
                    prev = float(sub.loc[i - 1, "win_rate"])
                    down = row["win_rate"] < prev
                    looks.append({**base, "kind": "decline", "decision": "stop" if down else "continue",
                                  "compared_to": prev, "gap": float(row["win_rate"] - prev)})
        k = len(looks)
        for look in looks:
            look["looks_in_trace"] = k
        rows.extend(looks)
    out = pd.DataFrame(rows)
    thr = out["kind"] == "threshold"
    n = n_validation
    out["radius_paper"] = np.where(thr, hoeffding_radius(n, delta), difference_radius(n, delta, tight=False))
    out["radius_hoeffding"] = np.where(thr, hoeffding_radius(n, delta, tight=True), difference_radius(n, delta))
    out["radius_union"] = [
        hoeffding_radius(n, delta / k_, tight=True) * (1 if is_thr else 2)
        for k_, is_thr in zip(out["looks_in_trace"], thr)]
    for col in ("paper", "hoeffding", "union"):
        out[f"supported_{col}"] = decision_supported(out["win_rate"], out["compared_to"], out[f"radius_{col}"])
    # exact binomial check: the paper's numbers are wins / total (Section 5), a binomial proportion whatever the
    # ties, so Clopper-Pearson on k = round(win_rate * n) wins is exact (k is approximate: the values are rounded)
    k = np.round(out["win_rate"].to_numpy() * n)
    low, high = interval_from_counts(k, 0, n - k, delta, "clopper_pearson")
    out["supported_exact"] = np.where(thr, (low > gamma) | (high < gamma), pd.NA)
    gap = out["gap"].abs().replace(0, np.nan)
    for col, tight in (("paper", False), ("hoeffding", True)):
        needed = [n_for_radius(g, delta, separable=not is_thr, tight=tight) if g == g else pd.NA
                  for g, is_thr in zip(gap, thr)]
        out[f"n_needed_{col}"] = pd.array(needed, dtype="Int64")
    # to get the decision supported with prob >= 1 - delta when the *true* gap is this size: 4x
    out["n_needed_true_gap"] = 4 * out["n_needed_hoeffding"]
    out["label"] = [f"B={b} trace {t}: {c} vs {f}" for b, t, c, f in
                    zip(out["batch_size"], out["trace"], out["candidate"], out["fidelity"])]
    out["low_paper"] = (out["win_rate"] - out["radius_paper"]).clip(0, 1)
    out["high_paper"] = (out["win_rate"] + out["radius_paper"]).clip(0, 1)
    return out


def summarize_decisions(decisions: pd.DataFrame) -> pd.DataFrame:
    """Per decision type: how many looks there were and how many each radius supports."""
    cols = [c for c in decisions if c.startswith("supported_")]
    frame = decisions.assign(**{c: decisions[c].astype("boolean") for c in cols})
    def count(x):  # NA where the check does not apply (exact test on declines)
        return int(x.sum()) if x.notna().any() else pd.NA

    out = frame.groupby(["kind", "decision"]).agg(looks=("win_rate", "size"), **{c: (c, count) for c in cols},
                                                  median_n_needed_paper=("n_needed_paper", "median"))
    return out.reset_index()


# ----------------------------------------------------------------------------------------------
# Comparisons over training seeds and prompts, verdicts, and the spend ratio
# ----------------------------------------------------------------------------------------------

def seed_prompt_interval(scores, delta: float = 0.05) -> dict:
    """Mean of a (seeds x prompts) table of per-prompt scores and a t-interval that covers both sources
    of variation.  NaN cells (failed judgements) are left out of their seed's and prompt's means.

    Why this interval: every seed is judged on the *same* test prompts (a crossed design), so the spread
    of the seed means shows training-seed variation but not which prompts happened to be in the test
    set.  With y_sp = mu + a_s + b_p + e_sp the grand mean has variance s_a^2/S + s_b^2/P + s_e^2/(SP);
    var(seed means)/S + var(prompt means)/P estimates that plus s_e^2/(SP) (slightly conservative).  The
    t quantile uses Welch-Satterthwaite degrees of freedom, so with few seeds and a dominant seed term it
    is as wide as a t-interval over seed means (df = S - 1).  A bootstrap over 3 seeds would have 10
    distinct resamples and under-cover.  With one seed it falls back to prompts only (df = P - 1)."""
    _check_delta(delta)
    y = np.atleast_2d(np.asarray(scores, dtype=float))
    if y.size == 0 or np.all(np.isnan(y)):
        raise ValueError("no valid scores to build an interval")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # an all-NaN prompt column
        seed_means = np.nanmean(y, axis=1)
        prompt_means = np.nanmean(y, axis=0)
    seed_means = seed_means[~np.isnan(seed_means)]
    prompt_means = prompt_means[~np.isnan(prompt_means)]
    S, P = seed_means.size, prompt_means.size
    mean = float(seed_means.mean())
    b = float(np.var(prompt_means, ddof=1)) / P if P >= 2 else 0.0
    if S >= 2:
        a = float(np.var(seed_means, ddof=1)) / S
        se = math.sqrt(a + b)
        denom = (a**2 / (S - 1) if S > 1 else 0.0) + (b**2 / (P - 1) if P > 1 else 0.0)
        df = (a + b) ** 2 / denom if denom > 0 else float(S - 1)
        method = "t over seeds and prompts (crossed)"
    else:
        a, se, df = math.nan, math.sqrt(b), float(max(P - 1, 1))
        method = "t over prompts (one seed)"
    half = float(stats.t.ppf(1 - delta / 2, df)) * se if se > 0 else 0.0
    return {"mean": mean, "low": max(0.0, mean - half), "high": min(1.0, mean + half), "se": se, "df": df,
            "seeds": S, "prompts": P, "seed_sd": float(np.std(seed_means, ddof=1)) if S >= 2 else math.nan,
            "seed_term": a, "prompt_term": b, "method": method}


VERDICTS = ("multi-fidelity better", "multi-fidelity worse", "inconclusive")
CLAIM_VERDICTS = ("reproduced", "reversed", "inconclusive")


def claim_verdict(low: float, high: float, direction: int = 1) -> str:
    """The verdict on a paper's claim that a difference is > 0 (``direction`` 1) or < 0 (-1), from its
    interval: "reproduced" when the interval excludes 0 on the claimed side, "reversed" on the other side,
    else (or without an interval) "inconclusive"."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    low, high = (low, high) if direction > 0 else (-high, -low)
    return "reproduced" if low > 0 else "reversed" if high < 0 else "inconclusive"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One claim verdict from several (metrics or models): all reproduced -> reproduced; some reversed and
    none reproduced -> reversed; anything else (mixed, or some inconclusive) -> inconclusive."""
    verdicts = list(verdicts)
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if "reversed" in verdicts and "reproduced" not in verdicts:
        return "reversed"
    return "inconclusive"


def verdict(low: float, high: float, null: float = 0.5) -> str:
    """"multi-fidelity better" when the whole interval lies above ``null``, "worse" below it, else
    "inconclusive" (the interval contains ``null``, or is missing)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > null:
        return VERDICTS[0]
    if high < null:
        return VERDICTS[1]
    return VERDICTS[2]


def first_reaching(spend: Sequence[float], values: Sequence[float], target: float) -> float:
    """The spend at the first point (in order) whose value reaches ``target`` (>=); inf when none does."""
    for s, v in zip(spend, values):
        if v >= target:
            return float(s)
    return math.inf


def ratio_summary(ratios: Sequence[float], delta: float = 0.05) -> dict:
    """Mean of per-seed ratios with a t-interval over seeds (df = seeds - 1).  A ratio of inf (target
    never reached) makes the mean and interval undefined (NaN); ``reached`` says how many seeds got there."""
    _check_delta(delta)
    r = np.asarray(ratios, dtype=float)
    finite = r[np.isfinite(r)]
    out = {"seeds": int(r.size), "reached": int(finite.size), "mean": math.nan, "low": math.nan,
           "high": math.nan, "median": float(np.median(r)) if r.size else math.nan,
           "min": float(r.min()) if r.size else math.nan, "max": float(r.max()) if r.size else math.nan}
    if r.size and finite.size == r.size:
        out["mean"] = float(finite.mean())
        if r.size >= 2:
            half = float(stats.t.ppf(1 - delta / 2, r.size - 1)) * float(np.std(finite, ddof=1)) / math.sqrt(r.size)
            out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out

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


# ----------------------------------------------------------------------------------------------
# Noisy judges
# ----------------------------------------------------------------------------------------------

def noisy_win_rate(p_win, p_tie, p_lose, flip_prob):
    """Expected WinFreq through a judge that swaps Win/Lose with probability p (ties unchanged):
    ``(1-p) w + p l + t/2``, which equals ``1/2 + (1-2p)(WinRate - 1/2)``: shrunk toward 1/2."""
    w, t, l, p = (np.asarray(a, dtype=float) for a in (p_win, p_tie, p_lose, flip_prob))
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"flip probability must be in [0, 1], got {flip_prob!r}")
    return _scalar_or_array((1 - p) * w + p * l + t / 2)


def debias_win_rate(observed, flip_prob):
    """Invert the shrinkage of ``noisy_win_rate``: ``1/2 + (observed - 1/2)/(1 - 2p)``; needs p < 1/2."""
    p = np.asarray(flip_prob, dtype=float)
    if np.any((p < 0) | (p >= 0.5)):
        raise ValueError(f"flip probability must be in [0, 0.5) to debias, got {flip_prob!r}")
    return _scalar_or_array(0.5 + (np.asarray(observed, dtype=float) - 0.5) / (1 - 2 * p))


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


# ----------------------------------------------------------------------------------------------
# Notebook 05 parameters
# ----------------------------------------------------------------------------------------------

Prob = Annotated[float, Field(gt=0, lt=1)]
UnitClosed = Annotated[float, Field(ge=0, le=1)]


class HoeffdingParams(Params):
    """Parameters of notebooks/05_hoeffding_bounds.ipynb."""

    profile: str
    seed: int = Field(ge=0)
    deltas: list[Prob] = Field(min_length=1)
    delta: Prob
    n_max: int = Field(ge=10)
    n_reps: int = Field(ge=1)
    coverage_ns: list[Annotated[int, Field(ge=2)]] = Field(min_length=1)
    true_win_rates: list[Prob] = Field(min_length=1)
    tie_rates: list[Annotated[float, Field(ge=0, lt=1)]] = Field(min_length=1)
    gamma: float = Field(gt=0, lt=1)
    batch_size: int = Field(ge=1)
    n_batches: int = Field(ge=1)
    n_validation: int = Field(ge=1)
    flip_probs: list[Annotated[float, Field(ge=0, lt=0.5)]] = Field(min_length=1)
    noise_n: int = Field(ge=1)
    t5_alphas: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    t5_beta: float = Field(gt=0)
    t5_batches: list[Annotated[float, Field(ge=0)]] = Field(min_length=1)
    t5_n_fidelities: int = Field(ge=1)
    t5_cost_ratios: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    t5_step_winrates: list[Annotated[float, Field(gt=0, lt=1)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _reachable(self):
        for mu in self.true_win_rates:
            for tie in self.tie_rates:
                if mu - tie / 2 < 0 or 1 - mu - tie / 2 < 0:
                    raise ValueError(f"true win rate {mu} is not reachable with tie rate {tie}")
        return self
