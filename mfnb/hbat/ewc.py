"""The EWC penalty (Eqs. 5 and 8) inside TRL's own trainers.

``sum_i (lambda / 2) F_i ||theta_i - theta*_i||^2``, anchored at the parameters when the penalty is built. It
is added to TRL's losses (:class:`EWCSFTTrainer`, :class:`EWCDPOTrainer` override ``compute_loss``),
computed with fused ``torch._foreach_*`` kernels over only the tensors whose F_i is not negligible, with a
hand-written backward (no autograd graph over thousands of small ops).

``F_i`` is one number per tensor for the paper's modified EWC (:mod:`mfnb.hbat.importance`) or a tensor of
the parameter's shape for the original EWC (the diagonal empirical Fisher, :mod:`mfnb.hbat.fisher`); the
penalty is then ``sum_j (lambda / 2) F_j (theta_j - theta*_j)^2`` element by element, with the same trainers.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from mfnb.hbat.config import EWCParams, HbatError
from mfnb.hbat.importance import trainable_tensors


class _FusedPenalty(torch.autograd.Function):
    """1/2 sum_i c_i ||p_i - a_i||^2 with foreach kernels; backward recomputes the differences."""

    @staticmethod
    def forward(ctx, penalty: "EWCPenalty", *params):
        diffs = torch._foreach_sub(params, penalty.anchors)
        norms = torch.stack([n.float().to(penalty.coef_tensor.device) for n in torch._foreach_norm(diffs)])
        ctx.penalty = penalty
        ctx.save_for_backward(*params)
        return 0.5 * torch.dot(penalty.coef_tensor, norms * norms)

    @staticmethod
    def backward(ctx, grad_output):
        params = ctx.saved_tensors
        grads = torch._foreach_sub(params, ctx.penalty.anchors)
        torch._foreach_mul_(grads, ctx.penalty.coefs)
        # grad_output (float32) scales in the differences' dtype; each gradient takes its parameter's dtype
        # and device (anchors of another dtype would otherwise promote the difference)
        torch._foreach_mul_(grads, grad_output.to(grads[0].device, grads[0].dtype))
        return (None, *(g if g.dtype == p.dtype else g.to(p.dtype) for g, p in zip(grads, params)))


class _FusedElementwisePenalty(_FusedPenalty):
    """1/2 sum_i sum_j c_ij (p_ij - a_ij)^2 with foreach kernels (one coefficient per element); the backward,
    c * (p - a), is the per-tensor one's, with c broadcast element by element."""

    @staticmethod
    def forward(ctx, penalty: "EWCPenalty", *params):
        diffs = torch._foreach_sub(params, penalty.anchors)
        weighted = torch._foreach_mul(diffs, penalty.coefs)
        device = params[0].device
        total = torch.stack([torch.vdot(w.flatten().float(), d.flatten().float()).to(device)
                             for w, d in zip(weighted, diffs)])
        ctx.penalty = penalty
        ctx.save_for_backward(*params)
        return 0.5 * total.sum()


