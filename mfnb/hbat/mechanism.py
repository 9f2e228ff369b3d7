"""Does HbAT's importance weighting matter? HbAT beside the same penalty with other weights over its tensors.

The modified EWC weights each tensor by F_i = fmax * softmax_i(C_i) (Eqs. 6-7). Under Adam every element moves by
about the learning rate, so the C_i differ little and the softmax is close to uniform: the penalty may then act as
a plain L2 anchor whose strength is lambda * fmax / #tensors, and the weighting itself changes nothing. Two
controls, each HbAT with only the weights changed (:data:`mfnb.hbat.config.METHODS`):

* ``HbAT w/ uniform anchor``: F_i = fmax / #tensors for every tensor (the same total weight);
* ``HbAT w/ released importance``: the authors' released code's F_i (summed changes, x 1e10 before the softmax),
  which puts nearly all of fmax on the tensor that moved most.

:func:`mechanism_table` pairs HbAT with each control on every measured metric (t-interval over seeds; with one
seed, over test prompts where the records keep per-prompt scores); :func:`importance_spread` says how uniform
HbAT's own weights were; :func:`mechanism_lines` states what the two say together.
"""
from __future__ import annotations

import math
from typing import Sequence

from mfnb.core.formatting import fmt
from mfnb.hbat.claims import METRIC_NAMES, paired
from mfnb.hbat.report import METRICS, effective_tensors, known, prompt_paired, unknown_text
from mfnb.stats import difference_text, interval_reading

HBAT = "HbAT"
CONTROLS = ("HbAT w/ uniform anchor", "HbAT w/ released importance")
COLUMNS = ("control", "metric", "difference", "low", "high", "n", "over", "reading")


def mechanism_table(runs, records: Sequence[dict] = (), metrics: Sequence[str] = METRICS):
    """HbAT minus each control present in ``runs`` (Table 4's runs: one row per method and seed), per metric."""
    import pandas as pd

    present = set(runs["method"])
    rows = []
    for control in (c for c in CONTROLS if c in present and HBAT in present):
        for m in metrics:
            if not known(runs, m):
                rows.append({"control": control, "metric": m, "difference": math.nan, "low": math.nan,
                             "high": math.nan, "n": 0, "over": "", "reading": unknown_text(m)})
                continue
            mean, low, high, n = paired(runs, HBAT, control, m)
            over = "seeds"
            if n < 2:
                by_prompt = prompt_paired(runs, records, HBAT, control, m)
                if by_prompt is not None:
                    mean, _, low, high, n = by_prompt
                    over = "test prompts"
            rows.append({"control": control, "metric": m, "difference": mean, "low": low, "high": high, "n": n,
                         "over": over, "reading": interval_reading(low, high)})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def importance_spread(records: Sequence[dict], method: str = HBAT, keys=None) -> dict:
    """How uniform ``method``'s weights were: over its runs' penalised stages (only the runs whose key is in
    ``keys`` when given: Table 4's, not the Figure 2 grid's other F_max), the largest and smallest F_i, the largest
    ratio of the two within a stage, and how many tensors the weights effectively cover (exp of their entropy)."""
    weights = [i["F"] for r in records if r.get("label") == method and (keys is None or r.get("key") in keys)
               for i in r.get("importance", []) if i.get("F")]
    if not weights:
        return {}
    ratios = [max(w.values()) / min(w.values()) if min(w.values()) > 0 else math.inf for w in weights]
    return {"stages": len(weights), "tensors": len(weights[0]), "max_over_min": max(ratios),
            "effective_tensors": min(effective_tensors(w.values()) for w in weights),
            "largest": max(max(w.values()) for w in weights), "smallest": min(min(w.values()) for w in weights)}


def mechanism_lines(table, spread: dict) -> list[str]:
    """What the controls say about the weighting, in plain sentences from the table and the spread."""
    lines = []
    if spread:
        lines.append(f"- **HbAT's own weights:** over {spread['stages']} penalised stages, F_i ran from "
                     f"{fmt(spread['smallest'])} to {fmt(spread['largest'])} (largest / smallest "
                     f"{fmt(spread['max_over_min'], 4)}); they cover {fmt(spread['effective_tensors'], 1)} of "
                     f"{spread['tensors']} tensors effectively (exp of their entropy; all of them when uniform).")
    if not len(table):
        return lines + ["- **Does the weighting matter?** Not measured: add `HbAT w/ uniform anchor` (and `HbAT w/ "
                        "released importance`) to `methods`."]
    for control, group in table.groupby("control", sort=False):
        measured = group[group["n"] > 0]
        parts = [f"{METRIC_NAMES[r.metric]} {difference_text(r.difference, r.low, r.high)} ({r.reading})"
                 for r in measured.itertuples()]
        over = ", ".join(sorted(set(measured["over"]))) or "nothing"
        differs = measured[measured["reading"].isin(["higher", "lower"])]
        identical = len(measured) and (measured[["difference", "low", "high"]] == 0).all().all()
        said = ("identical on every score: the two trained the same model as far as these scores see"
                if identical else
                "no measured difference: within these intervals the weighting changes nothing"
                if len(measured) and not len(differs) else
                "differs on " + ", ".join(METRIC_NAMES[m] for m in differs["metric"]) if len(differs) else
                "nothing measured")
        lines.append(f"- **HbAT minus {control}** (paired over {over}): " + "; ".join(parts) + f": {said}.")
    return lines
