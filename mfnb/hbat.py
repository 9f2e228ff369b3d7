"""Hybrid Alignment Training (HbAT; Wang et al. 2024): alternating SFT/DPO stages with a modified EWC.

Algorithm 1. Split the SFT data and the preference data into N disjoint parts. SFT on part 1 (plain
loss); then for n = 1..N: (n > 1) SFT on part n with the EWC penalty of the DPO importances, anchored at
the parameters after the last DPO stage (Eq. 8); DPO on part n with the penalty of the SFT importances,
anchored at the parameters after the last SFT stage (Eq. 5). The best checkpoint on validation is kept.

Modified EWC (Eqs. 6, 7, 9, 10). One importance per parameter *tensor*:
``C_i = mean_j (theta_after_ij - theta_before_ij)^2`` over a stage, accumulated over the earlier stages
of the same objective (``AC_i = sum_k C_i,k``), and ``F_i = fmax * softmax_i(AC_i)``. The penalty is
``sum_i (lambda / 2) F_i ||theta_i - theta*_i||^2``.

Where our defaults and the authors' released code differ (as it was described to us; we have not read
or copied that code) -- each is a field of :class:`EWCParams`, and ``EWCParams.released_code()`` selects
all three at once:

* ``reduce``: the code *sums* the squared changes over a tensor's elements; Eq. 7 averages (default).
* ``change_scale``: the code multiplies the changes by 1e10 before the softmax; Eq. 6 does not (default 1).
  With realistic changes (mean squares of 1e-10..1e-4) the unscaled softmax is practically uniform,
  F_i ~ fmax / #tensors, i.e. a plain L2 anchor; with the 1e10 scale it is practically an argmax, all
  of fmax on the single most-changed tensor. Neither is what Eq. 6 suggests; we report both.
* ``lam_placement``: the code puts lambda inside the square, ``(F_i / 2) ||lambda (theta_i - theta*_i)||^2``,
  i.e. lambda^2 where Eq. 5 has lambda. Identical at the paper's lambda = 1.

The penalty is added to TRL's own losses (:class:`EWCSFTTrainer`, :class:`EWCDPOTrainer` override
``compute_loss``), computed with fused ``torch._foreach_*`` kernels over only the tensors whose F_i is
not negligible, with a hand-written backward (no autograd graph over thousands of small ops).
HbAT-Freeze freezes the top ``freeze_fraction`` most important tensors instead.

Works on a LoRA model (importance over the adapter tensors) and on full fine-tuning; tensor names are
compared without peft's ``base_model.model.`` prefix and ``.base_layer`` segment. Each stage's weights
and importances are stored atomically under a key chained from everything that produced it, so a
killed run resumes from its last completed stage with the same anchors and importances, and methods
that share a prefix of stages (two-stage DPO and "w/o alternating" share the SFT stage) share it.
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from pydantic import Field

from mfnb.atomic import atomic_dir, write_json
from mfnb.dpo import DPOParams
from mfnb.params import Params

STORE_VERSION = 1
OBJECTIVES = ("sft", "dpo")


class HbatError(ValueError):
    """Bad HbAT input; the message names the field."""


# --------------------------------------------------------------------------------------------------
# Parameters


class EWCParams(Params):
    """The modified EWC. Defaults follow the paper's equations; see the module docstring for the code's."""

    lam: float = Field(default=1.0, ge=0)          # lambda, Eqs. 5 and 8 (paper: 1)
    fmax: float = Field(default=100.0, gt=0)       # F_max, Eq. 6 (paper: 100 dialogue, 50 summarization)
    reduce: Literal["mean", "sum"] = "mean"        # Eq. 7: mean over a tensor's elements (code: sum)
    change_scale: float = Field(default=1.0, gt=0)  # multiplies AC before the softmax (code: 1e10)
    lam_placement: Literal["outside", "inside"] = "outside"  # (lam/2) F ||d||^2 vs (F/2) ||lam d||^2
    accumulate: bool = True                        # Eq. 10: AC = sum of C over the objective's stages
    min_fraction: float = Field(default=1e-6, ge=0, lt=1)     # skip tensors with F_i < min_fraction * fmax
    freeze_fraction: float = Field(default=0.2, gt=0, le=1)   # HbAT-Freeze: top 20% of tensors (paper)

    @classmethod
    def released_code(cls, **overrides) -> "EWCParams":
        """The variant of the authors' released code: summed changes, x1e10 before softmax, lambda inside."""
        values = dict(reduce="sum", change_scale=1e10, lam_placement="inside")
        values.update(overrides)
        return cls.validate_mapping(values, source="EWCParams.released_code")

    def coefficient(self, importance: float) -> float:
        """Per-tensor weight c_i of the penalty 1/2 sum_i c_i ||theta_i - theta*_i||^2."""
        lam = self.lam if self.lam_placement == "outside" else self.lam ** 2
        return lam * importance


