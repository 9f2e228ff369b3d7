"""Sampling engines: one call, several back ends.

``engine.generate(prompts, sampling, seed) -> Generation(texts, new_tokens, seconds)``

* ``hf``: transformers models on torch (any causal LM, LoRA-wrapped or not), with our own decode loop
  (:mod:`mfnb.models.engines.hf`): a preallocated KV cache, finished rows dropped from the batch, per-row seeds.
* ``llamacpp``: llama.cpp (the ``xllamacpp`` wheel) serving a GGUF, in-process or as an OpenAI-compatible
  server on 127.0.0.1 (:mod:`mfnb.models.engines.llamacpp`).
* ``served``: any OpenAI-compatible completions server (:mod:`mfnb.models.engines.served`): vLLM in a venv and process
  of its own (:mod:`mfnb.models.engines.vllm_server`), which the ``paper`` world uses on GPUs, or llama.cpp's.
* trained LoRA models through vLLM: the base model served once, each adapter applied per request
  (:mod:`mfnb.models.engines.adapters`; ``sampling.engine: {kind: vllm | auto}`` in :func:`mfnb.models.generate`).

Prompts are text, already chat-templated, as for :func:`mfnb.models.generate`. Both engines draw the
randomness of each row from its own seed, a hash of (seed, prompt, occurrence of that prompt in the list),
so in fp32 a response depends on its prompt and seed only, not on what else was in the batch: the k
candidates of a best-of-k expert are the same whether generated alone or in a batch. In bf16 (about twice
as fast on CPUs with native bf16) the matmul kernels, hence the draws, change with the batch's shape: the
same distribution, other samples; runs repeat exactly only with the same batching (and the samples of the
smol world are stored once anyway).
``Generation`` also reports what was spent (tokens generated per row, wall seconds), which a cost
ledger can charge.

Engines hold what training needs back (a vLLM server's share of the GPU, a sampling copy of a model):
every engine is tracked from its creation until its ``close()``, and :func:`close_all` closes them all, so
a training step can start with the GPU to itself.
"""
from __future__ import annotations

import atexit
import hashlib
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from mfnb.core.params import ParamsError
from mfnb.models.config import EngineParams  # re-exported: engines are chosen by it


@dataclass(frozen=True)
class Generation:
    """Responses in prompt order, tokens generated for each (the stop token included), wall seconds."""

    texts: list[str]
    new_tokens: list[int]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(self.new_tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


class Engine(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], sampling, seed: int = 0, *, seeds: Sequence[int] | None = None,
                 show_progress: bool = False) -> Generation:
        """``seeds``: one per row, replacing ``row_seeds(prompts, seed)`` (e.g. to draw only candidates j >= m)."""

    @property
    def closed(self) -> bool: ...

    def close(self) -> None:
        """Free what the engine holds (idempotent); ``generate`` then raises."""


_OPEN: "weakref.WeakSet[Any]" = weakref.WeakSet()  # created and not yet closed; garbage leaves by itself


def track(engine):
    """Register an engine (or a server process) for :func:`close_all`; returns it."""
    _OPEN.add(engine)
    return engine


def untrack(engine) -> None:
    """What ``close()`` calls: the engine no longer holds anything."""
    _OPEN.discard(engine)


def open_engines() -> list:
    return list(_OPEN)


def close_all(accelerator_only: bool = False) -> int:
    """Close every engine created and not yet closed (vLLM server processes stop and free their GPU memory;
    sampling copies are dropped), e.g. before a training step; returns how many were closed.
    ``accelerator_only``: only those that hold a GPU (``engine.holds_accelerator``; an engine that does not say
    counts as holding one), so that CPU samplers a world keeps (llama.cpp, a CPU model) stay open."""
    engines = [e for e in _OPEN if not accelerator_only or getattr(e, "holds_accelerator", True)]
    failed = []
    for engine in engines:
        try:
            engine.close()
        except Exception as err:  # one engine that fails to close must not keep the others open
            failed.append(err)
    if failed:
        raise failed[0]
    return len(engines)


atexit.register(close_all)  # a notebook that ends without closing leaves no vLLM process behind


def candidate_seed(seed: int, prompt: str, j: int) -> int:
    """The 63-bit seed of the ``j``-th sample of ``prompt`` under ``seed``."""
    h = hashlib.blake2b(f"{seed}\x00{j}\x00{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def row_seeds(prompts: Sequence[str], seed: int) -> list[int]:
    """One seed per row: :func:`candidate_seed` with j = how many times this prompt came before in the list."""
    seen: dict[str, int] = {}
    out = []
    for prompt in prompts:
        j = seen.get(prompt, 0)
        seen[prompt] = j + 1
        out.append(candidate_seed(seed, prompt, j))
    return out


def make_engine(spec: Mapping[str, Any] | EngineParams | None = None, *, model=None, tokenizer=None,
                gguf=None) -> Engine:
    """An engine from its params: ``hf`` needs ``model`` and ``tokenizer``; ``llamacpp`` needs ``gguf``
    (a file path) and ``tokenizer`` (to send exactly the tokens the hf engine would see)."""
    params = spec if isinstance(spec, EngineParams) else EngineParams.validate_mapping(dict(spec or {}), "engine")
    if params.kind == "hf":
        if model is None or tokenizer is None:
            raise ParamsError("engine: kind 'hf' needs a model and a tokenizer")
        from mfnb.models.engines.hf import HFEngine  # deferred: loads torch

        return HFEngine(model, tokenizer, dtype=params.dtype, threads=params.threads, compact=params.compact)
    if params.kind in ("vllm", "auto"):
        raise ParamsError(f"engine: kind {params.kind!r} samples trained LoRA models (sampling.engine); a frozen "
                          "model here is sampled by 'hf' or 'llamacpp' (the paper world serves its roles with vLLM "
                          "through world.engine)")
    if gguf is None or tokenizer is None:
        raise ParamsError("engine: kind 'llamacpp' needs a GGUF file and the matching tokenizer")
    from mfnb.models.engines.llamacpp import LlamaCppEngine  # deferred: loads torch

    return LlamaCppEngine(gguf, tokenizer, parallel=params.parallel, threads=params.threads, server=params.server)
