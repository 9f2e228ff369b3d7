"""Sampling from an OpenAI-compatible completions server (vLLM's, llama.cpp's) with the engines' interface.

Why a server: vLLM pins its own torch and transformers, so it runs from a venv of its own as a separate
process (:mod:`mfnb.models.engines.vllm_server`), and stopping that process is what gives its GPU memory back. This
client runs in the project's venv and sends ``/v1/completions`` requests:

* the prompt as token ids, tokenized by the role's Hugging Face tokenizer exactly as the hf engine does (no
  special tokens added), so both engines see the same tokens;
* one seed per row (:func:`mfnb.models.engines.row_seeds`, or ``seeds=``), so a response depends on its prompt and
  seed, not on what else is in flight; the sampling of :class:`mfnb.models.SamplingParams` (temperature, then
  top-k, then top-p; greedy at temperature 0) with every other sampler off (no penalties, no min-p, which vLLM
  would otherwise take from the model's ``generation_config.json``);
* ``concurrency`` requests in flight (a bounded thread pool; the server batches them continuously, so
  ``sampling.batch_size`` is not used); the responses come back in prompt order. When the server returns the generated token ids, they are decoded
  here with the same tokenizer as the hf engine decodes (skipping special tokens).

Connection errors, 429 and 5xx are retried (``Retry-After`` honoured, else exponential backoff); a server
process that has died fails the call at once with its exit status and log. The HTTP client is ``httpx`` (a
pooled, thread-safe client with separate connect and read timeouts), not the ``openai`` SDK: the request
is one dict sent as it is (vLLM and llama.cpp each need fields outside OpenAI's API), and the SDK's own
retries and environment-derived headers would have to be switched off anyway.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Protocol, Sequence

from mfnb.core.progress import progress as progress_bar
from mfnb.models.engines import Generation, row_seeds, track, untrack


class ServedEngineError(RuntimeError):
    """The server refused a request, did not answer, or its process died; the message says which."""


class Server(Protocol):
    """A server process the engine owns (:class:`mfnb.models.engines.vllm_server.VLLMServer`)."""

    model_name: str

    def start(self) -> str:
        """Start (once) and wait until healthy; the base URL."""

    def failure(self) -> str | None:
        """Why the process is gone (exit status, log), or None while it runs."""

    def close(self) -> None: ...


def completion_request(prompt_ids: list[int], sampling, seed: int) -> dict[str, Any]:
    """The ``/v1/completions`` body of one row (``sampling``: :class:`mfnb.models.SamplingParams`)."""
    greedy = sampling.temperature == 0
    return {
        "prompt": list(prompt_ids), "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k and not greedy else -1,  # -1: off for vLLM and llama.cpp
        "seed": seed, "n": 1, "stream": False,
        "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "add_special_tokens": False,  # vLLM: nothing added to the ids (the hf engine adds nothing either)
        "skip_special_tokens": True, "return_token_ids": True,  # vLLM: the generated ids, decoded here
    }


class ServedEngine:
    """Generation through an OpenAI-compatible server at ``url``, or through ``server``, a process this engine
    owns: started at the first :meth:`generate`, stopped by :meth:`close` (and by
    :func:`mfnb.models.engines.close_all`). ``extra``: fields added to every request (llama.cpp's sampler switches);
    ``seed_bits``: the seed width the server takes (vLLM 63, llama.cpp 32); ``owns_server``: False for a server
    shared with other engines (one base model serving several adapters), which :meth:`close` leaves running."""

    def __init__(self, tokenizer, *, url: str | None = None, server: Server | None = None,
                 model: str | None = None, concurrency: int = 16, seed_bits: int = 63,
                 extra: Mapping[str, Any] | None = None, timeout: float = 600.0, retries: int = 3,
                 backoff: float = 1.0, name: str = "served", owns_server: bool = True):
        if (url is None) == (server is None):
            raise ValueError("give the server's url or a server to start, not both")
        self.tokenizer, self.server, self.name = tokenizer, server, name
        self.owns_server = owns_server
        self.url = url.rstrip("/") if url else None
        self.model = model or (server.model_name if server is not None else "default")
        self.concurrency, self.seed_bits, self.extra = concurrency, seed_bits, dict(extra or {})
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._client = None
        self._closed = False
        self._lock = threading.Lock()
        track(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def holds_accelerator(self) -> bool:
        """A server process this engine owns (vLLM's) holds a GPU; one it only talks to is someone else's."""
        return self.server is not None and self.owns_server and not self._closed

    def _http(self):
        import httpx

        with self._lock:
            if self._closed:
                raise ServedEngineError(f"{self.name}: this engine was closed (mfnb.models.engines.close_all or close()); "
                                        "make a new one")
            if self._client is None:
                if self.server is not None:
                    self.url = self.server.start().rstrip("/")
                self._client = httpx.Client(
                    base_url=self.url, timeout=httpx.Timeout(self.timeout, connect=10.0), trust_env=False,
                    limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency))
            return self._client

    def generate(self, prompts: Sequence[str], sampling, seed: int = 0, *, seeds: Sequence[int] | None = None,
                 show_progress: bool = False) -> Generation:
        prompts = list(prompts)
        seeds = list(seeds) if seeds is not None else row_seeds(prompts, seed)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return Generation([], [], 0.0)
        client = self._http()  # a server this engine owns starts here; its start is not charged below
        start = time.perf_counter()
        mask = (1 << self.seed_bits) - 1
        bodies = [{**completion_request(self.tokenizer(p, add_special_tokens=False)["input_ids"], sampling, s & mask),
                   "model": self.model, **self.extra} for p, s in zip(prompts, seeds)]
        stop = threading.Event()  # set on the first failure: queued rows are cancelled, retries stop
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            futures = [pool.submit(self._complete, client, body, stop) for body in bodies]
            try:
                answers = [f.result() for f in progress_bar(futures, desc=self.name, disable=not show_progress,
                                                            leave=False)]
            except BaseException:
                stop.set()
                for f in futures:
                    f.cancel()
                raise
        texts, tokens = zip(*(self._read(a) for a in answers))
        return Generation(list(texts), list(tokens), time.perf_counter() - start)

    def _read(self, answer: dict) -> tuple[str, int]:
        try:
            choice = answer["choices"][0]
            ids = choice.get("token_ids")
            if ids is not None:
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
            else:
                text = choice["text"]
            usage = answer.get("usage") or {}
            n = int(usage["completion_tokens"]) if "completion_tokens" in usage else len(ids or [])
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise ServedEngineError(f"{self.name} at {self.url}: unexpected answer {str(answer)[:300]!r} "
                                    f"({type(err).__name__}: {err})") from None
        return text.strip(), n

    def _complete(self, client, body: dict, stop: threading.Event) -> dict:
        import httpx

        problem = ""
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise ServedEngineError(f"{self.name}: cancelled after another request failed")
            wait = self.backoff * 2 ** attempt
            try:
                response = client.post("/v1/completions", json=body)
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return response.json()
                problem = f"HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise ServedEngineError(f"{self.name} at {self.url} refused a request ({problem})")
                wait = _retry_after(response) or wait
            dead = self.server.failure() if self.server is not None else None
            if dead:
                raise ServedEngineError(f"{self.name}: the server process has died ({problem}). {dead}")
            if attempt < self.retries:
                stop.wait(wait)
        raise ServedEngineError(f"{self.name} at {self.url} did not answer after {self.retries + 1} tries "
                                f"(last: {problem}); is the server still running?")

    def close(self) -> None:
        """Close the connections and stop the server process this engine owns (its GPU memory is freed)."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()
        if self.server is not None and self.owns_server:
            self.server.close()
        untrack(self)

    def __enter__(self) -> "ServedEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _retry_after(response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None