class SFTStageParams(Params):
    """One SFT stage (paper: lr 1e-5, batch 64, 3 epochs)."""

    lr: float = Field(default=1e-5, gt=0)
    batch_size: int = Field(default=64, ge=1)
    epochs: float = Field(default=3.0, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=512, ge=8)


def _paper_dpo() -> DPOParams:
    # paper Appendix A: batch 64, lr 1e-6, 2 epochs; the reference is the policy at the stage's start
    return DPOParams(lr=1e-6, batch_size=64, epochs=2.0, reference="previous")


class HbatParams(Params):
    """One HbAT-family run. The Table 4 methods are presets of it (:data:`METHODS`)."""

    n_splits: int = Field(default=2, ge=1)         # N (paper: 2 for dialogue in Sec. 5.2; 10 in App. A)
    preference: bool = True                        # False: SFT only (the SFT baseline)
    constraint: Literal["ewc", "freeze", "none"] = "ewc"
    ewc: EWCParams = EWCParams()
    sft: SFTStageParams = SFTStageParams()
    dpo: DPOParams = Field(default_factory=_paper_dpo)
    select_by: Literal["reward", "win_rate", "quality", "last"] = "reward"   # paper: best Reward
    select_over: Literal["dpo", "all"] = "dpo"     # which stage checkpoints are candidates


# Table 4 (plus HbAT-Freeze of Table 1) as changes to one HbatParams.
METHODS: dict[str, dict[str, Any]] = {
    "SFT": dict(preference=False, n_splits=1, constraint="none", select_over="all"),
    "DPO": dict(n_splits=1, constraint="none"),
    "HbAT": {},
    "w/o EWC": dict(constraint="none"),
    "w/o alternating": dict(n_splits=1),
    "HbAT-Freeze": dict(constraint="freeze"),
}


def for_method(params: HbatParams, method: str) -> HbatParams:
    """``params`` turned into one of the Table 4 methods (see :data:`METHODS`)."""
    if method not in METHODS:
        raise HbatError(f"method: unknown method {method!r}; known: {list(METHODS)}")
    return HbatParams.validate_mapping({**params.model_dump(), **METHODS[method]}, source=f"method {method!r}")


# --------------------------------------------------------------------------------------------------
# Importance (Eqs. 6, 7, 9, 10)


def canonical_name(name: str) -> str:
    """A tensor's name without peft's wrapping, so the same weight matches with and without LoRA."""
    for prefix in ("base_model.model.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer.", ".")


def trainable_tensors(model) -> dict[str, torch.Tensor]:
    """Canonical name -> parameter, for the parameters that train (adapter tensors under LoRA)."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = canonical_name(name)
            if key in out:
                raise HbatError(f"two trainable tensors share the canonical name {key!r}")
            out[key] = param
    return out


def snapshot(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tensors.items()}


def _squared_change_sums(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> dict[str, tuple[float, int]]:
    """Per tensor: (sum of squared element changes, number of elements); names compared canonically."""
    b = {canonical_name(k): v for k, v in before.items()}
    a = {canonical_name(k): v for k, v in after.items()}
    if set(a) != set(b):
        missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        raise HbatError(f"before/after name different tensors: only before {missing[:5]}, only after {extra[:5]}")
    names = sorted(b)
    for k in names:
        if a[k].shape != b[k].shape:
            raise HbatError(f"tensor {k!r}: shape {tuple(b[k].shape)} before but {tuple(a[k].shape)} after")
    diffs = torch._foreach_sub([a[k].detach().float() for k in names], [b[k].detach().float() for k in names])
    norms = torch._foreach_norm(diffs, 2, dtype=torch.float64) if diffs else []
    return {k: (float(n) ** 2, b[k].numel()) for k, n in zip(names, norms)}


def tensor_changes(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                   reduce: str = "mean") -> dict[str, float]:
    """Eq. 7: C_i = mean over tensor i's elements of (after - before)^2 (``reduce="sum"``: the sum)."""
    if reduce not in ("mean", "sum"):
        raise HbatError(f"reduce: expected 'mean' or 'sum', got {reduce!r}")
    sums = _squared_change_sums(before, after)
    return {k: (s / n if reduce == "mean" else s) for k, (s, n) in sums.items()}