class EWCPenalty:
    """sum_i (lambda/2) F_i ||theta_i - theta*_i||^2, anchored at the parameters when it is built.

    ``coefs``: one number per tensor (the modified EWC), or one tensor per tensor, of its shape (the
    original EWC's per-element Fisher).

    The state follows the parameters: in :mod:`mfnb.training.launch`'s training processes the penalty is built
    on the model as loaded (on the CPU), and DDP or DeepSpeed then move the parameters to the GPU (and may
    cast them, e.g. to bf16); each call moves the anchors and per-element coefficients, tensor by tensor, to
    their parameter's device and dtype (the anchor as the training sees it: a cast parameter starts at a
    zero penalty) and ``coef_tensor`` to the first parameter's device.

    ``anchored=False`` keeps the coefficients only (no copy of the parameters): for a penalty that only
    travels to the training processes, which anchor it at the parameters they load."""

    def __init__(self, params: Sequence[torch.Tensor], coefs: Sequence[float | torch.Tensor],
                 names: Sequence[str] = (), *, anchored: bool = True):
        if len(params) != len(coefs):
            raise HbatError(f"{len(params)} tensors but {len(coefs)} coefficients")
        self.params = list(params)
        self.names = list(names)
        self.elementwise = any(isinstance(c, torch.Tensor) for c in coefs)
        self.anchored = anchored
        self.anchors = [p.detach().clone() for p in self.params] if anchored else []
        device = self.params[0].device if self.params else "cpu"
        if self.elementwise:
            for name, p, c in zip(self.names or [""] * len(coefs), self.params, coefs):
                if not isinstance(c, torch.Tensor) or c.shape != p.shape:
                    raise HbatError(f"EWC coefficient of tensor {name!r}: expected a tensor of shape "
                                    f"{tuple(p.shape)}, got {getattr(c, 'shape', c)!r}")
            # without anchors the coefficients only travel to the training processes: kept in host memory
            self.coefs = [c.detach().to(p.device if anchored else "cpu", p.dtype) for c, p in zip(coefs, self.params)]
        else:
            self.coefs = [float(c) for c in coefs]
            self.coef_tensor = torch.tensor(self.coefs, dtype=torch.float32, device=device)

    def follow_params(self) -> None:
        """Move the state to where the parameters are now (a no-op, one comparison per tensor, when they
        have not moved)."""
        if not self.anchored:
            return
        for i, p in enumerate(self.params):
            a = self.anchors[i]
            if a.device != p.device or a.dtype != p.dtype:
                self.anchors[i] = a.to(p.device, p.dtype)
            if self.elementwise:
                c = self.coefs[i]
                if c.device != p.device or c.dtype != p.dtype:
                    self.coefs[i] = c.to(p.device, p.dtype)
        if not self.elementwise and self.params and self.coef_tensor.device != self.params[0].device:
            self.coef_tensor = self.coef_tensor.to(self.params[0].device)

    @classmethod
    def from_model(cls, model, importance: Mapping[str, float | torch.Tensor], ewc: EWCParams, *,
                   anchored: bool = True) -> "EWCPenalty":
        """The penalty over ``model``'s trainable tensors with non-negligible importance (per-tensor numbers:
        above ``min_fraction * fmax``; per-element tensors: any non-zero element)."""
        tensors = trainable_tensors(model)
        threshold = ewc.min_fraction * ewc.fmax

        def kept(k):
            value = importance.get(k)
            if isinstance(value, torch.Tensor):
                return bool((value > 0).any()) and ewc.coefficient(1.0) > 0
            return (value or 0.0) > threshold and ewc.coefficient(value) > 0

        def coefficient(k):
            # per-element: lambda * F in F's dtype, then at once in the parameter's (one tensor's temporary)
            c = ewc.coefficient(importance[k])
            p = tensors[k]
            return c.to(p.device if anchored else "cpu", p.dtype) if isinstance(c, torch.Tensor) else c

        names = [k for k in tensors if kept(k)]
        return cls([tensors[k] for k in names], [coefficient(k) for k in names], names, anchored=anchored)

    @property
    def anchor_bytes(self) -> int:
        """The anchors' bytes (as the training processes hold them when this penalty is not anchored)."""
        return sum(p.numel() * p.element_size() for p in self.params)

    @property
    def state_bytes(self) -> int:
        """Memory the penalty holds besides the model (in each training process): anchors, and per-element
        coefficients (in the parameters' dtype) if any."""
        anchors = self.anchor_bytes
        return anchors + (anchors if self.elementwise else 4 * len(self.coefs))

    def __len__(self) -> int:
        return len(self.params)

    # what a launched step runs to rebuild this penalty in each training process (see :func:`launched_penalty`)
    launch_plugin = "mfnb.hbat.ewc:launched_penalty"

    def save(self, path) -> None:
        """The coefficients by parameter name (a 0-d tensor per tensor for the modified EWC, the per-element
        Fisher for the original), for launched training processes; its anchors are the parameters they load."""
        from safetensors.torch import save_file

        coefs = self.coefs if self.elementwise else [torch.tensor(c, dtype=torch.float32) for c in self.coefs]
        save_file({name: c.detach().cpu().contiguous() for name, c in zip(self.names, coefs)}, str(path))

    @classmethod
    def load(cls, model, path) -> "EWCPenalty":
        """The penalty over ``model``'s parameters named in ``path`` (see :meth:`save`), anchored at their values now."""
        from safetensors.torch import load_file

        coefs = load_file(str(path))
        params = dict(model.named_parameters())
        unknown = sorted(set(coefs) - set(params))
        if unknown:
            raise HbatError(f"spec.penalty: {path} names parameters the loaded model lacks: {unknown[:3]}")
        names = sorted(coefs)
        return cls([params[n] for n in names], [coefs[n] if coefs[n].dim() else float(coefs[n]) for n in names], names)

    def __call__(self) -> torch.Tensor:
        if not self.params:
            return torch.zeros(())
        if not self.anchored:
            raise HbatError("this EWC penalty holds no anchors (anchored=False): the training processes rebuild it")
        self.follow_params()
        fused = _FusedElementwisePenalty if self.elementwise else _FusedPenalty
        return fused.apply(self, *self.params)

    def reference_value(self) -> torch.Tensor:
        """The same penalty with plain autograd (for tests)."""
        self.follow_params()
        total = torch.zeros((), device=self.params[0].device if self.params else "cpu")
        for p, a, c in zip(self.params, self.anchors, self.coefs):
            total = total + 0.5 * (c * (p - a).pow(2)).sum()
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


def launched_penalty(model, path: str, step: str) -> tuple[type, dict]:
    """The launch's trainer plugin (``TrainSpec.penalty_plugin``): in a training process, the EWC trainer for
    ``step`` and its arguments, the penalty rebuilt on the parameters that process loaded."""
    return ewc_trainer_class(step), {"ewc": EWCPenalty.load(model, path)}


def __getattr__(name: str):
    if name == "EWCSFTTrainer":
        return ewc_trainer_class("sft")
    if name == "EWCDPOTrainer":
        return ewc_trainer_class("dpo")
    raise AttributeError(name)
