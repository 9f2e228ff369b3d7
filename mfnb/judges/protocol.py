"""The pairwise-judge protocol: outcomes, stats and errors, deterministic hashing (presentation order, tie
coins, cache keys) and :class:`PairwiseJudge`, the base class that shuffles, batches and counts."""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from mfnb.core.progress import progress as progress_bar

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