def importance_from_changes(changes: Mapping[str, float], fmax: float, change_scale: float = 1.0) -> dict[str, float]:
    """Eqs. 6/9: F_i = fmax * softmax_i(change_scale * C_i) (computed stably in float64)."""
    if not (isinstance(fmax, (int, float)) and fmax > 0):
        raise HbatError(f"fmax: must be > 0, got {fmax!r}")
    if not changes:
        return {}
    names = list(changes)
    logits = torch.tensor([float(changes[k]) for k in names], dtype=torch.float64) * float(change_scale)
    weights = torch.softmax(logits, dim=0) * float(fmax)
    return dict(zip(names, weights.tolist()))


def tensor_importance(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor], fmax: float, *,
                      reduce: str = "mean", change_scale: float = 1.0) -> dict[str, float]:
    """F_i for every tensor from its change over one stage (Eqs. 6-7); sums to ``fmax``."""
    return importance_from_changes(tensor_changes(before, after, reduce), fmax, change_scale)


def accumulate_changes(total: Mapping[str, float] | None, changes: Mapping[str, float]) -> dict[str, float]:
    """Eq. 10: AC_i = sum over the objective's stages so far of C_i."""
    out = dict(total or {})
    for k, v in changes.items():
        out[k] = out.get(k, 0.0) + float(v)
    return out


def top_fraction(importance: Mapping[str, float], fraction: float) -> list[str]:
    """The ceil(fraction * #tensors) most important tensors (HbAT-Freeze), most important first."""
    if not 0 < fraction <= 1:
        raise HbatError(f"freeze_fraction: must be in (0, 1], got {fraction!r}")
    ranked = sorted(importance, key=lambda k: (-importance[k], k))
    return ranked[: math.ceil(fraction * len(ranked))] if ranked else []


# --------------------------------------------------------------------------------------------------
# The penalty (Eqs. 5 and 8)


class _FusedPenalty(torch.autograd.Function):
    """1/2 sum_i c_i ||p_i - a_i||^2 with foreach kernels; backward recomputes the differences."""

    @staticmethod
    def forward(ctx, penalty: "EWCPenalty", *params):
        diffs = torch._foreach_sub(params, penalty.anchors)
        norms = torch.stack([n.float() for n in torch._foreach_norm(diffs)])
        ctx.penalty = penalty
        ctx.save_for_backward(*params)
        return 0.5 * torch.dot(penalty.coef_tensor.to(norms.device), norms * norms)

    @staticmethod
    def backward(ctx, grad_output):
        params = ctx.saved_tensors
        grads = torch._foreach_sub(params, ctx.penalty.anchors)
        torch._foreach_mul_(grads, ctx.penalty.coefs)
        torch._foreach_mul_(grads, grad_output.to(params[0].dtype))
        return (None, *grads)


class EWCPenalty:
    """sum_i (lambda/2) F_i ||theta_i - theta*_i||^2, anchored at the parameters when it is built."""

    def __init__(self, params: Sequence[torch.Tensor], coefs: Sequence[float], names: Sequence[str] = ()):
        if len(params) != len(coefs):
            raise HbatError(f"{len(params)} tensors but {len(coefs)} coefficients")
        self.params = list(params)
        self.names = list(names)
        self.coefs = [float(c) for c in coefs]
        self.anchors = [p.detach().clone() for p in self.params]
        device = self.params[0].device if self.params else "cpu"
        self.coef_tensor = torch.tensor(self.coefs, dtype=torch.float32, device=device)

    @classmethod
    def from_model(cls, model, importance: Mapping[str, float], ewc: EWCParams) -> "EWCPenalty":
        """The penalty over ``model``'s trainable tensors with non-negligible importance."""
        tensors = trainable_tensors(model)
        threshold = ewc.min_fraction * ewc.fmax
        names = [k for k in tensors if importance.get(k, 0.0) > threshold and ewc.coefficient(importance[k]) > 0]
        return cls([tensors[k] for k in names], [ewc.coefficient(importance[k]) for k in names], names)

    @property
    def anchor_bytes(self) -> int:
        return sum(a.numel() * a.element_size() for a in self.anchors)

    def __len__(self) -> int:
        return len(self.params)

    def __call__(self) -> torch.Tensor:
        if not self.params:
            return torch.zeros(())
        return _FusedPenalty.apply(self, *self.params)

    def reference_value(self) -> torch.Tensor:
        """The same penalty with plain autograd (for tests)."""
        total = torch.zeros(())
        for p, a, c in zip(self.params, self.anchors, self.coefs):
            total = total + 0.5 * c * (p - a).pow(2).sum()
        return total


