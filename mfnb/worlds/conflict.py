"""What the HbAT conflict worlds share: the seeded split of training prompts into demonstrations and
preferences, and the scores each reports for a set of responses (so Table 4 means the same in every world)."""
from __future__ import annotations

import math
import random
from typing import Sequence


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
    from mfnb import stats

    quality, reward = [float(q) for q in quality], [float(r) for r in reward]
    outcomes = judge.compare(list(prompts), list(responses), list(references))
    summary = stats.summarize(outcomes)
    low, high = summary.interval(delta, "exact_ties") if summary.n else (math.nan, math.nan)
    return {"quality": _mean(quality), "reward": _mean(reward),
            "per_prompt": {"quality": quality, "reward": reward, "win_rate": stats.outcome_scores(outcomes).tolist()},
            "win_rate": summary.win_freq, "win_low": low, "win_high": high, "n": summary.n}
