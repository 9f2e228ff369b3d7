"""What every HbAT conflict world reports for a set of responses (tiny, smol and paper share it, so the
notebook's Table 4 means the same thing in each)."""
from __future__ import annotations

import math
from typing import Sequence


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