class _EWCLossMixin:
    """Adds ``self.ewc()`` to TRL's training loss, once per optimizer step under gradient accumulation."""

    ewc: EWCPenalty | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self.ewc is None or len(self.ewc) == 0 or not model.training:
            return out
        loss, rest = (out[0], out[1:]) if return_outputs else (out, ())
        penalty = self.ewc() * self._penalty_scale(num_items_in_batch)
        metrics = getattr(self, "_metrics", None)
        if metrics is not None and self.state.global_step % max(int(self.args.logging_steps), 1) == 0:
            metrics["train"]["ewc_penalty"].append(float(penalty.detach()))
        loss = loss + penalty.to(loss.device, loss.dtype)
        return (loss, *rest) if return_outputs else loss

    def _penalty_scale(self, num_items_in_batch) -> float:
        steps = max(int(getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps), 1)
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) \
                or getattr(self, "compute_loss_func", None) is not None
        # the Trainer divides an unscaled micro-batch loss by the accumulation steps itself
        return 1.0 / steps if scaled else 1.0


_TRAINERS: dict[str, type] = {}


def ewc_trainer_class(kind: str) -> type:
    """TRL's SFTTrainer (``"sft"``) or DPOTrainer (``"dpo"``) with the EWC penalty; pass ``ewc=`` to it."""
    if kind not in _TRAINERS:
        from trl import DPOTrainer, SFTTrainer

        base = {"sft": SFTTrainer, "dpo": DPOTrainer}.get(kind)
        if base is None:
            raise HbatError(f"kind: expected 'sft' or 'dpo', got {kind!r}")

        def __init__(self, *args, ewc: EWCPenalty | None = None, **kwargs):
            base.__init__(self, *args, **kwargs)
            self.ewc = ewc

        name = f"EWC{base.__name__}"
        _TRAINERS[kind] = type(name, (_EWCLossMixin, base), {"__init__": __init__, "__module__": __name__,
                                                            "__doc__": f"{base.__name__} + the HbAT EWC penalty."})
    return _TRAINERS[kind]


def __getattr__(name: str):
    if name == "EWCSFTTrainer":
        return ewc_trainer_class("sft")
    if name == "EWCDPOTrainer":
        return ewc_trainer_class("dpo")
    raise AttributeError(name)


# --------------------------------------------------------------------------------------------------
# Data: checks and splits


def _prompt_kind(prompt: Any) -> str:
    if isinstance(prompt, str):
        return "plain text"
    if isinstance(prompt, list) and all(isinstance(m, Mapping) and "role" in m for m in prompt):
        return "conversational (a list of messages)"
    return type(prompt).__name__


def _template(texts: Sequence[str], suffix: bool) -> str | None:
    """The words every text starts (or ends) with; None for fewer than two texts."""
    if len(texts) < 2:
        return None
    words = [t.split()[::-1] if suffix else t.split() for t in texts]
    common = []
    for column in zip(*words):
        if any(w != column[0] for w in column):
            break
        common.append(column[0])
    return " ".join(common[::-1] if suffix else common)


