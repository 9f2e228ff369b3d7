"""What a model is loaded, sampled and adapted with: the parameter schemas every layer above shares (a leaf:
it imports nothing of the package but :mod:`mfnb.core`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mfnb.core.params import Params


class ModelLoadError(OSError):
    """A model or tokenizer that cannot be found or loaded; the message names it."""


class EngineParams(Params):
    """Which engine samples a frozen model (``kind``) and how; unused fields are ignored by the other kind."""

    kind: Literal["hf", "llamacpp"] = "hf"
    threads: int | None = Field(default=None, ge=1)      # torch / llama.cpp threads (None: their default)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # hf: sampling copy's dtype (auto: bf16 where native)
    compact: float = Field(default=0.25, ge=0.0, le=1.0)  # hf: drop finished rows when this share is done
    parallel: int = Field(default=8, ge=1)                # llamacpp: concurrent sequences (slots)
    server: bool = False                                  # llamacpp: HTTP server on 127.0.0.1 instead of in-process


class SamplingParams(Params):
    """How responses are sampled (the multi-fidelity paper: top-p 0.9, temperature 0.1 while training)."""

    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=0.1, ge=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    batch_size: int = Field(default=128, ge=1)
    # which decoder samples a trained model in :func:`generate`: None is transformers' ``generate``; an engine
    # (``{kind: hf, dtype: auto}``) is our decode loop on a merged copy (LoRA folded in, bf16 where native),
    # 1.64x the tokens/s on SmolLM2 on 2 CPU cores (benchmarks/bench_trained_sampling.py). Left out of dumps
    # when None, so cache keys made before it stay the same
    engine: EngineParams | None = Field(default=None, exclude_if=lambda v: v is None)

    @field_validator("engine")
    @classmethod
    def _hf_engine_only(cls, engine):
        if engine is not None and engine.kind != "hf":
            raise ValueError(f"kind {engine.kind!r} samples a GGUF file, not a trained model; use 'hf' (our decode "
                             "loop) or leave the engine out (transformers' generate)")
        return engine


class LoraParams(Params):
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
