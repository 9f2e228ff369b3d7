"""How many judgements a decision needs, and whether the decisions a trace took were supported by their intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mfnb.stats.checks import check_delta, scalar_or_array
from mfnb.stats.winrate import difference_radius, hoeffding_radius, interval_from_counts

# ----------------------------------------------------------------------------------------------
# Sample sizes and decisions
# ----------------------------------------------------------------------------------------------

def n_for_radius(radius, delta: float, separable: bool = False, *, tight: bool = False):
    """Smallest n with ``hoeffding_radius(n, delta, ...) <= radius`` (same constants)."""
    r = np.asarray(radius, dtype=float)
    if np.any(~(r > 0)):
        raise ValueError(f"radius must be > 0, got {radius!r}")
    check_delta(delta)
    span = 2.0 if separable else 1.0
    n = span**2 * np.log(2.0 / delta) / (r**2 * (2.0 if tight else 1.0))
    # guard against n landing a hair above an integer through rounding
    return scalar_or_array(np.ceil(n - 1e-9).astype(int))


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
    return scalar_or_array(np.abs(w - thr) > r)


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
    check_delta(delta)
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
