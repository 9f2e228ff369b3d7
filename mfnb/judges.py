"""Pairwise judges: a synthetic oracle, a reward model and an LLM judge behind one protocol, with a
persistent SQLite verdict cache.

Protocol (TRL's last pairwise-judge signature, kept because TRL 1.x removed its judges)::

    judge(prompts, completions=[[a, b], ...], shuffle_order=True) -> [0 | 1 | -1, ...]
    compare(prompts, first, second, shuffle_order=True)         -> [Outcome, ...]

``judge`` returns the index of the preferred completion, ``-1`` for a failed judgement.  ``compare``
returns ``Outcome.WIN / TIE / LOSE`` from ``first``'s point of view, or ``Outcome.FAILED``.  ``Outcome``
is a ``str`` enum, so its members *are* the strings ``"win"``, ``"tie"``, ``"lose"``, ``"failed"``.

Design choices
--------------
* **Ties in judge().**  ``judge`` must name a winner, so a tie becomes a coin flip that is deterministic
  in (judge seed, prompt, a, b): reruns give the same index, and over many ties each side wins half.
  Use ``compare`` wherever ties matter (win rates, WinFreq).
* **shuffle_order.**  A pair is shown swapped when a hash of (seed, prompt, a, b) says so (about half of
  the pairs); the verdict is unswapped before it is returned.  Hash-based rather than ``random`` so that
  a rerun presents every pair the same way and therefore hits the cache.
* **Accounting.**  ``judge.stats`` (:class:`JudgeStats`): ``pairs`` judged by the backend, ``calls``
  (backend requests: one per pair for the oracle and the reward model, one per asked order for the
  LLM judge), ``cache_hits``, ``failures``, ``retries``, ``cost`` (``cost_per_call * calls``) and
  token counts for the LLM judge.
* **Cache** (:class:`CachedJudge`).  Rows are keyed by a hash of (judge identity, prompt, a, b) with
  (a, b) in the *presented* order.  The identity is the class name plus every parameter that can change
  a verdict (never secrets, batch sizes or devices).  Failed judgements are not cached, so a rerun asks
  again.  A judge whose verdicts are order-symmetric by construction (``order_symmetric``: the reward
  model, the LLM judge which always asks both orders, the oracle without noise or position bias) may
  answer (b, a) from a cached (a, b) by flipping win <-> lose; the others never do.  One SQLite
  transaction per batch: a kill loses at most the batch in flight.

One module although it is ~860 lines: the three judges share the protocol, the presentation order and the
cache identity defined here, and each is short.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import sqlite3
import threading
import time
import warnings
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Mapping, Sequence

from pydantic import AfterValidator

from mfnb import paths
from mfnb.secrets import redact, register_variable

__all__ = [
    "Outcome", "JudgeStats", "JudgeError", "JudgeUnavailableError", "PairwiseJudge", "OracleJudge",
    "RewardModelJudge", "OpenAIJudge", "CachedJudge", "make_judge", "parse_verdict", "TEMPLATES", "LETTER_TEMPLATES",
    "letter_probability",
]


# --------------------------------------------------------------------------------------------------
# Outcomes, stats, errors


class Outcome(str, Enum):
    """Verdict for the first response of a pair.  Members compare and hash equal to their strings."""

    WIN = "win"
    TIE = "tie"
    LOSE = "lose"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    def flipped(self) -> "Outcome":
        """The same verdict from the other response's point of view."""
        return {Outcome.WIN: Outcome.LOSE, Outcome.LOSE: Outcome.WIN}.get(self, self)


@dataclass
class JudgeStats:
    pairs: int = 0  # pairs judged by the backend (not served from a cache)
    calls: int = 0  # backend requests (cost units)
    cache_hits: int = 0
    failures: int = 0  # FAILED verdicts produced by the backend
    retries: int = 0  # re-sent requests after transient API/connection errors
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dollars: float = 0.0  # LLM judge: tokens priced by its input_price / output_price

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _add(self, other: "JudgeStats", minus: "JudgeStats") -> None:
        for f in fields(self):
            if f.name != "cache_hits":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name) - getattr(minus, f.name))


class JudgeError(RuntimeError):
    """A judge that cannot work as configured (bad request, missing key, ...)."""


class JudgeUnavailableError(JudgeError):
    """A judge backend that still fails after all retries (endpoint down, persistent 5xx)."""


# --------------------------------------------------------------------------------------------------
# Deterministic hashing


