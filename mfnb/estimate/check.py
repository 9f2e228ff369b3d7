"""The estimate at rehearsal sizes against what the rehearsal counted (``make rehearse`` runs it after the
notebooks, so a count the estimate gets wrong fails the rehearsal).

Compared, per notebook that ran:

* training launches (``<cache>/launch/launches.jsonl``, one per SFT / DPO step under ``accelerate launch``)
  against the estimate's training runs: equal (where the notebook launched nothing, it trained in its own
  process and the row says so);
* judge requests (the rehearsal's endpoint counts the different conversations it was sent: a request sent
  again after a timeout, or a failed verdict asked again, repeats one) against the estimate's: at most the
  estimate, which assumes a cold cache and different answers from different models; the stand-ins' identical
  answers make repeated pairs that the judge cache answers, so fewer is expected, more is a miscount;
* notebook 03's DPO pairs and optimizer steps (``03_dpo_runs.csv``) against the estimate's: equal; its Table 2
  extrapolations (``03_table2_alpha_search.csv``: each pair's nonzero alphas, and its chosen alpha again for the
  test prompts) against the estimate's: equal;
* notebook 02's trained pairs and DPO iterations (``02_iterations.csv``): equal (the estimate scales the
  rehearsal's own ledger to the same sizes, so this checks the scaling's identity).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd


def _row(notebook: str, quantity: str, estimated: float, measured: float, relation: str, note: str = "") -> dict:
    ok = measured == estimated if relation == "=" else measured <= estimated
    return {"notebook": notebook, "quantity": quantity, "estimated": estimated, "measured": measured,
            "relation": relation, "ok": bool(ok), "note": note}


def compare(items: pd.DataFrame, summary: pd.DataFrame, tables: Path) -> pd.DataFrame:
    """One row per compared quantity: the estimate's value, the rehearsal's, the relation that must hold
    (``=`` or ``<=``: measured at most estimated) and whether it does. ``items``: :func:`mfnb.estimate.count`'s
    table; ``summary``: the rehearsal's summary (``judge_requests``, ``training_launches`` per notebook);
    ``tables``: the rehearsal's result tables."""
    rows = []
    per = items.groupby("notebook")
    for s in summary.itertuples():
        if s.notebook not in per.groups or s.status != "ok":
            continue
        got = per.get_group(s.notebook)
        runs = int(got["training_runs"].sum())
        if s.training_launches or not runs:
            rows.append(_row(s.notebook, "training launches", runs, int(s.training_launches), "="))
        else:
            rows.append({**_row(s.notebook, "training launches", runs, runs, "="),
                         "measured": 0, "note": "trained in the notebook's process (no launches to count)"})
        distinct = int(getattr(s, "judge_distinct", s.judge_requests))
        rows.append(_row(s.notebook, "judge requests (distinct)", int(got["judge_requests"].sum()), distinct, "<=",
                         f"{int(s.judge_requests)} sent; the judge cache answers repeated pairs"))
        if s.notebook == "03_expo_alpha_curves" and (tables / "03_dpo_runs.csv").is_file():
            runs_table = pd.read_csv(tables / "03_dpo_runs.csv")
            adapters = got[got["item"].str.startswith("DPO adapters (data fractions")]
            rows.append(_row(s.notebook, "DPO pairs (fractions and controls)", int(adapters["train_rows"].sum()),
                             int(runs_table["pairs"].sum()), "="))
            rows.append(_row(s.notebook, "DPO optimizer steps (fractions and controls)",
                             int(adapters["optimizer_steps"].sum()), int(runs_table["steps"].sum()), "="))
        if s.notebook == "03_expo_alpha_curves" and (tables / "03_table2_alpha_search.csv").is_file():
            search = pd.read_csv(tables / "03_table2_alpha_search.csv")
            # every nonzero alpha of a pair's range extrapolated for the search, and its chosen one again for the test
            measured = int((search["alpha"] != 0).sum()) + int(search["model"].nunique())
            rows.append(_row(s.notebook, "Table 2 extrapolations (folders written)",
                             int(got["extrapolations"].sum()) if "extrapolations" in got else 0, measured, "="))
        if s.notebook == "02_multifidelity_traces" and (tables / "02_iterations.csv").is_file():
            its = pd.read_csv(tables / "02_iterations.csv")
            dpo = got[got["train_kind"] == "dpo"]
            rows.append(_row(s.notebook, "DPO iterations", int(dpo["training_runs"].sum()), len(its), "="))
            rows.append(_row(s.notebook, "DPO pairs trained", int(dpo["train_rows"].sum()), int(its["D_size"].sum()),
                             "="))
    return pd.DataFrame(rows, columns=["notebook", "quantity", "estimated", "measured", "relation", "ok", "note"])


def failures(table: pd.DataFrame) -> Mapping[str, str]:
    """Notebook -> one line naming every quantity where the estimate and the rehearsal disagree."""
    out: dict[str, list[str]] = {}
    for r in table[~table["ok"]].itertuples():
        out.setdefault(r.notebook, []).append(f"{r.quantity}: estimated {r.estimated:g}, rehearsal {r.measured:g} "
                                              f"(must be {'equal' if r.relation == '=' else 'at most the estimate'})")
    return {k: "estimate disagrees: " + "; ".join(v) for k, v in out.items()}
