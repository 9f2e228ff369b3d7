"""Load causal LMs (hub name, local folder or GGUF), attach/save/load LoRA adapters, and sample from them.

The same calls serve the tiny world's 0.4M-parameter models and the papers' 7B models: only the
parameters change.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mfnb.core.atomic import atomic_dir
from mfnb.core.progress import progress as progress_bar
from mfnb.models.config import EngineParams, LoraParams, ModelLoadError, SamplingParams, VLLMServerParams
from mfnb.models.engines import make_engine
from mfnb.models.engines.hf import resolve_dtype

# Namespaces the Hugging Face hub reserves for its own pages: "models/x" is never a hub model.
_NOT_HUB_OWNERS = {"models", "datasets", "spaces", "docs", "api", "settings"}


def _looks_local(name: str) -> bool:
    """Whether ``name`` can only mean a folder: it starts with ".", "/" or "~", has a backslash, more than
    one "/" or a trailing one, its first part is an existing local folder, or it is not a valid hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/"):
        return True
    owner = name.split("/")[0] if "/" in name else None
    if owner is not None and (owner in _NOT_HUB_OWNERS or Path(owner).is_dir()):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _resolve(name_or_path: str | os.PathLike) -> str:
    """A local folder (must exist) or a hub name; a name that can only be a folder is never tried on the hub."""
    name = str(name_or_path)
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if isinstance(name_or_path, os.PathLike) or _looks_local(name):
        relative = "" if Path(name).expanduser().is_absolute() else f" (relative to {Path.cwd()})"
        raise ModelLoadError(f"model folder not found: {name}{relative}")
    return name  # a hub name


def _where(source: str) -> str:
    if Path(source).exists():
        return f"folder {source}"
    return f"hub name {source!r} (no local folder of that name under {Path.cwd()})"


def _load_failed(what: str, source: str, err: BaseException) -> ModelLoadError:
    """A ModelLoadError naming the folder or hub name and saying what went wrong, in one line."""
    where = _where(source)
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "ignore_mismatched_sizes" in detail:
        detail = "config.json disagrees with the shapes of the weights (transformers printed which above)"
    elif type(err).__name__ == "SafetensorError" and Path(source).is_dir():
        detail = f"{_broken_safetensors(Path(source)) or 'a weight file'} is truncated or corrupt ({detail})"
    return ModelLoadError(f"cannot load {what} from {where}: {type(err).__name__}: {detail}")


def _broken_safetensors(folder: Path) -> str | None:
    """The first ``*.safetensors`` file in ``folder`` whose header or size is wrong."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception:
            return file.name
    return None


@contextmanager
def gguf_bars_through_ours() -> Iterator[None]:
    """transformers de-quantises a GGUF under a plain ``tqdm.auto`` bar, which an executed notebook saves as it was
    first drawn ("0%" forever); within the block that bar is :class:`mfnb.core.progress.progress`, whose saved
    text is its last state."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    before = gguf_utils.tqdm
    gguf_utils.tqdm = progress_bar
    try:
        yield
    finally:
        gguf_utils.tqdm = before


def load_tokenizer(name_or_path: str | os.PathLike, *, gguf_file: str | None = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer that pads on the left (decoder-only batched generation) and has a pad token."""
    source = _resolve(name_or_path)
    try:
        with gguf_bars_through_ours():
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    except Exception as err:  # the library's many error types; the cause stays attached
        raise _load_failed("tokenizer", source, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(name_or_path: str | os.PathLike, *, gguf_file: str | None = None, dtype: str = "auto",
               trust_remote_code: bool = False, device: str | None = None,
               show_progress: bool = True) -> PreTrainedModel:
    """A causal LM from a hub name, a local folder, or a GGUF file inside a folder (``gguf_file``)."""
    from transformers.utils import logging as hf_logging

    source = _resolve(name_or_path)
    if gguf_file and not (Path(source) / gguf_file).is_file():
        raise ModelLoadError(f"GGUF file not found: {Path(source) / gguf_file}")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    if not show_progress:
        hf_logging.disable_progress_bar()
    try:
        with gguf_bars_through_ours():
            model, info = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch_dtype,
                                                               trust_remote_code=trust_remote_code,
                                                               output_loading_info=True)
    except Exception as err:  # bad config, truncated weights, shape mismatches...; the cause stays attached
        raise _load_failed("model", source, err) from err
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    # transformers only warns when the config asks for weights the checkpoint lacks (they would be random)
    # or the checkpoint holds weights the config has no place for (they would be dropped)
    for kind, meaning in (("missing_keys", "config.json asks for weights the checkpoint does not have"),
                          ("unexpected_keys", "the checkpoint has weights config.json has no place for")):
        keys = sorted(info.get(kind) or [])
        if keys:
            raise ModelLoadError(f"cannot load model from {_where(source)}: {meaning} ({len(keys)}: "
                                 f"{', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}); config and weights "
                                 "disagree")
    if device:
        model.to(device)
    model.eval()
    return model


def gguf_to_safetensors(folder: str | os.PathLike, gguf_file: str, out: str | os.PathLike) -> Path:
    """Re-save a GGUF checkpoint as a plain safetensors folder, once (a GGUF-loaded model refuses
    ``save_pretrained``): the weights are copied into a fresh model of the same config. Only the de-quantising
    bar shows (through :func:`gguf_bars_through_ours`); transformers' own loading and writing bars, which an
    executed notebook would keep at "0%", stay off."""
    from transformers.utils import logging as hf_logging

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    loaded = load_model(folder, gguf_file=gguf_file, dtype="float32", show_progress=False)
    tokenizer = load_tokenizer(folder, gguf_file=gguf_file)
    fresh = type(loaded)(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with atomic_dir(out) as tmp:
            fresh.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
    return out


def attach_lora(model: PreTrainedModel, lora: LoraParams, adapter_name: str = "default"):
    """Wrap ``model`` with a fresh, trainable LoRA adapter (B = 0, so the wrapped model equals the base)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config, adapter_name=adapter_name)


