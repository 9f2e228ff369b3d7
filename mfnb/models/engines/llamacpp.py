"""llama.cpp as a sampling engine: the ``xllamacpp`` wheel (llama.cpp's own server, compiled; no build step).

:class:`LlamaCppServer` starts llama.cpp's server on a GGUF inside this process: it answers Python calls
(``handle_completions``, no HTTP) and, at the same time, OpenAI-compatible HTTP requests on 127.0.0.1 at
a free port (``/health``, ``/v1/completions``, ``/v1/chat/completions``), which any OpenAI client can use.
:class:`LlamaCppEngine` sends the same tokens the transformers engine sees (the prompt text tokenized by
the model's Hugging Face tokenizer) with the same sampling (temperature, then top-k, then top-p; llama.cpp's
other samplers switched off), ``parallel`` requests at a time, which llama.cpp batches continuously.
Each row's seed is :func:`mfnb.models.engines.row_seeds` (low 32 bits), so a response depends on its prompt and
seed only. The draws are llama.cpp's own, so the texts differ from the hf engine's for the same seed; and
the GGUF is Q4_1-quantised while the hf engine runs its dequantised fp32 copy. With ``server=True`` the
requests go over HTTP through :class:`mfnb.models.engines.served.ServedEngine`, the client that also talks to vLLM.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from mfnb.core.progress import progress as progress_bar
from mfnb.models.engines import Generation, row_seeds, track, untrack
from mfnb.models.engines.served import ServedEngine

PACKAGE_PIN = "xllamacpp==2026.10.11549"


class LlamaCppError(RuntimeError):
    """llama.cpp cannot be started or answered with an error; the message says which and why."""


def _xllamacpp():
    try:
        import xllamacpp
    except ImportError:
        raise LlamaCppError(f"the llama.cpp engine needs the PyPI package 'xllamacpp': pip install {PACKAGE_PIN}") from None
    return xllamacpp


class LlamaCppServer:
    """llama.cpp's server on ``gguf``, in this process; also listening on ``http://127.0.0.1:<port>``.

    ``parallel`` sequences share a context of ``parallel * ctx_per_sequence`` tokens. ``threads``: llama.cpp
    compute threads (default: all cores). Threads sleep instead of spinning when idle (``poll = 0``), which
    matters on a CPU shared with other work.
    """

    def __init__(self, gguf: str | Path, *, parallel: int = 8, threads: int | None = None,
                 ctx_per_sequence: int = 1024, port: int = 0, verbose: bool = False):
        xlc = _xllamacpp()
        gguf = Path(gguf)
        if not gguf.is_file():
            raise LlamaCppError(f"GGUF file not found: {gguf}")
        params = xlc.CommonParams()
        params.model.path = str(gguf)
        params.n_parallel = parallel
        params.n_ctx = parallel * ctx_per_sequence
        params.hostnames = ["127.0.0.1"]
        params.port = port
        params.warmup = False
        params.endpoint_metrics = False
        params.verbosity = 3 if verbose else -1
        for cpu in (params.cpuparams, params.cpuparams_batch):
            cpu.n_threads = threads or -1
            cpu.poll = 0
        self.gguf, self.parallel, self.threads, self.ctx_per_sequence = gguf, parallel, threads, ctx_per_sequence
        try:
            self._server = xlc.Server(params)
        except Exception as err:  # xllamacpp raises RuntimeError/ValueError with llama.cpp's reason
            raise LlamaCppError(f"llama.cpp could not load {gguf}: {err}") from err
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """Base URL of the OpenAI-compatible HTTP server (``<url>/v1/completions``)."""
        address = self._server.listening_address
        return address if address.startswith("http") else f"http://{address}"

    def health(self, timeout: float = 5.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as r:
                return r.status == 200 and json.loads(r.read() or b"{}").get("status") == "ok"
        except OSError:
            return False

    def complete(self, request: dict[str, Any]) -> dict:
        """One completion request, answered in-process."""
        result = self._server.handle_completions(request)
        if isinstance(result, dict) and "error" in result:
            raise LlamaCppError(f"llama.cpp refused the request: {result['error']}")
        return result

    def complete_http(self, request: dict[str, Any], timeout: float = 600.0) -> dict:
        """The same request over HTTP (``/v1/completions``), as an OpenAI client would send it."""
        data = json.dumps(request).encode()
        req = urllib.request.Request(f"{self.url}/v1/completions", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as err:
            raise LlamaCppError(f"llama.cpp answered HTTP {err.code}: {err.read()[:500]!r}") from err

    @property
    def closed(self) -> bool:
        return getattr(self, "_server", None) is None

    def close(self) -> None:
        server, self._server = getattr(self, "_server", None), None
        if server is not None:
            del server  # xllamacpp stops its loop and frees the model when the Server is collected

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# transformers' order and nothing else: llama.cpp's defaults add min_p 0.05 and top_k 40
SAMPLER_FIELDS: dict[str, Any] = {
    "samplers": ["temperature", "top_k", "top_p"],
    "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "dry_multiplier": 0.0, "xtc_probability": 0.0, "top_n_sigma": -1.0,
    "cache_prompt": True,
}


def completion_request(prompt_ids: list[int], sampling, seed: int) -> dict[str, Any]:
    """A llama.cpp completion request equivalent to :class:`mfnb.models.SamplingParams` in transformers."""
    return {"prompt": prompt_ids, "max_tokens": sampling.max_new_tokens, "seed": seed & 0xFFFFFFFF,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
            **SAMPLER_FIELDS, "stream": False}


class LlamaCppEngine:
    """Generation through :class:`LlamaCppServer`, ``parallel`` requests in flight."""

    name = "llamacpp"
    holds_accelerator = False  # llama.cpp here runs on the CPU

    def __init__(self, gguf: str | Path, tokenizer, *, parallel: int = 8, threads: int | None = None,
                 server: bool = False, ctx_per_sequence: int = 1024):
        self.tokenizer = tokenizer
        self.http = server
        self.server = LlamaCppServer(gguf, parallel=parallel, threads=threads, ctx_per_sequence=ctx_per_sequence)
        self._served = None
        track(self)

    @property
    def closed(self) -> bool:
        return self.server.closed

    def served(self):
        """The OpenAI-compatible client on this server (what ``server=True`` samples with)."""
        if self._served is None:
            self._served = ServedEngine(self.tokenizer, url=self.server.url, concurrency=self.server.parallel,
                                        seed_bits=32, extra=SAMPLER_FIELDS, name="llama.cpp")
        return self._served

    def generate(self, prompts: Sequence[str], sampling, seed: int = 0, *, seeds: Sequence[int] | None = None,
                 show_progress: bool = False) -> Generation:
        start = time.perf_counter()
        prompts = list(prompts)
        seeds = list(seeds) if seeds is not None else row_seeds(prompts, seed)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        too_long = [i for i, x in enumerate(ids) if len(x) + sampling.max_new_tokens > self.server.ctx_per_sequence]
        if too_long:
            raise LlamaCppError(f"{len(too_long)} prompt(s) do not fit ctx_per_sequence="
                                f"{self.server.ctx_per_sequence} with max_new_tokens={sampling.max_new_tokens}")
        if self.http:
            return self.served().generate(prompts, sampling, seeds=seeds, show_progress=show_progress)
        requests = [completion_request(x, sampling, s) for x, s in zip(ids, seeds)]
        with ThreadPoolExecutor(max_workers=self.server.parallel) as pool:
            results = list(progress_bar(pool.map(self.server.complete, requests), total=len(requests), desc="llama.cpp",
                                         disable=not show_progress, leave=False))
        texts = [r["choices"][0]["text"].strip() for r in results]
        tokens = [int(r["usage"]["completion_tokens"]) for r in results]
        return Generation(texts, tokens, time.perf_counter() - start)

    def close(self) -> None:
        if self._served is not None:
            self._served.close()
        self.server.close()
        untrack(self)
