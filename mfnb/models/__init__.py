"""Models: loading causal LMs (hub name, folder or GGUF), LoRA adapters, sampling (:mod:`.engines`), and where
models wait while training runs elsewhere.

* :mod:`.config` -- the schemas (sampling, LoRA, engine) every layer above shares; light (no torch).
* :mod:`.loading` -- load, adapt and sample: the same calls for 0.4M-parameter tiny Llamas and 7B hub models.
* :mod:`.devices` -- residents that step off the GPU for launched training, torch's thread count.
* :mod:`.engines` -- decoders for frozen and trained models (our own loop, llama.cpp, served vLLM).

Every public name of the first three is importable from ``mfnb.models``; each is imported on first use, so that
reading parameters (``python -m mfnb run --check``) does not load torch.
"""
import importlib

_HOME = {
    **dict.fromkeys(["EngineParams", "LoraParams", "ModelLoadError", "SamplingParams"], "config"),
    **dict.fromkeys(["count_parameters", "off_accelerator", "resident", "torch_threads"], "devices"),
    **dict.fromkeys(["attach_lora", "generate", "gguf_to_safetensors", "load_adapter", "load_model", "load_tokenizer",
                     "merged_copy", "sample_folder", "save_adapter"], "loading"),
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f"mfnb.models.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mfnb.models' has no attribute {name!r}")