def check_inputs(sft_rows: Sequence[Mapping], preference_rows: Sequence[Mapping], n_splits: int) -> None:
    """Clear errors for empty or malformed data, mismatched prompt formats, and a bad N."""
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise HbatError(f"n_splits: N must be an integer >= 1, got {n_splits!r}")
    for what, rows, needed in (("sft_rows", sft_rows, ("prompt", "completion")),
                               ("preference_rows", preference_rows, ("prompt", "chosen", "rejected"))):
        if len(rows) == 0:
            raise HbatError(f"{what}: empty")
        for i, row in enumerate(rows):
            missing = [k for k in needed if k not in row]
            if missing:
                raise HbatError(f"{what}[{i}]: missing field(s) {missing}; expected {list(needed)}")
    smaller = min(("sft_rows", len(sft_rows)), ("preference_rows", len(preference_rows)), key=lambda x: x[1])
    if n_splits > smaller[1]:
        raise HbatError(f"n_splits: N = {n_splits} is larger than the smaller data set ({smaller[0]}: "
                        f"{smaller[1]} rows); each of the N parts needs at least one example")
    kinds = {_prompt_kind(r["prompt"]) for r in sft_rows}, {_prompt_kind(r["prompt"]) for r in preference_rows}
    if len(kinds[0]) != 1 or kinds[0] != kinds[1]:
        raise HbatError(f"prompt: SFT and preference data must share one prompt format; sft_rows[*].prompt is "
                        f"{sorted(kinds[0])}, preference_rows[*].prompt is {sorted(kinds[1])}")
    if kinds[0] == {"plain text"}:
        # a template is the words all prompts of one data set start (end) with, e.g. "### Instruction:" or
        # ". answer:"; the two data sets disagree when both have one and they differ
        texts = [r["prompt"] for r in sft_rows], [r["prompt"] for r in preference_rows]
        for suffix, where in ((False, "start"), (True, "end")):
            mine, theirs = _template(texts[0], suffix), _template(texts[1], suffix)
            if mine and theirs and mine != theirs:
                raise HbatError(f"prompt: every sft_rows[*].prompt {where}s with {mine!r} but every "
                                f"preference_rows[*].prompt {where}s with {theirs!r}: the SFT and preference data "
                                "use different prompt formats")


def split_parts(rows: Sequence[Any], n_splits: int, seed: int) -> list[list[Any]]:
    """N mutually exclusive, near-equal parts of a seeded shuffle of ``rows``."""
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise HbatError(f"n_splits: N must be an integer >= 1, got {n_splits!r}")
    if n_splits > len(rows):
        raise HbatError(f"n_splits: N = {n_splits} is larger than the data set ({len(rows)} rows)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    bounds = [round(k * len(rows) / n_splits) for k in range(n_splits + 1)]
    return [[rows[i] for i in order[bounds[k]:bounds[k + 1]]] for k in range(n_splits)]


def stage_plan(n_splits: int, preference: bool = True) -> list[tuple[str, int]]:
    """Algorithm 1's order: sft 0, dpo 0, sft 1, dpo 1, ... (parts numbered from 0)."""
    plan = [("sft", 0)]
    for n in range(n_splits):
        if n > 0:
            plan.append(("sft", n))
        if preference:
            plan.append(("dpo", n))
    return plan


# --------------------------------------------------------------------------------------------------
# The training loop (Algorithm 1) over TRL stages, with a resumable stage store


def _digest(obj: Any) -> str:
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

    def changes(self, reduce: str) -> dict[str, float]:
        return {k: (s / n if reduce == "mean" else s) for k, (s, n) in self.change_sums.items()}


@dataclass
class HbatRun:
    params: HbatParams
    seed: int
    stages: list[StageRecord]
    selected: int                            # index into stages of the kept checkpoint
    test: dict[str, Any] | None
    accumulated: dict[str, dict[str, float]]  # objective -> AC after the last stage

    @property
    def train_seconds(self) -> float:
        return sum(s.train_seconds for s in self.stages)

    def stage_frame(self):
        import pandas as pd

        rows = []
        for s in self.stages:
            row = {"stage": s.index, "kind": s.kind, "part": s.part, "constraint": s.constraint,
                   "constrained_tensors": len(s.constrained_tensors), "train_seconds": s.train_seconds,
                   "selected": s.index == self.selected}
            row.update({f"val_{k}": v for k, v in s.validation.items()})
            rows.append(row)
        return pd.DataFrame(rows)


def _stage_key(prev: str, kind: str, part: int, rows: Sequence[Mapping], params: HbatParams, seed: int,
               constraint: str) -> str:
    spec = {"v": STORE_VERSION, "prev": prev, "kind": kind, "part": part, "data": _digest(list(rows)),
            "train": (params.sft if kind == "sft" else params.dpo).model_dump(), "seed": seed,
            "constraint": constraint}
    if constraint != "none":
        e = params.ewc
        spec["ewc"] = {"reduce": e.reduce, "change_scale": e.change_scale, "accumulate": e.accumulate,
                       "fmax": e.fmax, **({"lam": e.lam, "lam_placement": e.lam_placement, "min_fraction": e.min_fraction}
                                          if constraint == "ewc" else {"freeze_fraction": e.freeze_fraction})}
    return _digest(spec)


def _save_stage(folder: Path, model, record: StageRecord) -> None:
    from safetensors.torch import save_file

    state = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / "state.safetensors"))
        write_json(tmp / "meta.json", record.__dict__)


