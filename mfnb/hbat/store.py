"""HbAT's stage store: each stage's weights and record saved atomically under a key chained from everything
that produced it, so a killed run resumes from its last completed stage with the same anchors and
importances, and methods that share a prefix of stages (two-stage DPO and "w/o alternating" share the SFT
stage) share it.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mfnb.core.atomic import atomic_dir, write_json
from mfnb.hbat.config import HbatParams

STORE_VERSION = 1


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    index: int
    kind: str
    part: int
    key: str
    rows: int
    constraint: str                          # "none", "ewc" or "freeze" (as applied in this stage)
    importance_used: dict[str, float]        # F of the other objective (empty when unconstrained)
    constrained_tensors: list[str]           # penalised or frozen tensors
    change_sums: dict[str, list]             # tensor -> [sum of squared changes, numel] over this stage
    train_seconds: float
    train_metrics: dict[str, Any]
    validation: dict[str, Any] = field(default_factory=dict)
    eval_key: str | None = None
    reused: bool = False
    importance_seconds: float = 0.0          # the original EWC's Fisher estimation after this stage
    cpu_seconds: float = math.nan            # CPU seconds of the training (NaN in records written before)
    importance_cpu_seconds: float = 0.0
    penalty_bytes: int = 0                   # the penalty's anchors and coefficients in this stage
    importance_bytes: int = 0                # importances kept after this stage for later ones

    def changes(self, reduce: str) -> dict[str, float]:
        return {k: (s / n if reduce == "mean" else s) for k, (s, n) in self.change_sums.items()}


def stage_key(prev: str, kind: str, part: int, rows: Sequence[Mapping], params: HbatParams, seed: int,
               constraint: str) -> str:
    spec = {"v": STORE_VERSION, "prev": prev, "kind": kind, "part": part, "data": digest(list(rows)),
            "train": (params.sft if kind == "sft" else params.dpo).model_dump(), "seed": seed,
            "constraint": constraint}
    if constraint != "none":
        e = params.ewc
        spec["ewc"] = {"reduce": e.reduce, "change_scale": e.change_scale, "accumulate": e.accumulate,
                       "fmax": e.fmax, **({"lam": e.lam, "lam_placement": e.lam_placement, "min_fraction": e.min_fraction}
                                          if constraint == "ewc" else {"freeze_fraction": e.freeze_fraction})}
        if constraint == "ewc" and e.importance == "uniform":  # every tensor fmax / #tensors: no changes read
            spec["ewc"] = {"importance": e.importance, "fmax": e.fmax, "lam": e.lam, "lam_placement": e.lam_placement,
                           "min_fraction": e.min_fraction}
        elif constraint == "ewc" and e.importance != "changes":  # (absent for the default: older keys stay valid)
            spec["ewc"] = {"importance": e.importance, "fisher_scale": e.fisher_scale, "lam": e.lam,
                           "lam_placement": e.lam_placement, "accumulate": e.accumulate,
                           **({"fmax": e.fmax} if e.fisher_scale == "fmax" else {})}
    return digest(spec)


def save_stage(folder: Path, model, record: StageRecord) -> None:
    from safetensors.torch import save_file

    state = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / "state.safetensors"))
        write_json(tmp / "meta.json", record.__dict__)


def load_stage(folder: Path, model) -> StageRecord | None:
    """The stored stage, loaded into ``model``; None when it is missing or incomplete."""
    from safetensors.torch import load_file

    meta, weights = folder / "meta.json", folder / "state.safetensors"
    if not (meta.is_file() and weights.is_file()):
        return None
    state = load_file(str(weights))
    params = dict(model.named_parameters())
    if set(state) != {n for n, p in params.items() if p.requires_grad}:
        return None
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    return StageRecord(**json.loads(meta.read_text()))


FISHER_FILE = "fisher.safetensors"


def save_fisher(folder: Path, fisher: Mapping[str, torch.Tensor]) -> None:
    """The original EWC's Fisher of a stored stage, written atomically beside its weights."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FISHER_FILE}.tmp"
    save_file({k: v.contiguous().cpu() for k, v in fisher.items()}, str(tmp))
    tmp.replace(folder / FISHER_FILE)


def load_fisher(folder: Path | None) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = folder / FISHER_FILE if folder is not None else None
    return load_file(str(path)) if path is not None and path.is_file() else None


def clean_store(store: str | Path) -> int:
    """Delete stored stage weights and Fisher estimates (meta.json stays); returns the number of files removed."""
    removed = 0
    for pattern in ("stages/*/state.safetensors", f"stages/*/{FISHER_FILE}"):
        for path in Path(store).glob(pattern):
            path.unlink()
            removed += 1
    return removed
