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
  transaction per batch: a kill loses at most the batches not yet complete (the LLM judge streams its
  requests across batches, so a few may be open at once; an endpoint outage loses no finished pair).

Layout: :mod:`mfnb.judges.protocol` (outcomes, stats, errors, hashing, :class:`PairwiseJudge`),
:mod:`mfnb.judges.oracle`, :mod:`mfnb.judges.reward_model`, :mod:`mfnb.judges.llm` (:class:`OpenAIJudge` with
its prompts and verdict parsing), :mod:`mfnb.judges.cache` (:class:`CachedJudge`) and :mod:`mfnb.judges.spec`
(judge specs, :func:`make_judge`).  Every public name is importable from ``mfnb.judges`` itself.
"""
from __future__ import annotations

from mfnb.judges.cache import CachedJudge
from mfnb.judges.llm import LETTER_TEMPLATES, TEMPLATES, Answer, OpenAIJudge, letter_probability, parse_verdict
from mfnb.judges.oracle import OracleJudge
from mfnb.judges.protocol import JudgeError, JudgeStats, JudgeUnavailableError, Outcome, PairwiseJudge, Triple
from mfnb.judges.reward_model import RewardModelJudge
from mfnb.judges.spec import JudgeSpec, check_judge_spec, make_judge

__all__ = [
    "Outcome", "JudgeStats", "JudgeError", "JudgeUnavailableError", "PairwiseJudge", "Triple", "OracleJudge",
    "RewardModelJudge", "OpenAIJudge", "Answer", "CachedJudge", "JudgeSpec", "check_judge_spec", "make_judge",
    "parse_verdict", "TEMPLATES", "LETTER_TEMPLATES", "letter_probability",
]
