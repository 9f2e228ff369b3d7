"""What the HbAT conflict worlds share: the seeded split of training prompts into demonstrations and
preferences, and the scores each reports for a set of responses (so Table 4 means the same in every world).
:class:`ConflictScoring` holds the part of a conflict world that is the same in each: the split, the judge's
mix of quality and tone, and the scores."""
from __future__ import annotations

import math
import random
from typing import Sequence

from mfnb import stats
from mfnb.judges import OracleJudge


def split_prompts(train_prompts: Sequence[str], n_sft: int, n_pref: int, seed: int) -> tuple[list[str], list[str]]:
    """Disjoint (SFT, preference) prompt sets drawn from the world's training prompts."""
    if n_sft + n_pref > len(train_prompts):
        raise ValueError(f"n_sft + n_pref = {n_sft + n_pref} exceeds the {len(train_prompts)} training prompts")
    order = list(train_prompts)
    random.Random(seed).shuffle(order)
    return order[:n_sft], order[n_sft: n_sft + n_pref]


def _mean(values: Sequence[float]) -> float:
    """NaN when empty or when any score failed (a failed scorer call must not pass as a low score)."""
    return sum(values) / len(values) if values and not any(math.isnan(v) for v in values) else math.nan


def conflict_scores(prompts: Sequence[str], responses: Sequence[str], quality: Sequence[float],
                    reward: Sequence[float], judge, references: Sequence[str], delta: float = 0.05) -> dict:
    """Mean quality, mean reward and the win rate against the references (with its interval), and each
    prompt's three scores (``per_prompt``: a single seed's runs are then paired over prompts)."""

    quality, reward = [float(q) for q in quality], [float(r) for r in reward]
    outcomes = judge.compare(list(prompts), list(responses), list(references))
    summary = stats.summarize(outcomes)
    low, high = summary.interval(delta, "exact_ties") if summary.n else (math.nan, math.nan)
    return {"quality": _mean(quality), "reward": _mean(reward),
            "per_prompt": {"quality": quality, "reward": reward, "win_rate": stats.outcome_scores(outcomes).tolist()},
            "win_rate": summary.win_freq, "win_low": low, "win_high": high, "n": summary.n}


class ConflictScoring:
    """Base of a conflict world. A subclass gives ``params`` (``n_sft``, ``n_pref``, ``style_weight``),
    ``quality``, ``reward``, ``references`` and ``judge_name`` (part of the judge's cache key)."""

    params: object
    judge_name: str

    def split_prompts(self, train_prompts: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
        """Disjoint (SFT, preference) prompt sets drawn from the world's training prompts."""
        return split_prompts(train_prompts, self.params.n_sft, self.params.n_pref, seed)

    def overall(self, prompt: str, response: str) -> float:
        """The win-rate judge's score: quality and tone mixed by ``style_weight``."""
        w = self.params.style_weight
        return (1 - w) * self.quality(prompt, response) + w * self.reward(prompt, response)

    def judge(self, tie_margin: float = 0.05):
        return OracleJudge(self.overall, tie_margin=tie_margin, name=self.judge_name)

    def scores(self, prompts: Sequence[str], responses: Sequence[str], judge=None, delta: float = 0.05) -> dict:
        """:func:`conflict_scores` under this world's quality, reward and judge."""
        prompts, responses = list(prompts), list(responses)
        quality, reward = list(map(self.quality, prompts, responses)), list(map(self.reward, prompts, responses))
        return conflict_scores(prompts, responses, quality, reward, judge or self.judge(), self.references(prompts),
                               delta)
