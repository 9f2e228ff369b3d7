"""The cost ledger of multi-fidelity runs.

Every expert response, student response and judgement is a ledger row with its fidelity and unit cost.
The paper's Lambda = sum_t n_t lambda^(m_t) is the cost of the expert responses bought for training;
student, judge and evaluation costs are separate columns, never inside Lambda.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

LEDGER_COLUMNS = ["run", "t", "phase", "fidelity", "payer", "role", "n", "unit_cost", "cost"]
PHASES = ("train", "evaluation", "test", "analysis")


def ledger_row(run: str, t: int, phase: str, fidelity: int | None, payer: str, role: str, n: int,
               unit_cost: float) -> dict:
    """One purchase: ``n`` responses (payer expert/student) or judgements (payer judge) at ``unit_cost``."""
    if phase not in PHASES:
        raise ValueError(f"ledger phase must be one of {PHASES}, got {phase!r}")
    if payer not in ("expert", "student", "judge"):
        raise ValueError(f"ledger payer must be expert, student or judge, got {payer!r}")
    return {"run": run, "t": int(t), "phase": phase, "fidelity": fidelity, "payer": payer, "role": role,
            "n": int(n), "unit_cost": float(unit_cost), "cost": float(n) * float(unit_cost)}


def ledger_frame(rows: Sequence[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=LEDGER_COLUMNS)
    frame["fidelity"] = frame["fidelity"].astype("Int64")
    return frame


def paper_lambda(rows: Sequence[dict] | pd.DataFrame, through_fidelity: int | None = None) -> float:
    """The paper's Lambda = sum_t n_t lambda^(m_t): expert responses bought for training, optionally
    only those of fidelities <= ``through_fidelity``."""
    frame = rows if isinstance(rows, pd.DataFrame) else ledger_frame(rows)
    sel = (frame["phase"] == "train") & (frame["payer"] == "expert")
    if through_fidelity is not None:
        sel &= frame["fidelity"].fillna(0) <= through_fidelity
    return float(frame.loc[sel, "cost"].sum())


def ledger_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run and fidelity: responses/judgements and their cost by payer; Lambda is ``expert_train_cost``."""
    out = []
    for (run, fid), sub in frame.groupby(["run", frame["fidelity"].fillna(0)], sort=False):
        row = {"run": run, "fidelity": int(fid) if fid else pd.NA}
        for phase in ("train", "evaluation"):
            for payer in ("expert", "student", "judge"):
                s = sub[(sub["phase"] == phase) & (sub["payer"] == payer)]
                row[f"{payer}_{phase}_n"] = int(s["n"].sum())
                row[f"{payer}_{phase}_cost"] = float(s["cost"].sum())
        out.append(row)
    summary = pd.DataFrame(out)
    return summary.rename(columns={"expert_train_cost": "Lambda (expert_train_cost)"})