def _load_stage(folder: Path, model) -> StageRecord | None:
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


def _train_stage(model, tokenizer, kind: str, rows: list[dict], params: HbatParams, seed: int,
                 penalty: EWCPenalty | None, show_progress: bool) -> dict:
    from mfnb import dpo, sft

    if kind == "sft":
        s = params.sft
        return sft.train(model, tokenizer, rows, lr=s.lr, batch_size=s.batch_size, seed=seed, epochs=s.epochs,
                         warmup_ratio=s.warmup_ratio, max_length=s.max_length, desc="hbat sft",
                         trainer_cls=ewc_trainer_class("sft") if penalty is not None else None,
                         trainer_kwargs={"ewc": penalty} if penalty is not None else None,
                         show_progress=show_progress)
    dataset = dpo.preference_dataset([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                                     [r["rejected"] for r in rows])
    return dpo.dpo_update(model, tokenizer, dataset, params.dpo, seed=seed,
                          trainer_cls=ewc_trainer_class("dpo") if penalty is not None else None,
                          trainer_kwargs={"ewc": penalty} if penalty is not None else None,
                          show_progress=show_progress)


def run_hbat(model, tokenizer, sft_rows: Sequence[dict], preference_rows: Sequence[dict], params: HbatParams, *,
             seed: int = 0, store: str | Path | None = None, init_key: str | None = None,
             evaluate: Callable[[Any, Any, str], dict] | None = None, eval_key: str | None = None,
             show_progress: bool = False) -> HbatRun:
    """Algorithm 1 on ``model`` (trained in place; a peft model trains its adapter).

    ``evaluate(model, tokenizer, split)`` returns scores for ``"validation"`` (after every stage; the
    ``select_by`` score picks the kept checkpoint) and ``"test"`` (once, for the kept checkpoint), and
    ``eval_key`` identifies what it measures. With a ``store`` folder each stage is saved atomically
    under a key chained from ``init_key`` (which must identify the initial weights) and everything that
    produced it; an existing stage is loaded instead of retrained. On return the model holds the kept
    checkpoint.
    """
    check_inputs(sft_rows, preference_rows, params.n_splits)
    if store is not None and not init_key:
        raise HbatError("init_key: a stage store needs a key that identifies the initial model")
    # Every Trainer.train() runs a full gc.collect() (accelerate's free_memory); with a notebook's worth of
    # live objects that is ~0.25 s per stage, paid 2N times here. Objects alive now are not garbage, so
    # exclude them from collection while the stages run.
    gc.collect()
    gc.freeze()
    try:
        return _run_stages(model, tokenizer, sft_rows, preference_rows, params, seed, store, init_key, evaluate,
                           eval_key, show_progress)
    finally:
        gc.unfreeze()


def _run_stages(model, tokenizer, sft_rows, preference_rows, params, seed, store, init_key, evaluate, eval_key,
                show_progress) -> HbatRun:
    store = Path(store) if store is not None else None
    parts = {"sft": split_parts(list(sft_rows), params.n_splits, seed),
             "dpo": split_parts(list(preference_rows), params.n_splits, seed + 1)}
    tensors = trainable_tensors(model)
    if not tensors:
        raise HbatError("model: has no trainable parameters")
    ewc = params.ewc
    accumulated: dict[str, dict[str, float]] = {"sft": {}, "dpo": {}}
    records: list[StageRecord] = []
    prev = _digest({"init": init_key or "in-memory", "n": params.n_splits})
    kept_state: dict[str, dict[str, torch.Tensor]] = {}
    plan = stage_plan(params.n_splits, params.preference)
    for index, (kind, part) in enumerate(plan):
        other = "dpo" if kind == "sft" else "sft"
        constraint = params.constraint if accumulated[other] else "none"
        stage_seed = seed * 1009 + index
        rows = parts[kind][part]
        key = _stage_key(prev, kind, part, rows, params, stage_seed, constraint)
        folder = store / "stages" / key if store is not None else None
        record = _load_stage(folder, model) if folder is not None else None
        if record is not None:
            record.reused = True
        else:
            importance = (importance_from_changes(accumulated[other], ewc.fmax, ewc.change_scale)
                          if constraint != "none" else {})
            penalty, frozen = None, []
            if constraint == "ewc":
                penalty = EWCPenalty.from_model(model, importance, ewc)
                constrained = penalty.names
            elif constraint == "freeze":
                frozen = top_fraction({k: importance.get(k, 0.0) for k in tensors}, ewc.freeze_fraction)
                constrained = frozen
            else:
                constrained = []
            before = snapshot(tensors)
            start = time.perf_counter()
            for name in frozen:
                tensors[name].requires_grad_(False)
            try:
                metrics = _train_stage(model, tokenizer, kind, rows, params, stage_seed, penalty, show_progress)
            finally:
                for name in frozen:
                    tensors[name].requires_grad_(True)
            sums = _squared_change_sums(before, tensors)
            seconds = time.perf_counter() - start
            del before, penalty
            record = StageRecord(index=index, kind=kind, part=part, key=key, rows=len(rows), constraint=constraint,
                                 importance_used=importance, constrained_tensors=list(constrained),
                                 change_sums={k: [s, n] for k, (s, n) in sums.items()}, train_seconds=seconds,
                                 train_metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            if folder is not None:
                _save_stage(folder, model, record)
        changes = record.changes(ewc.reduce)
        accumulated[kind] = accumulate_changes(accumulated[kind], changes) if ewc.accumulate else dict(changes)
        if evaluate is not None and (record.eval_key != eval_key or not record.validation):
            record.validation = dict(evaluate(model, tokenizer, "validation"))
            record.eval_key = eval_key
            if folder is not None:
                write_json(folder / "meta.json", {**record.__dict__, "reused": False})
        records.append(record)
        if (store is None and evaluate is not None and params.select_by != "last" and _is_candidate(kind, params)
                and select_checkpoint(records, params) == index):
            # without a store, hold a copy of the best candidate so far only (one extra copy at most); the
            # last candidate is always the last stage, so "last" and unevaluated runs need none
            kept_state = {key: snapshot({n: p for n, p in model.named_parameters() if p.requires_grad})}
        prev = key
    selected = select_checkpoint(records, params)
    if selected != len(records) - 1:
        _restore(model, records[selected], store, kept_state)
    test = dict(evaluate(model, tokenizer, "test")) if evaluate is not None else None
    return HbatRun(params=params, seed=seed, stages=records, selected=selected, test=test, accumulated=accumulated)


def _is_candidate(kind: str, params: HbatParams) -> bool:
    return params.select_over == "all" or not params.preference or kind == "dpo"


def select_checkpoint(records: Sequence[StageRecord], params: HbatParams) -> int:
    """Index of the kept checkpoint: the best ``select_by`` validation score among the candidate
    stages (later stages win ties); the last candidate with ``select_by="last"`` or no scores."""
    candidates = [r.index for r in records if _is_candidate(r.kind, params)]
    if params.select_by == "last" or any(params.select_by not in records[i].validation for i in candidates):
        return candidates[-1]
    return max(candidates, key=lambda i: (records[i].validation[params.select_by], i))


def _restore(model, record: StageRecord, store: Path | None, kept: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    if store is not None:
        if _load_stage(store / "stages" / record.key, model) is None:
            raise HbatError(f"stage {record.index} ({record.key}) is missing from the store {store}")
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in kept[record.key].items():
            params[name].copy_(value)


def clean_store(store: str | Path) -> int:
    """Delete stored stage weights (meta.json stays); returns the number of files removed."""
    removed = 0
    for path in Path(store).glob("stages/*/state.safetensors"):
        path.unlink()
        removed += 1
    return removed
