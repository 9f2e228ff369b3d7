"""Sampling a transformers causal LM with our own decode loop, several times faster than ``model.generate`` on CPU.

What ``generate`` spends on a small model, and what this loop does instead (measured on SmolLM2-135M,
``benchmarks/bench_generation.py``):

* its ``DynamicCache`` concatenates every layer's keys and values at every step (a copy of the whole cache
  per token); here each layer writes into a buffer preallocated for the longest possible sequence and
  attends over a view of the filled part;
* finished rows keep computing until the last row stops; here rows that emitted a stop token are dropped
  from the batch (cache included) once ``compact`` of them are done;
* prompts are sorted by token length, so a batch holds similar lengths and little padding, and identical
  prompts (the k candidates of best-of-k) are prefilled once and their cache copied;
* top-p runs on the 256 most likely tokens (the full sort only for the rare row whose nucleus is wider).

Sampling semantics are transformers' (temperature, then top-k, then top-p; ``temperature == 0`` is
greedy), and each row draws from its own ``torch.Generator`` seeded by :func:`mfnb.models.engines.row_seeds`,
so in fp32 a row's response does not depend on its batch (in bf16 the kernels change with the batch's
shape, and so do the draws). The global torch RNG is left untouched.

On a GPU every tensor of the loop lives on the model's device (the KV buffers on each layer's own device);
the per-row generators stay on the CPU (one uniform per row and step is copied over), so a seed draws the
same uniforms on every device; only the sampled token ids come back to the CPU, once per step.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from mfnb.core.machine import cpu_has_native_bf16
from mfnb.core.progress import progress as progress_bar
from mfnb.models.devices import torch_threads
from mfnb.models.engines import Generation, row_seeds, track, untrack

TOP_P_CANDIDATES = 256


class BufferLayer(DynamicLayer):
    """A KV-cache layer that writes into a preallocated buffer instead of concatenating."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self._k = torch.empty((b, h, self.capacity, d), dtype=key_states.dtype, device=self.device)
        self._v = torch.empty((b, h, self.capacity, value_states.shape[-1]), dtype=value_states.dtype,
                              device=self.device)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.capacity:
            raise RuntimeError(f"KV buffer of {self.capacity} positions is full")
        self._k[:, :, self.length:self.length + n] = key_states
        self._v[:, :, self.length:self.length + n] = value_states
        self.length += n
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            indices = indices.to(self._k.device)  # a model split over GPUs keeps each layer on its own device
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns, then goes)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


