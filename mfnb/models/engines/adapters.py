"""Sampling a LoRA-trained model through vLLM: the base model served once, the adapter applied per request.

Why: the models the notebooks train are LoRA adapters on one frozen base (the multi-fidelity student at each
iterate, ExPO's DPO model at each alpha, HbAT's stages). Merging each into a copy and decoding with
transformers holds a second model and leaves the other GPUs of a node idle; vLLM serves the base model
(data-parallel over the node's GPUs) and applies whichever adapter a request names, with continuous
batching. What :func:`generate_with_adapter` does:

1. saves the adapter as it is now (ExPO's in-place scaling included, so each alpha is a scaled adapter) once,
   in ``<cache>/served_adapters/<hash>``, the hash taken over its tensors and config: an adapter already
   written is not written again;
2. starts (once per base model and settings) vLLM's server from its own venv with LoRA support and runtime
   adapter loading (``--enable-lora``, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``), ``--max-lora-rank`` the
   adapter's rank rounded up to a rank vLLM supports;
3. loads the adapter (``/v1/load_lora_adapter``), samples through :class:`ServedEngine` with the adapter as
   the request's model (prompt token ids, one seed per row, as every engine), and unloads it.

The server is shared by the calls and tracked like every engine: :func:`mfnb.models.engines.close_all`
(before each training step) stops it and frees its GPU memory; the next call starts a new one. Only plain
LoRA adapters go this way (vLLM applies neither DoRA nor trained biases nor ``modules_to_save``):
:func:`servable` says whether a model can, and ``auto`` falls back to our decode loop when it cannot.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from mfnb.core import paths
from mfnb.core.atomic import atomic_dir
from mfnb.models.config import ModelLoadError, SamplingParams, VLLMServerParams
from mfnb.models.engines.served import ServedEngine, ServedEngineError
from mfnb.models.engines.vllm_server import VLLMServer

# --max-lora-rank takes one of these (vLLM's own list)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
BASE_NAME = "base"
_SERVERS: dict[tuple, VLLMServer] = {}


def lora_config(model):
    """The active adapter's ``LoraConfig`` of a PEFT model, or None for any other model."""
    from peft import PeftModel  # deferred: loads torch

    configs = getattr(model, "peft_config", None)
    if not isinstance(model, PeftModel) or not configs:  # (peft also sets peft_config on the wrapped model)
        return None
    config = configs.get(getattr(model, "active_adapter", "default"))
    return config if getattr(config, "peft_type", None) is not None and str(config.peft_type).endswith("LORA") \
        else None


def servable(model) -> str | None:
    """None when vLLM can sample ``model`` as base + adapter; else why not (a sentence)."""
    config = lora_config(model)
    if config is None:
        return f"{type(model).__name__} is not a LoRA-wrapped model (vLLM serves adapters, not trained full weights)"
    if getattr(config, "use_dora", False):
        return "a DoRA adapter (vLLM applies plain LoRA only)"
    if getattr(config, "modules_to_save", None):
        return f"modules_to_save {config.modules_to_save} (full weights vLLM does not load with an adapter)"
    if getattr(config, "bias", "none") != "none":
        return f"trained biases (bias={config.bias!r})"
    if max_rank(config) > VLLM_LORA_RANKS[-1]:
        return f"rank {max_rank(config)} (vLLM takes LoRA ranks up to {VLLM_LORA_RANKS[-1]})"
    return None


def max_rank(config) -> int:
    """The largest rank of a ``LoraConfig`` (its ``r`` or any ``rank_pattern`` override)."""
    return max([config.r, *dict(getattr(config, "rank_pattern", None) or {}).values()])