def _digest(*parts: Any, size: int = 16) -> bytes:
    """blake2b over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.blake2b(digest_size=size)
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def _uniform(*parts: Any) -> float:
    """A uniform number in [0, 1) that depends only on ``parts``."""
    return int.from_bytes(_digest(*parts, size=8), "little") / 2.0**64


def _identity_json(identity: Mapping[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + max(1, size)]


def _check_unit(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_nonneg(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{owner}: {name} must be a number >= 0, got {value!r}")
    return float(value)


Triple = tuple[str, str, str]  # (prompt, shown first, shown second)


# --------------------------------------------------------------------------------------------------
# The protocol


class PairwiseJudge:
    """Base class.  Subclasses implement :meth:`_judge_presented` (one batch, fixed order) and
    :meth:`identity`; the base class does order shuffling, tie handling, batching, progress and stats."""

    #: default batch size and whether a progress bar is shown (slow judges turn it on)
    batch_size: int = 256
    progress: bool = False

    def __init__(self, *, seed: int = 0, cost_per_call: float = 0.0, batch_size: int | None = None,
                 progress: bool | None = None):
        name = type(self).__name__
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{name}: seed must be an int, got {seed!r}")
        self.seed = seed
        self.cost_per_call = _check_nonneg(name, "cost_per_call", cost_per_call)
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"{name}: batch_size must be a positive int, got {batch_size!r}")
            self.batch_size = batch_size
        if progress is not None:
            self.progress = bool(progress)
        self.stats = JudgeStats()
        self._lock = threading.Lock()

    # -- to implement -------------------------------------------------------------------------------

    def _judge_presented(self, batch: Sequence[Triple]) -> list[Outcome]:
        """Verdicts for the first-shown response of each (prompt, first, second), in this order."""
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        """Every parameter that can change a verdict (no secrets)."""
        raise NotImplementedError

    @property
    def order_symmetric(self) -> bool:
        """True when compare(p, b, a) is always compare(p, a, b) flipped (lets the cache reuse rows)."""
        return False

    # -- public API ---------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """Class name and verdict-relevant parameters: the cache key's judge part.  ``seed`` is in it
        only where it changes a presented-order verdict (the oracle's noise); elsewhere it only picks
        the shown order and tie coins, which the cache does not store."""
        identity = {"judge": type(self).__name__, **self._params()}
        if getattr(self, "query_view_name", None):
            identity["query_view"] = self.query_view_name
        return identity

    #: maps a prompt to the text the judge reads (e.g. a chat-templated prompt back to the dataset's query)
    query_view: Callable[[str], str] | None = None
    query_view_name: str | None = None

    def set_query_view(self, view: Callable[[str], str] | None, name: str | None = None) -> None:
        """Let the judge read ``view(prompt)`` instead of ``prompt`` (a world's ``query``: the dataset's text of
        a prompt rendered in a model's chat template). ``name`` identifies the view in the cache key."""
        self.query_view = view
        self.query_view_name = None if view is None else (name or getattr(view, "__qualname__", repr(view)))

    def query(self, prompt: str) -> str:
        return self.query_view(prompt) if self.query_view is not None else prompt

    @property
    def judge_id(self) -> str:
        return _digest(_identity_json(self.identity())).hex()

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                shuffle_order: bool = True) -> list[Outcome]:
        """Win / tie / lose (or failed) for ``first[i]`` against ``second[i]`` on ``prompts[i]``."""
        prompts, first, second = list(prompts), list(first), list(second)
        if not len(prompts) == len(first) == len(second):
            raise ValueError(f"{type(self).__name__}.compare: prompts, first and second differ in length "
                             f"({len(prompts)}, {len(first)}, {len(second)})")
        for what, items in (("prompts", prompts), ("first", first), ("second", second)):
            bad = next((i for i, x in enumerate(items) if not isinstance(x, str)), None)
            if bad is not None:
                raise TypeError(f"{type(self).__name__}.compare: {what}[{bad}] is {type(items[bad]).__name__}, "
                                "expected str")
        swaps = [bool(shuffle_order) and self._swap(p, a, b) for p, a, b in zip(prompts, first, second)]
        shown = [(p, b, a) if s else (p, a, b) for p, a, b, s in zip(prompts, first, second, swaps)]
        verdicts = self._run(shown)
        return [v.flipped() if s else v for v, s in zip(verdicts, swaps)]

    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[int]:
        """TRL's pairwise signature: index (0/1) of the preferred completion, -1 when judging failed.
        A tie becomes a coin flip seeded by (seed, prompt, a, b); use :meth:`compare` to see ties."""
        pairs = list(completions)
        if len(pairs) != len(prompts):
            raise ValueError(f"{type(self).__name__}.judge: {len(prompts)} prompts but {len(pairs)} completion pairs")
        for i, pair in enumerate(pairs):
            if isinstance(pair, str) or len(pair) != 2:
                raise ValueError(f"{type(self).__name__}.judge: completions[{i}] must be a pair [a, b], got {pair!r:.80}")
        first, second = [c[0] for c in pairs], [c[1] for c in pairs]
        outcomes = self.compare(prompts, first, second, shuffle_order=shuffle_order)
        out = []
        for p, a, b, o in zip(prompts, first, second, outcomes):
            if o is Outcome.WIN:
                out.append(0)
            elif o is Outcome.LOSE:
                out.append(1)
            elif o is Outcome.TIE:
                out.append(0 if _uniform(self.seed, "tie", p, a, b) < 0.5 else 1)
            else:
                out.append(-1)
        return out

    def reset_stats(self) -> None:
        self.stats = JudgeStats()

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.identity().items() if k != "judge")
        return f"{type(self).__name__}({params})"

    # -- machinery ----------------------------------------------------------------------------------

    def _swap(self, prompt: str, a: str, b: str) -> bool:
        return _uniform(self.seed, "order", prompt, a, b) < 0.5

    def _count_calls(self, n: int = 1, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            self.stats.calls += n
            self.stats.cost += n * self.cost_per_call
            self.stats.prompt_tokens += prompt_tokens
            self.stats.completion_tokens += completion_tokens

    def _run(self, shown: Sequence[Triple],
             on_batch: Callable[[Sequence[Triple], list[Outcome]], None] | None = None) -> list[Outcome]:
        """Judge ``shown`` batch by batch (progress bar for slow judges); ``on_batch`` sees each result."""
        out: list[Outcome] = []
        batches = list(_batches(list(shown), self.batch_size))
        iterator: Iterable = batches
        if self.progress and len(batches) > 1:
            from mfnb.progress import progress as progress_bar
            iterator = progress_bar(batches, desc=f"{type(self).__name__} batches", leave=False)
        for batch in iterator:
            verdicts = [Outcome(v) for v in self._judge_presented(batch)]
            if len(verdicts) != len(batch):
                raise JudgeError(f"{type(self).__name__} returned {len(verdicts)} verdicts for {len(batch)} pairs")
            self.stats.pairs += len(batch)
            self.stats.failures += sum(v is Outcome.FAILED for v in verdicts)
            if on_batch is not None:
                on_batch(batch, verdicts)
            out.extend(verdicts)
        return out


# --------------------------------------------------------------------------------------------------
# Oracle: the synthetic world's known quality


class OracleJudge(PairwiseJudge):
    """Judges by a known quality function q(prompt, response) in [0, 1].

    Verdict for the first-shown response a against b: tie if |q(a) - q(b)| <= tie_margin, else win or
    lose.  Then ``label_noise`` p flips a win/lose with probability p, and ``position_bias`` b hands a
    non-tie verdict to the first-shown response with probability b.  Both draws hash (seed, prompt,
    first, second), so verdicts are identical across reruns, instances and resumed runs.  A quality
    that is NaN or outside [0, 1] gives FAILED.  ``name`` identifies the quality function in the cache
    key (default: its module-qualified name): give a new name when the world's quality changes.
    """

    def __init__(self, quality_fn: Callable[[str, str], float], tie_margin: float = 0.05,
                 label_noise: float = 0.0, position_bias: float = 0.0, seed: int = 0,
                 name: str | None = None, cost_per_call: float = 0.0, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(seed=seed, cost_per_call=cost_per_call, batch_size=batch_size, progress=progress)
        if not callable(quality_fn):
            raise ValueError(f"OracleJudge: quality_fn must be callable, got {quality_fn!r}")
        self.quality_fn = quality_fn
        self.tie_margin = _check_nonneg("OracleJudge", "tie_margin", tie_margin)
        self.label_noise = _check_unit("OracleJudge", "label_noise", label_noise)
        self.position_bias = _check_unit("OracleJudge", "position_bias", position_bias)
        if name is None:
            name = f"{getattr(quality_fn, '__module__', '?')}.{getattr(quality_fn, '__qualname__', repr(quality_fn))}"
        self.name = str(name)

    def _params(self) -> dict[str, Any]:
        return {"name": self.name, "tie_margin": self.tie_margin, "label_noise": self.label_noise,
                "position_bias": self.position_bias, "seed": self.seed}

    @property
    def order_symmetric(self) -> bool:
        return self.label_noise == 0.0 and self.position_bias == 0.0

    def _judge_presented(self, batch: Sequence[Triple]) -> list[Outcome]:
        out = []
        for prompt, a, b in batch:
            qa, qb = float(self.quality_fn(prompt, a)), float(self.quality_fn(prompt, b))
            if not (0.0 <= qa <= 1.0 and 0.0 <= qb <= 1.0):  # also catches NaN
                out.append(Outcome.FAILED)
                continue
            diff = qa - qb
            if abs(diff) <= self.tie_margin:
                out.append(Outcome.TIE)
                continue
            verdict = Outcome.WIN if diff > 0 else Outcome.LOSE
            if self.label_noise and _uniform(self.seed, "noise", prompt, a, b) < self.label_noise:
                verdict = verdict.flipped()
            if self.position_bias and _uniform(self.seed, "position", prompt, a, b) < self.position_bias:
                verdict = Outcome.WIN
            out.append(verdict)
        self._count_calls(len(batch))
        return out


# --------------------------------------------------------------------------------------------------
# Reward model


class RewardModelJudge(PairwiseJudge):
    """Scores each response with a sequence-classification reward model (one logit) and compares.

    ``model_or_path``: a loaded model or a *local* model folder (never fetched from the hub).
    Text: the tokenizer's chat template over [user: prompt, assistant: response] when the tokenizer has
    a template and the prompt is plain text (holds none of the tokenizer's special tokens); otherwise
    ``prompt + " " + response``.  ``use_chat_template=False`` forces concatenation.  Truncation keeps the
    end of the text (the scored last token).  Tie when |r(a) - r(b)| <= tie_margin.
    ``name`` overrides the model's name in the cache identity; a fingerprint of the weights is always
    part of it, so a retrained model at the same path gets fresh cache rows.
    """

    batch_size = 16
    progress = True

    def __init__(self, model_or_path: Any, tokenizer: Any = None, tie_margin: float = 0.0,
                 batch_size: int | None = None, device: str | None = None, max_length: int = 2048,
                 use_chat_template: bool | None = None, dtype: Any = None, trust_remote_code: bool = False,
                 name: str | None = None, seed: int = 0, cost_per_call: float = 0.0,
                 progress: bool | None = None):
        super().__init__(seed=seed, cost_per_call=cost_per_call, batch_size=batch_size, progress=progress)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tie_margin = _check_nonneg("RewardModelJudge", "tie_margin", tie_margin)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"RewardModelJudge: max_length must be an int >= 2, got {max_length!r}")
        self.max_length = max_length
        if device is None and not isinstance(model_or_path, (str, os.PathLike)):
            device = str(next(model_or_path.parameters()).device)  # leave a given model where it is
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model_or_path, (str, os.PathLike)):
            path = Path(model_or_path).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(
                    f"RewardModelJudge: reward model folder not found: {path} (only local folders are loaded; "
                    "build or download the model there first)")
            kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": bool(trust_remote_code)}
            if dtype is not None:
                kwargs["dtype"] = dtype
            model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                          trust_remote_code=bool(trust_remote_code))
            self.model_name = name or str(path.resolve())
        else:
            model = model_or_path
            if tokenizer is None:
                raise ValueError("RewardModelJudge: tokenizer is required when model_or_path is a model object")
            self.model_name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        num_labels = getattr(getattr(model, "config", None), "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"RewardModelJudge: the reward model must have num_labels=1, got {num_labels} "
                             f"({self.model_name})")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        if tokenizer.pad_token is None:
            raise ValueError(f"RewardModelJudge: tokenizer of {self.model_name} has no pad, unk or eos token")
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        tokenizer.truncation_side = "left"
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError(f"RewardModelJudge: use_chat_template=True but the tokenizer of {self.model_name} "
                             "has no chat template")
        self.use_chat_template = has_template if use_chat_template is None else bool(use_chat_template)
        self._special = {t for t in getattr(tokenizer, "all_special_tokens", []) if t}
        self._special |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                          if getattr(t, "special", False) and t.content}
        self._special.discard(tokenizer.pad_token)
        self._fingerprint = self._weights_fingerprint()

    def _weights_fingerprint(self) -> str:
        import torch

        h = hashlib.blake2b(digest_size=16)
        with torch.no_grad():
            for pname, p in self.model.named_parameters():
                flat = p.detach().reshape(-1)
                step = max(1, flat.numel() // 256)
                h.update(f"{pname}:{tuple(p.shape)}:{p.dtype}".encode())
                h.update(flat[::step][:256].float().cpu().numpy().tobytes())
        tok = self.tokenizer
        h.update(f"{len(tok)}|{getattr(tok, 'chat_template', None)}|{tok.pad_token}".encode())
        return h.hexdigest()

    def _params(self) -> dict[str, Any]:
        return {"model": self.model_name, "weights": self._fingerprint, "tie_margin": self.tie_margin,
                "max_length": self.max_length, "chat_template": self.use_chat_template}

    @property
    def order_symmetric(self) -> bool:
        return True

    def format_text(self, prompt: str, response: str) -> tuple[str, bool]:
        """The text the model scores, and whether it already holds the special tokens."""
        prompt = self.query(prompt)
        if self.use_chat_template and not any(t in prompt for t in self._special):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False), True
        return prompt + " " + response, False

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Reward of each (prompt, response), batched, in input order."""
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"RewardModelJudge.score: {len(prompts)} prompts but {len(responses)} responses")
        texts = [self.format_text(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i][0]))  # similar lengths share a batch
        scores: list[float] = [math.nan] * len(texts)
        batches = list(_batches(order, self.batch_size))
        iterator: Iterable = batches
        if self.progress and len(batches) > 1:
            from mfnb.progress import progress as progress_bar
            iterator = progress_bar(batches, desc="reward model", leave=False)
        with torch.no_grad():
            for idx in iterator:
                for templated in (True, False):  # templated text already carries bos/eos
                    group = [i for i in idx if texts[i][1] == templated]
                    if not group:
                        continue
                    enc = self.tokenizer([texts[i][0] for i in group], return_tensors="pt", padding=True,
                                         truncation=True, max_length=self.max_length,
                                         add_special_tokens=not templated)
                    enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                    logits = self.model(**enc).logits.float().reshape(len(group), -1)[:, 0].cpu().tolist()
                    for i, value in zip(group, logits):
                        scores[i] = float(value)
        return scores

    def _judge_presented(self, batch: Sequence[Triple]) -> list[Outcome]:
        prompts = [p for p, _, _ in batch] * 2
        responses = [a for _, a, _ in batch] + [b for _, _, b in batch]
        scores = self.score(prompts, responses)
        n = len(batch)
        out = []
        for ra, rb in zip(scores[:n], scores[n:]):
            diff = ra - rb
            if not math.isfinite(diff):
                out.append(Outcome.FAILED)
            elif abs(diff) <= self.tie_margin:
                out.append(Outcome.TIE)
            else:
                out.append(Outcome.WIN if diff > 0 else Outcome.LOSE)
        self._count_calls(n)
        return out


# --------------------------------------------------------------------------------------------------
# LLM judge over an OpenAI-compatible endpoint

# The papers' GPT-4 win-rate protocol (DPO, Rafailov et al. 2023, App. C.2; HbAT, Wang et al. 2024,
# Fig. 4, which states it uses the same prompts).  The question and the required two-line answer
# format are kept; the parser reads the last "<label>: A|B" line or a bare final "A"/"B".
_DIALOGUE = (
    "For the following query to a chatbot, which response is more helpful?\n\n"
    "Query: {prompt}\n\n"
    "Response A:\n{response_a}\n\n"
    "Response B:\n{response_b}\n\n"
    "FIRST provide a one-sentence comparison of the two responses and explain which you feel is more "
    "helpful. SECOND, on a new line, state only \"A\" or \"B\" to indicate which response is more "
    "helpful. Your response should use the format:\n"
    "Comparison: <one-sentence comparison and explanation>\n"
    "More helpful: <\"A\" or \"B\">"
)
_SUMMARY = (
    "Which of the following summaries does a better job of summarizing the most important points in "
    "the given forum post, without including unimportant or irrelevant details? A good summary is both "
    "precise and concise.\n\n"
    "Post:\n{prompt}\n\n"
    "Summary A:\n{response_a}\n\n"
    "Summary B:\n{response_b}\n\n"
    "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. "
    "SECOND, on a new line, state only \"A\" or \"B\" to indicate your choice. Your response should use "
    "the format:\n"
    "Comparison: <one-sentence comparison and explanation>\n"
    "Preferred: <\"A\" or \"B\">"
)
#: Named judging prompts; "dpo"/"hbat" are the dialogue (helpfulness) prompt, *_summary the TL;DR one.
TEMPLATES: dict[str, str] = {
    "dpo": _DIALOGUE,
    "hbat": _DIALOGUE,
    "dpo_summary": _SUMMARY,
    "hbat_summary": _SUMMARY,
}

_LABELLED = re.compile(r"(?:more\s+helpful|preferred|choice|answer|verdict|winner)\s*[:\-]\s*[\W_]*([AB])\b",
                       re.IGNORECASE)
_FIELD = re.compile(r"\{(prompt|response_a|response_b)\}")
_BARE = re.compile(r"^[\W_]*(?:response|summary|option)?\s*([AB])[\W_]*$", re.IGNORECASE)


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or None from a judge's answer: the last labelled verdict line ("More helpful: A",
    "Preferred: B", ...) or else a last non-empty line that is only the letter (quotes/markdown ok)."""
    if not text:
        return None
    hits = [m.group(1) for m in _LABELLED.finditer(text)]
    hits = [h for h in hits if h in ("A", "B")]  # the letter itself must be upper-case
    if hits:
        return hits[-1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines:
        m = _BARE.match(lines[-1])
        if m and m.group(1) in ("A", "B"):
            return m.group(1)
    return None


# Letter-first variants of the papers' prompts for verdicts read from log-probabilities (as alpaca_eval's
# logprob annotators do): the same question, answered by the letter alone, so the first answer token is it.
_LETTER_DIALOGUE = _DIALOGUE.split("FIRST provide")[0] + (
    "Which response is more helpful? Answer with only the letter \"A\" or \"B\".")
_LETTER_SUMMARY = _SUMMARY.split("FIRST provide")[0] + (
    "Which summary is better? Answer with only the letter \"A\" or \"B\".")
#: The same prompts for ``verdict="logprobs"``.
LETTER_TEMPLATES: dict[str, str] = {
    "dpo": _LETTER_DIALOGUE,
    "hbat": _LETTER_DIALOGUE,
    "dpo_summary": _LETTER_SUMMARY,
    "hbat_summary": _LETTER_SUMMARY,
}
_TOKEN_JUNK = " \t\n\"'*`().:_"


@dataclass
class Answer:
    """One judge request's answer: its text, the letter read from it, how, and P(letter A) when logprobs came."""

    text: str | None
    letter: str | None = None
    source: str | None = None          # "logprobs", "text" or None (unparsed)
    p_a: float | None = None           # P("A") / (P("A") + P("B")) of the first answer token
    prompt_tokens: int = 0
    completion_tokens: int = 0


def letter_probability(top: Sequence[tuple[str, float]]) -> float | None:
    """P(A) / (P(A) + P(B)) over the first answer token's top log-probabilities (tokens "A", " A", '"A', ... count
    for A), or None when neither letter is among them."""
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in top:
        letter = token.strip(_TOKEN_JUNK)
        if letter in mass and logprob is not None and math.isfinite(logprob):
            mass[letter] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return mass["A"] / total if total > 0 else None


class _RateLimiter:
    """At most ``per_minute`` requests started per minute, spread evenly, across threads."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class OpenAIJudge(PairwiseJudge):
    """An LLM judge behind any OpenAI-compatible chat-completions endpoint.

    Each pair is asked in both orders (a as "A", then b as "A"): agreeing answers give win/lose,
    disagreeing ones a tie, an unparseable answer FAILED (never a loss).  ``verdict="text"`` parses the
    papers' two-line answer; ``verdict="logprobs"`` asks the same question answered by the letter alone
    (:data:`LETTER_TEMPLATES`) and reads the first answer token's log-probabilities (P(A) vs P(B), as
    alpaca_eval's logprob annotators do), falling back to the answer's text when the endpoint returns no
    logprobs; :meth:`examine` reports each order's letter, how it was read and the preference probability.
    Requests run ``concurrency`` at a time (a bounded pool), at most ``rate_limit`` per minute.
    API/connection errors, timeouts, 5xx/429 answers and bodies that are not JSON are retried
    ``max_retries`` times, waiting ``backoff * 2**attempt`` seconds; one request waits at most
    ``max_wait_s`` over all its attempts.  When the endpoint stays down, the pairs whose answers arrived
    are kept (a cached judge stores them), the rest are not invented, and :class:`JudgeUnavailableError`
    names the endpoint and how many were kept: a rerun asks only for the missing ones.  Tokens are counted
    from each answer's ``usage`` and priced with ``input_price`` / ``output_price`` (dollars per million
    tokens) into ``stats.dollars``.  The API key is read from ``$api_key_env`` when the first request is
    sent, and is never part of the judge's repr, identity, cache or results; every message the judge raises
    passes through :func:`mfnb.secrets.redact`.  ``prompt_template``: a key of :data:`TEMPLATES` or a custom
    string with ``{prompt}``, ``{response_a}`` and ``{response_b}``.  ``cost_per_call`` is per request.
    """

    batch_size = 16
    progress = True

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 prompt_template: str = "dpo", max_retries: int = 5, backoff: float = 1.0,
                 temperature: float = 0.0, timeout: float = 60.0, cost_per_call: float = 0.0,
                 max_tokens: int | None = None, concurrency: int = 4, batch_size: int | None = None,
                 seed: int = 0, progress: bool | None = None, max_wait_s: float = 120.0,
                 verdict: str = "text", top_logprobs: int = 5, rate_limit: float | None = None,
                 input_price: float = 0.0, output_price: float = 0.0):
        super().__init__(seed=seed, cost_per_call=cost_per_call, batch_size=batch_size, progress=progress)
        if not isinstance(model, str) or not model:
            raise ValueError(f"OpenAIJudge: model must be a non-empty string, got {model!r}")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError(f"OpenAIJudge: api_key_env must name an environment variable, got {api_key_env!r}")
        self.api_key_env = api_key_env
        register_variable(api_key_env)
        if verdict not in ("text", "logprobs"):
            raise ValueError(f"OpenAIJudge: verdict must be 'text' or 'logprobs', got {verdict!r}")
        self.verdict = verdict
        named = LETTER_TEMPLATES if verdict == "logprobs" else TEMPLATES
        if prompt_template in named:
            self.template_name, self.template = prompt_template, named[prompt_template]
        elif isinstance(prompt_template, str) and all(f"{{{k}}}" in prompt_template
                                                      for k in ("prompt", "response_a", "response_b")):
            self.template_name, self.template = "custom", prompt_template
        else:
            raise ValueError(f"OpenAIJudge: prompt_template must be one of {sorted(TEMPLATES)} or a string with "
                             f"{{prompt}}, {{response_a}} and {{response_b}}, got {prompt_template!r:.80}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"OpenAIJudge: max_retries must be an int >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.backoff = _check_nonneg("OpenAIJudge", "backoff", backoff)
        self.temperature = _check_nonneg("OpenAIJudge", "temperature", temperature)
        self.timeout = _check_nonneg("OpenAIJudge", "timeout", timeout)
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float)) or not max_wait_s > 0:
            raise ValueError(f"OpenAIJudge: max_wait_s must be a number of seconds > 0, got {max_wait_s!r}")
        self.max_wait_s = float(max_wait_s)
        if max_tokens is None and verdict == "logprobs":
            max_tokens = 1
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"OpenAIJudge: max_tokens must be a positive int or None, got {max_tokens!r}")
        self.max_tokens = max_tokens
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"OpenAIJudge: concurrency must be a positive int, got {concurrency!r}")
        self.concurrency = concurrency
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= 20:
            raise ValueError(f"OpenAIJudge: top_logprobs must be an int in 1..20, got {top_logprobs!r}")
        self.top_logprobs = top_logprobs
        if rate_limit is not None and (isinstance(rate_limit, bool) or not isinstance(rate_limit, (int, float))
                                       or not rate_limit > 0):
            raise ValueError(f"OpenAIJudge: rate_limit must be requests per minute > 0 or None, got {rate_limit!r}")
        self.rate_limit = rate_limit
        self.input_price = _check_nonneg("OpenAIJudge", "input_price", input_price)
        self.output_price = _check_nonneg("OpenAIJudge", "output_price", output_price)
        self._limiter = _RateLimiter(rate_limit)
        self._client = None

    def _params(self) -> dict[str, Any]:
        params = {"model": self.model, "base_url": self.base_url, "template": self.template_name,
                  "template_hash": _digest(self.template, size=8).hex(), "temperature": self.temperature,
                  "max_tokens": self.max_tokens}
        if self.verdict != "text":  # text-mode identities stay as they were (their cached verdicts stay valid)
            params.update(verdict=self.verdict, top_logprobs=self.top_logprobs)
        return params

    @property
    def order_symmetric(self) -> bool:
        return True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # the client holds the key
        state.pop("_lock", None)
        state.pop("_limiter", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._limiter = _RateLimiter(self.rate_limit)

    def _where(self) -> str:
        return f"endpoint {self.base_url} (model {self.model!r})"

    def client(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(redact(f"OpenAIJudge: environment variable {self.api_key_env} is not set; the API "
                                        f"key for {self._where()} is read from the environment only"))
            self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0)
        return self._client

    def _request(self, text: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "temperature": self.temperature,
                                  "messages": [{"role": "user", "content": text}]}
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.verdict == "logprobs":
            kwargs.update(logprobs=True, top_logprobs=self.top_logprobs)
        return kwargs

    def _answer(self, response) -> Answer:
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
        completion_tokens = getattr(usage, "completion_tokens", 0) or 0
        choices = getattr(response, "choices", None) or []
        message = choices[0].message if choices else None
        text = (getattr(message, "content", None) if message else None) or None
        answer = Answer(text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if self.verdict == "logprobs" and choices:
            content = getattr(getattr(choices[0], "logprobs", None), "content", None) or []
            for position in content:  # the first token that is not blank carries the verdict
                if not (position.token or "").strip():
                    continue
                top = [(t.token, t.logprob) for t in (position.top_logprobs or [])] or [(position.token, position.logprob)]
                answer.p_a = letter_probability(top)
                break
            if answer.p_a is not None:
                answer.letter, answer.source = ("A" if answer.p_a >= 0.5 else "B"), "logprobs"
        if answer.letter is None:
            letter = parse_verdict(text)
            if letter is not None:
                answer.letter, answer.source = letter, "text"
        return answer

    def _ask(self, text: str) -> Answer | None:
        """One chat completion with retries, all within ``max_wait_s``; the answer, or None when the endpoint
        answered with something that is not a chat completion (a failed judgement)."""
        import openai

        client = self.client()
        kwargs = self._request(text)
        deadline = time.monotonic() + self.max_wait_s
        last: str = "no attempt made"
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                pause = min(self.backoff * 2 ** (attempt - 1), deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if attempt:
                with self._lock:
                    self.stats.retries += 1
            attempts += 1
            self._limiter.wait()
            try:
                response = client.chat.completions.create(**kwargs, timeout=min(self.timeout, left))
            except openai.APIResponseValidationError:
                return None  # the endpoint answered, but not with a chat completion: a failed judgement
            except json.JSONDecodeError as err:
                last = f"the answer is not valid JSON ({err})"
                continue
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                last = f"{type(err).__name__}: {err}"
                continue
            except openai.APIStatusError as err:
                if err.status_code in (408, 409, 429) or err.status_code >= 500:
                    last = f"{type(err).__name__}: {err}"
                    continue
                hint = (f"; check the key in ${self.api_key_env}" if err.status_code in (401, 403) else "")
                raise JudgeError(redact(f"OpenAIJudge: {self._where()} refused the request: HTTP {err.status_code}: "
                                        f"{err.message}{hint}")) from None
            if isinstance(response, (str, bytes)):  # a 200 whose body is not JSON (an HTML error page, a proxy)
                last = f"the answer is not a chat completion: {str(response)[:200]!r}"
                continue
            answer = self._answer(response)
            self._count_calls(1, answer.prompt_tokens, answer.completion_tokens)
            with self._lock:
                self.stats.dollars += (answer.prompt_tokens * self.input_price
                                       + answer.completion_tokens * self.output_price) / 1e6
            return answer
        raise JudgeUnavailableError(redact(
            f"OpenAIJudge: {self._where()} gave no usable answer after {attempts} attempt(s) within "
            f"max_wait_s={self.max_wait_s:g} s per request (timeout={self.timeout:g} s per attempt, "
            f"max_retries={self.max_retries}); last error: {last}"))

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        """The judging prompt with the pair filled in (one pass: braces in the texts stay as they are); the
        prompt as the judge's query view shows it."""
        values = {"prompt": self.query(prompt), "response_a": response_a, "response_b": response_b}
        return _FIELD.sub(lambda m: values[m.group(1)], self.template)

    def _answers(self, texts: Sequence[str]) -> tuple[list[Answer | None], str | None]:
        """Answers in order (None: unusable or never asked) and the outage that stopped the rest, if any."""
        self.client()  # fail fast on a missing key
        answers: list[Answer | None] = [None] * len(texts)
        outage: str | None = None
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(texts))))
        try:
            futures = {pool.submit(self._ask, t): i for i, t in enumerate(texts)}
            for future in as_completed(futures):
                try:
                    answers[futures[future]] = future.result()
                except JudgeUnavailableError as err:
                    if outage is None:
                        outage = str(err)
                        for other in futures:  # stop asking a dead endpoint; answers in flight are still kept
                            other.cancel()
                except CancelledError:
                    pass
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return answers, outage

    @staticmethod
    def _combine(ab: Answer | None, ba: Answer | None) -> Outcome:
        la, lb = (ab.letter if ab else None), (ba.letter if ba else None)
        if la is None or lb is None:
            return Outcome.FAILED
        if la == "A" and lb == "B":
            return Outcome.WIN
        if la == "B" and lb == "A":
            return Outcome.LOSE
        return Outcome.TIE  # the answer followed the position, not the response

    def _judge_presented(self, batch: Sequence[Triple]) -> list[Outcome]:
        texts = []
        for p, a, b in batch:
            texts += [self.render(p, a, b), self.render(p, b, a)]
        answers, outage = self._answers(texts)
        out = [self._combine(answers[2 * i], answers[2 * i + 1]) for i in range(len(batch))]
        if outage is not None:
            self._outage = (outage, sum(o is not Outcome.FAILED for o in out), len(out))
        return out

    def _run(self, shown: Sequence[Triple], on_batch=None) -> list[Outcome]:
        """As the base class; after a batch hit an outage, its finished pairs are handed to ``on_batch`` (a
        cache keeps them) and then :class:`JudgeUnavailableError` says how many were kept."""
        def after(batch, verdicts):
            if on_batch is not None:
                on_batch(batch, verdicts)
            outage, self._outage = getattr(self, "_outage", None), None
            if outage is not None:
                message, kept, total = outage
                raise JudgeUnavailableError(redact(
                    f"{message}. Of the {total} pairs in the batch that met the outage, {kept} were judged and kept "
                    f"(a cached judge stored them); the others were not judged, none was counted as a loss, and a "
                    f"rerun asks only for what is missing"))

        self._outage = None
        return super()._run(shown, after)

    def examine(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[dict[str, Any]]:
        """Per pair, both orders as asked (no shuffling, no cache): each order's letter, whether it was read
        from log-probabilities or text, P(A), the verdict for ``first`` and, with logprobs, P(first is
        better) = mean of P(A | first shown first) and P(B | first shown second)."""
        texts = []
        for p, a, b in zip(prompts, first, second):
            texts += [self.render(p, a, b), self.render(p, b, a)]
        answers, outage = self._answers(texts)
        if outage is not None:
            raise JudgeUnavailableError(outage)
        rows = []
        for i in range(len(texts) // 2):
            ab, ba = answers[2 * i], answers[2 * i + 1]
            probs = [x for x in ((ab.p_a if ab else None), (1 - ba.p_a if ba and ba.p_a is not None else None))
                     if x is not None]
            rows.append({"letter_ab": ab.letter if ab else None, "source_ab": ab.source if ab else None,
                         "letter_ba": ba.letter if ba else None, "source_ba": ba.source if ba else None,
                         "p_first": sum(probs) / len(probs) if len(probs) == 2 else None,
                         "verdict": self._combine(ab, ba).value,
                         "text_ab": ab.text if ab else None, "text_ba": ba.text if ba else None})
        return rows


# --------------------------------------------------------------------------------------------------
# Persistent cache


class CachedJudge(PairwiseJudge):
    """A judge whose verdicts persist in SQLite (WAL, one transaction per batch).

    ``path`` defaults to ``paths.cache_dir("judges") / "verdicts.sqlite"``; one file holds any number of
    judges (rows are keyed by judge identity).  ``stats`` reports ``cache_hits`` and the wrapped judge's
    new ``calls``/``cost``; a fully cached rerun makes zero calls.  The wrapped judge is ``inner``; its
    other attributes (``score``, ``model``, ...) are reachable through the wrapper.
    """

    def __init__(self, judge: PairwiseJudge, path: str | os.PathLike | None = None):
        if not isinstance(judge, PairwiseJudge):
            raise TypeError(f"CachedJudge: expected a PairwiseJudge, got {type(judge).__name__}")
        super().__init__(seed=judge.seed, cost_per_call=0.0)
        self.inner = judge
        if isinstance(judge, OracleJudge) and "<" in judge.name:
            warnings.warn(f"CachedJudge: the oracle's quality function is named {judge.name!r}; two different "
                          "lambdas/local functions would share cache rows. Pass OracleJudge(name=...).",
                          stacklevel=2)
        self.path = Path(path) if path is not None else paths.cache_dir("judges") / "verdicts.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False)  # sqlite serializes
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._conn:
            self._conn.execute("CREATE TABLE IF NOT EXISTS judges (judge_id TEXT PRIMARY KEY, identity TEXT NOT NULL)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, judge_id TEXT NOT NULL, "
                               "outcome TEXT NOT NULL, created REAL NOT NULL)")
            self._conn.execute("INSERT OR IGNORE INTO judges VALUES (?, ?)",
                               (self.inner.judge_id, _identity_json(self.inner.identity())))

    # the wrapped judge decides verdicts, order and identity
    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def set_query_view(self, view, name: str | None = None) -> None:
        self.inner.set_query_view(view, name)
        with self._conn:
            self._conn.execute("INSERT OR IGNORE INTO judges VALUES (?, ?)",
                               (self.inner.judge_id, _identity_json(self.inner.identity())))

    def _swap(self, prompt: str, a: str, b: str) -> bool:
        return self.inner._swap(prompt, a, b)

    @property
    def order_symmetric(self) -> bool:
        return self.inner.order_symmetric

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"CachedJudge({self.inner!r}, path={str(self.path)!r})"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "CachedJudge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        """Cached verdicts of this judge."""
        return self._conn.execute("SELECT COUNT(*) FROM verdicts WHERE judge_id = ?", (self.inner.judge_id,)).fetchone()[0]

    def _key(self, prompt: str, a: str, b: str, judge_id: str) -> str:
        return _digest(judge_id, prompt, a, b).hex()

    def _lookup(self, keys: Sequence[str]) -> dict[str, Outcome]:
        found: dict[str, Outcome] = {}
        unique = list(dict.fromkeys(keys))
        for chunk in _batches(unique, 500):
            marks = ",".join("?" * len(chunk))
            for key, outcome in self._conn.execute(f"SELECT key, outcome FROM verdicts WHERE key IN ({marks})", chunk):
                found[key] = Outcome(outcome)
        return found

    def _store(self, batch: Sequence[Triple], verdicts: list[Outcome]) -> None:
        judge_id, now = self.inner.judge_id, time.time()
        rows = [(self._key(p, a, b, judge_id), judge_id, v.value, now)
                for (p, a, b), v in zip(batch, verdicts) if v is not Outcome.FAILED]
        with self._conn:  # one transaction per batch
            self._conn.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)", rows)

    def _run(self, shown: Sequence[Triple], on_batch=None) -> list[Outcome]:
        if self._conn is None:
            raise JudgeError(f"CachedJudge: cache {self.path} is closed")
        judge_id = self.inner.judge_id
        keys = [self._key(p, a, b, judge_id) for p, a, b in shown]
        found = self._lookup(keys)
        if self.inner.order_symmetric:
            missing = [i for i, k in enumerate(keys) if k not in found]
            rkeys = {i: self._key(p, b, a, judge_id) for i, (p, a, b) in ((i, shown[i]) for i in missing)}
            rfound = self._lookup(list(rkeys.values()))
            for i, rk in rkeys.items():
                if rk in rfound:
                    found[keys[i]] = rfound[rk].flipped()
        todo: dict[str, Triple] = {}
        for k, t in zip(keys, shown):
            if k not in found and k not in todo:
                todo[k] = t
        self.stats.cache_hits += sum(k in found for k in keys)
        if todo:
            before = JudgeStats(**self.inner.stats.as_dict())
            try:
                verdicts = self.inner._run(list(todo.values()), on_batch=self._store)
            finally:
                self.stats._add(self.inner.stats, before)
            for k, v in zip(todo, verdicts):
                found[k] = v
        return [found[k] for k in keys]


# --------------------------------------------------------------------------------------------------
# Factory

_KINDS: dict[str, type[PairwiseJudge]] = {"oracle": OracleJudge, "reward_model": RewardModelJudge,
                                          "openai": OpenAIJudge}


def check_judge_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """Refuse a judge spec whose kind is unknown, whose fields its judge does not take (a typo such as
    ``tie_margn``) or that lacks a required field, naming the field; returns the spec unchanged.  The params
    schemas call it, so a typo stops ``python -m mfnb run --check`` and the notebook's first cell."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a judge spec is a mapping with a 'kind', got {type(spec).__name__}")
    values = {k: v for k, v in spec.items() if v is not None}
    kind = values.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"judge spec field 'kind': expected one of {sorted(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind]
    values.pop("cache", None)
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "quality_fn")]
    for field in values:
        if field not in accepted:
            raise ValueError(f"judge spec field {field!r}: not a parameter of the {kind!r} judge "
                             f"({cls.__name__}); allowed: {accepted + ['cache']}")
    if kind == "reward_model" and "model_or_path" not in values:
        raise ValueError("judge spec field 'model_or_path': required for the 'reward_model' judge")
    if kind == "openai" and "model" not in values:
        raise ValueError("judge spec field 'model': required for the 'openai' judge")
    return spec