def _pick(probs: torch.Tensor, index: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from unnormalised ``probs`` (one uniform per row); ``index`` maps columns to token ids."""
    cdf = probs.cumsum(-1)
    col = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp(max=probs.shape[-1] - 1)
    return (index.gather(-1, col) if index is not None else col).squeeze(-1)


def _nucleus(values: torch.Tensor, log_z: torch.Tensor, top_p: float) -> torch.Tensor:
    """Probabilities of descending ``values`` with the tail beyond ``top_p`` zeroed (transformers' rule: a
    token is dropped once the mass above it reaches top_p; the most likely token always stays)."""
    probs = torch.exp(values - log_z)
    return probs * ((probs.cumsum(-1) - probs) < top_p)


def choose_tokens(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                  generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row, on the logits' device: greedy at temperature 0, else transformers' temperature ->
    top-k -> top-p, drawn by inverse CDF with exactly one uniform from each row's generator per call. The
    generators are CPU ones (the same uniforms on every device); the uniforms follow the logits."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(logits.device)
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    if top_k and top_k < vocab:
        values, index = torch.topk(logits, top_k, dim=-1)
        if top_p >= 1.0:
            return _pick(torch.softmax(values, -1), index, u)
        return _pick(_nucleus(values, torch.logsumexp(values, -1, keepdim=True), top_p), index, u)
    if top_p >= 1.0:
        return _pick(torch.softmax(logits, -1), None, u)
    log_z = torch.logsumexp(logits, -1, keepdim=True)
    values, index = torch.topk(logits, min(TOP_P_CANDIDATES, vocab), dim=-1)
    out = _pick(_nucleus(values, log_z, top_p), index, u)
    wide = torch.exp(values - log_z).sum(-1) < top_p  # nucleus wider than the candidates: sort these rows fully
    if bool(wide.any()):
        full_v, full_i = torch.sort(logits[wide], dim=-1, descending=True)
        out[wide] = _pick(_nucleus(full_v, log_z[wide], top_p), full_i, u[wide])
    return out


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], sampling, seed: int = 0, *, seeds: Sequence[int] | None = None,
           compact: float = 0.25, show_progress: bool = False, desc: str = "sample") -> Generation:
    """One response per prompt (see the module docstring); ``sampling`` is a :class:`mfnb.models.SamplingParams`."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    prompts = list(prompts)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    seeds = list(seeds) if seeds is not None else row_seeds(prompts, seed)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    stops = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stops))
    texts: list[str] = [""] * len(prompts)
    counts: list[int] = [0] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: (len(ids[i]), prompts[i]))  # duplicates side by side
    batches = [order[i:i + sampling.batch_size] for i in range(0, len(order), sampling.batch_size)]
    for batch in progress_bar(batches, desc=desc, disable=not show_progress, leave=False):
        for i, (tokens, n) in zip(batch, _decode_batch(model, [ids[i] for i in batch], [seeds[i] for i in batch],
                                                         sampling, stops, pad, compact)):
            texts[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            counts[i] = n
    if was_training:
        model.train()
    return Generation(texts, counts, time.perf_counter() - start)


def _input_device(model) -> torch.device:
    """Where input ids go: the embedding's device (the first parameter's may be elsewhere in a split model)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def _decode_batch(model, ids: list[list[int]], seeds: list[int], sampling, stops: set[int], pad: int,
                  compact: float) -> list[tuple[list[int], int]]:
    device = _input_device(model)
    steps = sampling.max_new_tokens
    unique: dict[tuple[int, ...], int] = {}
    source = [unique.setdefault(tuple(row), len(unique)) for row in ids]  # identical prompts: one prefill
    prefill_ids = [list(row) for row in unique]
    b, width = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((len(prefill_ids), width), pad, dtype=torch.long)
    prefill_mask = torch.zeros((len(prefill_ids), width), dtype=torch.long)
    for r, row in enumerate(prefill_ids):
        input_ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
        prefill_mask[r, width - len(row):] = 1
    input_ids, prefill_mask = input_ids.to(device), prefill_mask.to(device)  # built on the CPU, moved once
    positions = (prefill_mask.cumsum(-1) - 1).clamp(min=0)
    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    cache = Cache(layers=[BufferLayer(width + steps) for _ in range(n_layers)])
    cache_kw = {_cache_kwarg(model): cache}
    out = model(input_ids=input_ids, attention_mask=prefill_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **cache_kw)
    expand = torch.tensor(source, dtype=torch.long, device=device)
    logits = out.logits[:, -1, :][expand.to(out.logits.device)]
    if len(prefill_ids) < b:
        cache.batch_select_indices(expand)
    mask = torch.zeros((b, width + steps), dtype=torch.long, device=device)  # grows one column per step
    mask[:, :width] = prefill_mask[expand]
    last = positions[expand, -1]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    alive = list(range(b))  # original row of each current batch row
    produced: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    for t in range(steps):
        tokens = choose_tokens(logits, sampling.temperature, sampling.top_p, sampling.top_k,
                               [generators[r] for r in alive])
        for row, tok in zip(alive, tokens.tolist()):  # the one device -> host copy of a step
            if not done[row]:
                produced[row].append(tok)
                done[row] = tok in stops
        if t == steps - 1 or all(done[r] for r in alive):
            break
        n_done = sum(done[r] for r in alive)
        if n_done and compact and n_done >= compact * len(alive):
            keep = [k for k, r in enumerate(alive) if not done[r]]
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            mask, last, tokens = mask[index], last[index], tokens[index.to(tokens.device)]
            alive = [alive[k] for k in keep]
        mask[:, width + t] = 1
        last = last + 1
        out = model(input_ids=tokens.unsqueeze(-1).to(device), attention_mask=mask[:, :width + t + 1],
                    position_ids=last.unsqueeze(-1), use_cache=True, **cache_kw)
        logits = out.logits[:, -1, :]
    results = []
    for row in range(b):
        toks = produced[row]
        text_tokens = toks[:-1] if toks and toks[-1] in stops else toks
        results.append((text_tokens, len(toks)))
    return results


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls run natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def resolve_dtype(model, dtype: str) -> str:
    """``'auto'``: bf16 where it is native on the model's device, else the model's own dtype; others as given."""
    if dtype != "auto":
        return dtype
    param = next(model.parameters())
    return "bfloat16" if native_bf16(param.device) else str(param.dtype).removeprefix("torch.")


def cast_copy(model, dtype: torch.dtype):
    """A copy of ``model`` whose floating-point parameters and buffers are ``dtype`` (as ``.to(dtype)`` casts
    them), made tensor by tensor: the extra memory is the copy itself (on a 7B fp32 model, a 14 GB bf16
    copy), never a full-precision duplicate cast afterwards. Tied weights stay tied."""
    memo: dict[int, torch.Tensor] = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in memo or not tensor.is_floating_point():
            continue
        cast = tensor.detach().to(dtype, copy=True)
        memo[id(tensor)] = torch.nn.Parameter(cast, requires_grad=tensor.requires_grad) \
            if isinstance(tensor, torch.nn.Parameter) else cast
    return copy.deepcopy(model, memo)


class HFEngine:
    """:func:`sample` bound to a model. ``dtype='auto'``: bf16 where it is native (:func:`native_bf16`), else the
    model's own dtype. When the model already has that dtype the engine samples the model itself (no copy);
    otherwise it samples a copy in that dtype (:func:`cast_copy`: a second model in memory, on the model's
    device, until :meth:`close`), and the model is untouched.

    The KV buffers of a batch take ``2 * layers * kv_heads * head_dim * bytes * batch * (longest prompt +
    max_new_tokens)``: on a 7B Llama-2 in bf16 (no GQA), 0.5 MB a position, 27 GB for 64 rows of 600 + 256."""

    name = "hf"

    def __init__(self, model, tokenizer, *, dtype: str = "auto", threads: int | None = None, compact: float = 0.25):
        self.tokenizer = tokenizer
        self.threads = threads
        self.compact = compact
        dtype = resolve_dtype(model, dtype)
        target = getattr(torch, dtype)
        self.copied = next(model.parameters()).dtype != target
        self.model = cast_copy(model, target) if self.copied else model
        self.dtype = dtype
        track(self)

    @property
    def closed(self) -> bool:
        return self.model is None

    @property
    def holds_accelerator(self) -> bool:
        return self.model is not None and next(self.model.parameters()).device.type != "cpu"

    def generate(self, prompts, sampling, seed: int = 0, *, seeds=None, show_progress: bool = False) -> Generation:

        if self.model is None:
            raise RuntimeError("this hf engine was closed (mfnb.models.engines.close_all or close()); make a new one")
        with torch_threads(self.threads):
            return sample(self.model, self.tokenizer, prompts, sampling, seed, seeds=seeds, compact=self.compact,
                          show_progress=show_progress)

    def close(self) -> None:
        """Drop the engine's reference to its model (the copy, when it made one, is freed with it); on a GPU,
        hand the freed blocks back to the driver, for training processes of their own."""
        model, self.model = self.model, None
        untrack(self)
        if model is not None and next(model.parameters()).is_cuda:
            del model
            import gc

            gc.collect()
            torch.cuda.empty_cache()