def served_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank``."""
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def base_folder(model) -> str:
    """Where the base model of a PEFT model was loaded from (a folder, or a hub name vLLM resolves)."""
    config = lora_config(model)
    name = getattr(config, "base_model_name_or_path", None) or getattr(
        getattr(model.get_base_model(), "config", None), "name_or_path", None)
    if not name:
        raise ModelLoadError("sampling.engine: vllm needs the folder the base model was loaded from, and this "
                             "LoRA model does not name one (base_model_name_or_path is empty)")
    return str(name)


def serving_state(model) -> dict:
    """The active adapter's tensors as vLLM should apply them: each lora_B times the ratio of its layer's
    current scaling to the scaling its config implies, so a scaling changed in place (ExPO's alpha,
    :func:`mfnb.expo.lora.lora_extrapolation`) is written into the weights. Host copies of the adapter only."""
    import math

    from peft import get_peft_model_state_dict  # deferred: loads torch
    from peft.tuners.lora import LoraLayer

    adapter = getattr(model, "active_adapter", "default")
    state = {k: v.detach().to("cpu") for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items()}
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.scaling:
            continue
        r, alpha = module.r[adapter], module.lora_alpha[adapter]
        configured = alpha / math.sqrt(r) if lora_config(model).use_rslora else alpha / r
        ratio = module.scaling[adapter] / configured
        if ratio != 1.0:
            for suffix in ("lora_B.weight", "lora_embedding_B"):
                key = f"{module_name}.{suffix}"
                if key in state:
                    state[key] = (state[key].float() * ratio).to(state[key].dtype)
    return {k: v.contiguous() for k, v in state.items()}


def adapter_digest(model, state: dict | None = None) -> str:
    """A hash of the adapter as served (:func:`serving_state`: names, dtypes, shapes, bytes) and its config."""
    import torch  # deferred: loads torch

    state = serving_state(model) if state is None else state
    h = hashlib.blake2b(digest_size=10)
    h.update(json.dumps(lora_config(model).to_dict(), sort_keys=True, default=str).encode())
    for name in sorted(state):
        tensor = state[name]
        h.update(f"{name}\x00{tensor.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_for_serving(model, folder: str | os.PathLike | None = None) -> tuple[str, Path]:
    """The adapter's name and folder (PEFT's layout), written once (atomically) under its hash."""
    from safetensors.torch import save_file

    state = serving_state(model)
    name = f"adapter-{adapter_digest(model, state)}"
    root = Path(folder) if folder is not None else paths.cache_dir("served_adapters")
    target = root / name
    if not (target / "adapter_config.json").is_file():
        with atomic_dir(target) as tmp:
            save_file(state, str(Path(tmp) / "adapter_model.safetensors"), metadata={"format": "pt"})
            lora_config(model).save_pretrained(tmp)  # adapter_config.json last: its presence marks a whole folder
    return name, target


def lora_server(base: str, rank: int, params: VLLMServerParams, *, field: str = "sampling.engine.vllm",
                trust_remote_code: bool = False) -> VLLMServer:
    """The running (or new) vLLM server of ``base`` with LoRA up to ``rank``: one per base and settings."""
    rank = served_rank(rank)
    key = (base, params.model_dump_json(), trust_remote_code)
    old = _SERVERS.get(key)
    if old is not None and not old.closed and old.rank >= rank:
        return old
    if old is not None:
        old.close()  # a larger rank than it was started for: restart with room for it
    settings = params.model_copy(update={
        "extra_args": [*params.extra_args, "--enable-lora", "--max-lora-rank", str(rank), "--max-loras", "1"],
        "env": {**params.env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}})
    server = VLLMServer(base, settings, trust_remote_code=trust_remote_code, name=BASE_NAME, field=field)
    server.rank = rank
    _SERVERS[key] = server
    return server


def _post(client, path: str, body: dict, ok_if: str | None = None) -> None:
    response = client.post(path, json=body)
    if response.status_code != 200 and not (ok_if and ok_if in response.text):
        raise ServedEngineError(f"vLLM {path} refused {body.get('lora_name')}: HTTP {response.status_code} "
                                f"{response.text[:300]}")


def generate_with_adapter(model, tokenizer, prompts: Sequence[str], sampling: SamplingParams, *, seed: int = 0,
                          params: VLLMServerParams | None = None, show_progress: bool = False,
                          field: str = "sampling.engine.vllm") -> list[str]:
    """One response per prompt from ``model`` (base + LoRA adapter as it is now) through vLLM."""
    why = servable(model)
    if why is not None:
        raise ModelLoadError(f"sampling.engine: kind 'vllm' cannot sample this model: {why}; use kind 'hf' or "
                             f"'auto'")
    params = params or VLLMServerParams()
    name, folder = save_for_serving(model)
    rank = max_rank(lora_config(model))
    trust = bool(getattr(getattr(model.get_base_model(), "config", None), "trust_remote_code", False))
    server = lora_server(base_folder(model), rank, params, field=field, trust_remote_code=trust)
    engine = ServedEngine(tokenizer, server=server, model=name, concurrency=params.concurrency,
                          timeout=params.request_timeout, retries=params.retries, name=f"vLLM {name}",
                          owns_server=False)
    try:
        client = engine._http()  # starts the shared server at its first use
        _post(client, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)},
              ok_if="has already been loaded")
        texts = engine.generate(list(prompts), sampling, seed, show_progress=show_progress).texts
        # unloaded after a success only: a failed call leaves it loaded, and the next load of it is accepted
        _post(client, "/v1/unload_lora_adapter", {"lora_name": name}, ok_if="cannot be found")
        return texts
    finally:
        engine.close()
        if params.lifetime == "per_call":
            server.close()