def save_adapter(peft_model, path: str | os.PathLike) -> Path:
    """Save the adapter weights and config (atomically: a killed save leaves the old adapter intact)."""
    with atomic_dir(path) as tmp:
        peft_model.save_pretrained(tmp)
    return Path(path)


def load_adapter(base: PreTrainedModel, path: str | os.PathLike, *, trainable: bool = True):
    from peft import PeftModel

    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        raise ModelLoadError(f"no LoRA adapter at {path} (adapter_config.json missing)")
    try:
        if not isinstance(json.loads(config.read_text()), dict):
            raise ValueError("expected a JSON object")
    except ValueError as err:
        raise ModelLoadError(f"corrupt LoRA adapter config {config}: {err}") from err
    try:
        return PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
    except Exception as err:  # wrong shapes for this base, truncated weights...; the cause stays attached
        base_name = getattr(getattr(base, "config", None), "name_or_path", "") or type(base).__name__
        first = str(err).strip().splitlines()
        shapes = [ln.strip() for ln in first if "size mismatch" in ln]
        detail = shapes[0] if shapes else (first[0] if first else "")
        raise ModelLoadError(f"cannot load LoRA adapter {path} onto base model {base_name}: "
                             f"{type(err).__name__}: {detail}") from err


@torch.no_grad()
def generate(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], sampling: SamplingParams, *,
             seed: int = 0, desc: str = "generate", show_progress: bool = True) -> list[str]:
    """One sampled response per prompt, in prompt order; batched with left padding and seeded.

    The global torch RNG is left untouched, so callers' training randomness does not depend on how
    much was generated.
    """
    if tokenizer.padding_side != "left":
        raise ValueError("generation needs a left-padding tokenizer (load it with mfnb.models.load_tokenizer)")
    if sampling.engine is not None:
        return _generate_with_engine(model, tokenizer, prompts, sampling, seed=seed, show_progress=show_progress)
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses: list[str] = [""] * len(prompts)
    do_sample = sampling.temperature > 0
    kwargs = dict(max_new_tokens=sampling.max_new_tokens, do_sample=do_sample,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if do_sample:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
    device = next(model.parameters()).device
    batches = [order[i:i + sampling.batch_size] for i in range(0, len(order), sampling.batch_size)]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in progress_bar(batches, desc=desc, disable=not show_progress, leave=False):
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(**enc, **kwargs)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(batch, texts):
                responses[i] = text.strip()
    if was_training:
        model.train()
    return responses


def merged_copy(model, dtype: torch.dtype | None = None):
    """A plain copy of ``model`` for sampling: LoRA adapters folded in at their current scaling (ExPO's alpha
    included), then cast to ``dtype``; the model itself is left as it was (no merge and unmerge drift)."""
    import copy

    from peft import PeftModel

    out = copy.deepcopy(model)
    if isinstance(out, PeftModel):
        out = out.merge_and_unload()
    if dtype is not None:
        out.to(dtype)
    return out.eval()


def _vllm_ready(spec: EngineParams) -> bool:
    """What ``auto`` asks before it picks vLLM: vLLM installed (or named) and a GPU visible."""
    from mfnb.models.engines import vllm_server

    return vllm_server.configured(spec.vllm or VLLMServerParams()) and torch.cuda.is_available()


def trained_engine_kind(model, spec: EngineParams) -> str:
    """``hf`` or ``vllm`` for sampling ``model`` (``spec.kind``; ``auto``: vLLM where it is installed and a GPU
    is visible, for a plain LoRA model or full weights, else our decode loop)."""
    if spec.kind != "auto":
        return spec.kind
    from peft import PeftModel

    from mfnb.models.engines import adapters  # deferred: starts nothing, but reads peft

    return "vllm" if _vllm_ready(spec) and (not isinstance(model, PeftModel) or adapters.servable(model) is None) else "hf"


def _generate_with_engine(model, tokenizer, prompts: list[str], sampling: SamplingParams, *, seed: int,
                          show_progress: bool) -> list[str]:
    spec = sampling.engine  # hf, vllm or auto (the field's validator refuses llamacpp)
    if trained_engine_kind(model, spec) == "vllm":
        from peft import PeftModel

        if isinstance(model, PeftModel):  # the base served once, the adapter per request
            from mfnb.models.engines.adapters import generate_with_adapter

            return generate_with_adapter(model, tokenizer, prompts, sampling, seed=seed, params=spec.vllm,
                                         show_progress=show_progress)
        return _generate_full_weights_served(model, tokenizer, prompts, sampling, seed=seed,
                                             show_progress=show_progress)
    from peft import PeftModel

    dtype = resolve_dtype(model, spec.dtype)
    if isinstance(model, PeftModel):  # a merged copy: a second model in memory (14 GB for a 7B in bf16) ...
        frozen = merged_copy(model, getattr(torch, dtype))
    else:  # full weights: sampled as they are (the engine copies only to change the dtype)
        frozen = model
    was_training = model.training
    frozen.eval()
    engine = make_engine(spec.model_copy(update={"dtype": dtype, "kind": "hf"}), model=frozen, tokenizer=tokenizer)
    try:
        return engine.generate(list(prompts), sampling, seed, show_progress=show_progress).texts
    finally:
        engine.close()  # ... freed as soon as the responses are drawn
        model.train(was_training)



def _generate_full_weights_served(model, tokenizer, prompts: list[str], sampling: SamplingParams, *, seed: int,
                                  show_progress: bool) -> list[str]:
    """Fully fine-tuned weights (HbAT's stages) through vLLM: written tensor by tensor to a folder of the cache
    (as safetensors: no second model in memory), served by :func:`sample_folder`, and deleted."""
    import tempfile

    from mfnb.core import paths

    with tempfile.TemporaryDirectory(prefix="weights-", dir=paths.cache_dir("served_models")) as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return sample_folder(folder, prompts, sampling.model_copy(update={
            "engine": sampling.engine.model_copy(update={"kind": "vllm"})}), [seed],
            show_progress=show_progress)[seed]


def sample_folder(folder: str | os.PathLike, prompts: list[str], sampling: SamplingParams, seeds=(0,), *,
                  dtype: str = "auto", device: str | None = None, trust_remote_code: bool = False,
                  show_progress: bool = False) -> dict[int, list[str]]:
    """seed -> responses of the model saved in ``folder`` (a model written once and sampled, such as one of ExPO's
    full-weight extrapolations), through ``sampling.engine``: vLLM serving the folder (``vllm``, or ``auto`` where
    vLLM is installed and a GPU is visible: one server for every seed, stopped at the end), else the model loaded
    here and sampled by :func:`generate`. Nothing of the model stays in memory afterwards."""
    import gc

    spec = sampling.engine
    if spec is not None and spec.kind in ("vllm", "auto"):
        from mfnb.models.engines import vllm_server

        vllm = spec.vllm or VLLMServerParams()
        if spec.kind == "vllm" or _vllm_ready(spec):
            from mfnb.models.engines.served import ServedEngine

            server = vllm_server.VLLMServer(folder, vllm, trust_remote_code=trust_remote_code, name="model",
                                            field="sampling.engine.vllm")
            with ServedEngine(load_tokenizer(folder), server=server, concurrency=vllm.concurrency,
                              timeout=vllm.request_timeout, retries=vllm.retries,
                              name=f"vLLM {Path(folder).name}") as engine:
                return {s: engine.generate(list(prompts), sampling, s, show_progress=show_progress).texts
                        for s in seeds}
        sampling = sampling.model_copy(update={"engine": spec.model_copy(update={"kind": "hf"})})
    model = load_model(folder, dtype=dtype, device=device, trust_remote_code=trust_remote_code, show_progress=False)
    tokenizer = load_tokenizer(folder)
    try:
        return {s: generate(model, tokenizer, list(prompts), sampling, seed=s, show_progress=show_progress)
                for s in seeds}
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
