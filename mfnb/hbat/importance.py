"""HbAT's tensor importance (Eqs. 6, 7, 9, 10): one importance per parameter *tensor*.

``C_i = mean_j (theta_after_ij - theta_before_ij)^2`` over a stage (Eq. 7), accumulated over the earlier
stages of the same objective (``AC_i = sum_k C_i,k``, Eq. 10), and ``F_i = fmax * softmax_i(AC_i)`` (Eqs. 6
and 9). HbAT-Freeze freezes the top ``freeze_fraction`` most important tensors instead of penalising them.

Works on a LoRA model (importance over the adapter tensors) and on full fine-tuning; tensor names are
compared without peft's ``base_model.model.`` prefix and ``.base_layer`` segment.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from mfnb.hbat.config import HbatError


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


def snapshot(tensors: Mapping[str, torch.Tensor], device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """A copy of ``tensors`` (same dtype); ``device="cpu"`` keeps it in host memory, so a GPU holding a full
    fine-tuned model does not also hold its copy (:func:`squared_change_sums` moves it back tensor by tensor)."""
    out = {}
    for k, v in tensors.items():
        v = v.detach()
        out[k] = v.clone() if device is None else torch.empty_like(v, device=device).copy_(v)
    return out


CHUNK = 1 << 25  # elements per piece of a tensor: bounds its float32/float64 temporaries (under 0.5 GB)


def _squared_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """sum (after - before)^2 of one tensor on ``after``'s device: the difference in float32 (as the
    parameters train), the sum in float64, over pieces of ``CHUNK`` elements (one piece for most tensors)."""
    a, b = after.detach().reshape(-1), before.detach().reshape(-1)
    total = 0.0
    for start in range(0, a.numel(), CHUNK):
        diff = a[start:start + CHUNK].float() - b[start:start + CHUNK].to(a.device).float()
        total += float(torch.linalg.vector_norm(diff, 2, dtype=torch.float64)) ** 2
        del diff
    return total


def squared_change_sums(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> dict[str, tuple[float, int]]:
    """Per tensor: (sum of squared element changes, number of elements); names compared canonically.

    Streams: one tensor of each mapping is looked up (and its temporaries alive) at a time, so neither a
    whole-model float32 copy nor the difference of two models is ever made (a 7B model's would be ~80 GB);
    a ``before`` kept on the CPU (:func:`snapshot` with ``device="cpu"``) moves to ``after``'s device piece
    by piece."""
    b = {canonical_name(k): k for k in before}
    a = {canonical_name(k): k for k in after}
    if set(a) != set(b):
        missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        raise HbatError(f"before/after name different tensors: only before {missing[:5]}, only after {extra[:5]}")
    out = {}
    for k in sorted(b):
        out[k] = _one_change(k, before[b[k]], after[a[k]])   # the two tensors die with the call
    return out


def _one_change(name: str, before: torch.Tensor, after: torch.Tensor) -> tuple[float, int]:
    if after.shape != before.shape:
        raise HbatError(f"tensor {name!r}: shape {tuple(before.shape)} before but {tuple(after.shape)} after")
    return _squared_change(before, after), before.numel()


def tensor_changes(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                   reduce: str = "mean") -> dict[str, float]:
    """Eq. 7: C_i = mean over tensor i's elements of (after - before)^2 (``reduce="sum"``: the sum)."""
    if reduce not in ("mean", "sum"):
        raise HbatError(f"reduce: expected 'mean' or 'sum', got {reduce!r}")
    sums = squared_change_sums(before, after)
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
