"""Judging with retries: a failed verdict is asked again a few times, then stays "failed" -- excluded from
WinFreq, never scored as a loss.
"""
from __future__ import annotations

from typing import Sequence

from mfnb import stats


def judge_pairs(judge, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                retries: int) -> tuple[list[str], int]:
    """Outcomes of ``first`` vs ``second``; failed judgements are asked again up to ``retries`` times and
    then stay "failed" (excluded from WinFreq, never scored as losses).  Returns (outcomes, judgements asked)."""
    prompts, first, second = list(prompts), list(first), list(second)
    outcomes = [str(o) for o in judge.compare(prompts, first, second)]
    asked = len(prompts)
    for _ in range(retries):
        todo = [i for i, o in enumerate(outcomes) if o == "failed"]
        if not todo:
            break
        again = judge.compare([prompts[i] for i in todo], [first[i] for i in todo], [second[i] for i in todo])
        asked += len(todo)
        for i, o in zip(todo, again):
            outcomes[i] = str(o)
    return outcomes, asked


def counts(outcomes: Sequence[str]) -> dict:
    s = stats.summarize(outcomes)
    return {"wins": s.wins, "ties": s.ties, "losses": s.losses, "failed": s.failed}


def win_freq(c: dict) -> float:
    return stats.WinSummary(c["wins"], c["ties"], c["losses"]).win_freq