def _checked_judge_spec(spec: Mapping[str, Any]) -> dict:
    return dict(check_judge_spec(spec))


# a params field holding a judge spec: checked when the params are validated, before anything runs
JudgeSpec = Annotated[dict, AfterValidator(_checked_judge_spec)]


def make_judge(spec: Mapping[str, Any] | Any, quality_fn: Callable[[str, str], float] | None = None) -> PairwiseJudge:
    """Build a judge from ``{"kind": "oracle"|"reward_model"|"openai", **constructor kwargs}`` (a dict
    or a pydantic model; None values mean "default").  ``cache``: a path, or True for the default cache
    file, wraps the judge in :class:`CachedJudge`.  The oracle takes ``quality_fn`` from the argument."""
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    if not isinstance(spec, Mapping):
        raise TypeError(f"make_judge: spec must be a mapping or a pydantic model, got {type(spec).__name__}")
    check_judge_spec(spec)
    values = {k: v for k, v in spec.items() if v is not None}
    kind = values.pop("kind")
    cls = _KINDS[kind]
    cache = values.pop("cache", None)
    if kind == "oracle":
        if quality_fn is None:
            raise ValueError("judge spec kind 'oracle' needs make_judge(..., quality_fn=...)")
        values["quality_fn"] = quality_fn
    try:
        judge = cls(**values)
    except TypeError as err:
        raise ValueError(f"judge spec ({kind}): {err}") from None
    if cache is False or cache is None:
        return judge
    return CachedJudge(judge, None if cache is True else cache)
