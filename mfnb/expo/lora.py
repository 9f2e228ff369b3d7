"""ExPO's fast path when the aligned model is the SFT model plus a LoRA adapter.

Then ``theta - theta_w = B A * scaling`` and ExPO with a given alpha is the same adapter scaled by
``1 + alpha``: :func:`scale_lora_adapter` writes such an adapter, :func:`lora_extrapolation` sweeps alpha on
one loaded ``PeftModel`` without merged copies, and :func:`lora_delta_norm` says how far DPO moved.
"""
from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import safe_open

from mfnb.core.atomic import atomic_dir
from mfnb.expo.extrapolation import ExpoError, _check_alpha, _check_output

ADAPTER_FILE = "adapter_model.safetensors"


def _is_lora_b(name: str) -> bool:
    return "lora_B" in name or "lora_embedding_B" in name


def _check_linear_adapter(config: Mapping[str, Any], where: str) -> None:
    """Only a plain LoRA delta ``B A * scaling`` is linear in the scale; refuse what is not."""
    if config.get("use_dora"):
        raise ExpoError(f"{where}: DoRA adapters are not linear in their scale; merge and use extrapolate()")
    if config.get("modules_to_save"):
        raise ExpoError(f"{where}: modules_to_save {config['modules_to_save']} hold full weights, not deltas; "
                        f"merge and use extrapolate()")
    if config.get("bias", "none") != "none":
        raise ExpoError(f"{where}: trained biases (bias={config['bias']!r}) are not deltas; merge and use extrapolate()")


def scale_lora_adapter(adapter: Any, factor: float, out: str | Path | None = None, *,
                       overwrite: bool = False):
    """Multiply a LoRA adapter's delta by ``factor`` (ExPO with alpha = factor - 1) by scaling its lora_B.

    ``adapter`` is an adapter folder (then ``out`` is required: inputs are never modified; returns ``out``)
    or a loaded ``PeftModel`` (scaled in place and returned when ``out`` is None; otherwise its scaled
    adapter is saved to ``out``, the model is left as it was, and ``out`` is returned).  B is scaled in
    float32 and cast back, so the delta is multiplied to within one rounding of B's dtype.
    """
    factor = _check_alpha(factor, "factor")
    if isinstance(adapter, (str, Path)):
        return _scale_adapter_folder(Path(adapter), factor, out, overwrite)
    lora_bs = _peft_lora_b_params(adapter)
    if out is None:
        with torch.no_grad():
            for p in lora_bs:
                p.copy_(p.float() * factor)
        return adapter
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExpoError(f"output folder {str(out)!r} already exists (pass overwrite=True to replace it)")
    saved = [p.detach().clone() for p in lora_bs]
    try:
        with torch.no_grad():
            for p in lora_bs:
                p.copy_(p.float() * factor)
        with atomic_dir(out) as tmp:
            adapter.save_pretrained(tmp)
    finally:
        with torch.no_grad():
            for p, original in zip(lora_bs, saved):
                p.copy_(original)
    return out


def _peft_lora_b_params(model) -> list[torch.Tensor]:
    for name, cfg in getattr(model, "peft_config", {}).items():
        _check_linear_adapter(cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg), f"adapter {name!r}")
    params = [p for n, p in model.named_parameters() if _is_lora_b(n)]
    if not params:
        raise ExpoError("model has no LoRA lora_B parameters")
    return params


def _scale_adapter_folder(folder: Path, factor: float, out: str | Path | None, overwrite: bool) -> Path:
    from safetensors.torch import load_file, save_file

    if out is None:
        raise ExpoError(f"scaling the adapter folder {str(folder)!r} needs an output folder (inputs are never modified)")
    out = Path(out)
    _check_output(out, [folder], overwrite)
    if not (folder / ADAPTER_FILE).is_file():
        raise ExpoError(f"adapter folder {str(folder)!r} has no {ADAPTER_FILE}")
    config_path = folder / "adapter_config.json"
    if config_path.is_file():
        _check_linear_adapter(json.loads(config_path.read_text()), str(folder))
    with safe_open(folder / ADAPTER_FILE, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(folder / ADAPTER_FILE)
    scaled = [name for name in tensors if _is_lora_b(name)]
    if not scaled:
        raise ExpoError(f"{folder / ADAPTER_FILE} has no lora_B tensors")
    for name in scaled:
        tensors[name] = (tensors[name].float() * factor).to(tensors[name].dtype)
    with atomic_dir(out) as tmp:
        save_file(tensors, tmp / ADAPTER_FILE, metadata=metadata)
        for item in folder.iterdir():
            if item.name != ADAPTER_FILE and not item.name.startswith(".") and item.is_file():
                shutil.copy2(item, tmp / item.name)
    return out


@contextmanager
def lora_extrapolation(model, alpha: float) -> Iterator[Any]:
    """Within the block, ``model`` (a PeftModel) behaves as its ExPO extrapolation with this alpha.

    Multiplies each active LoRA layer's scaling by ``1 + alpha`` and restores the exact old values on
    exit, so an alpha sweep needs one loaded model and no merged copies.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    factor = 1.0 + _check_alpha(alpha)
    for name, cfg in getattr(model, "peft_config", {}).items():
        _check_linear_adapter(cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg), f"adapter {name!r}")
    if any(isinstance(m, ModulesToSaveWrapper) for m in model.modules()):
        raise ExpoError("model has modules_to_save (full weights, not deltas); merge and use extrapolate()")
    saved: list[tuple[Any, str, float]] = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        if module.merged:
            raise ExpoError("a LoRA layer is merged into its base weights; unmerge it before lora_extrapolation()")
        for adapter in module.active_adapters:
            if adapter in module.scaling:
                if module.use_dora.get(adapter):
                    raise ExpoError(f"adapter {adapter!r} uses DoRA, which is not linear in its scale")
                saved.append((module, adapter, module.scaling[adapter]))
    if not saved:
        raise ExpoError("model has no active LoRA layers")
    try:
        for module, adapter, scaling in saved:
            module.scaling[adapter] = scaling * factor
        yield model
    finally:
        for module, adapter, scaling in saved:
            module.scaling[adapter] = scaling


def lora_delta_norm(model) -> float:
    """Frobenius norm of the adapter's weight change ``sum ||B A * scaling||`` (how far DPO moved)."""
    from peft.tuners.lora import LoraLayer

    total = 0.0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for name in module.active_adapters:
                    if name in module.lora_A:
                        delta = module.lora_B[name].weight @ module.lora_A[name].weight * module.scaling[name]
                        total += float(delta.float().pow(2).sum())
    return math.sqrt(total)
