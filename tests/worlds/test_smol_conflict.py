"""The smol alignment-tax conflict: checker-following demonstrations vs VADER-sentiment preferences."""
from __future__ import annotations

import pytest

from mfnb.worlds.shared.best_of_k import Candidate, Choice
from mfnb.worlds.smol.conflict import SmolConflict, SmolConflictParams, sentiment
from mfnb.worlds.smol.task import InstructionParams, InstructionSet

HAPPY_COMMA = "What a wonderful, lovely and happy day, I love it!"
HAPPY = "What a wonderful and lovely day and I love it!"
SAD = "This is a terrible and awful day and I hate it."
FLAT = "The day has twenty four hours."


class FakeSampler:
    """Stands in for BestOfK: fixed samples, best-of-k by the checker."""

    def __init__(self, tasks, texts):
        self.tasks, self.texts = tasks, texts

    def candidates(self, prompts, k, show_progress=False):
        return [[Candidate(j, self.texts[j % len(self.texts)], 10, 0.1) for j in range(k)] for _ in prompts]

    def respond(self, prompts, k, show_progress=False):
        out = []
        for p, cands in zip(prompts, self.candidates(prompts, k)):
            best = max(cands, key=lambda c: (self.tasks.quality(p, c.text), -c.j))
            out.append(Choice(p, best.text, best.j, k, (), 10 * k, 0.1 * k))
        return out


@pytest.fixture(scope="module")
def tasks():
    return InstructionSet(InstructionParams(n_train=20, n_validation=0, n_test=0, min_constraints=1,
                                            max_constraints=1, instruction_ids=["punctuation:no_comma"]))


def test_sentiment_is_vader_in_unit_interval():
    assert sentiment("") == 0.5 and sentiment(FLAT) == 0.5
    assert sentiment(HAPPY) > 0.9 and sentiment(SAD) < 0.1


def test_preferences_follow_sentiment_and_demonstrations_follow_the_checker(tasks):
    conflict = SmolConflict(tasks, FakeSampler(tasks, [FLAT, HAPPY_COMMA, SAD, HAPPY]),
                            SmolConflictParams(n_sft=5, n_pref=5, demo_k=4, pref_samples=4))
    sft, pref = conflict.split_prompts(tasks.prompts["train"], seed=0)
    assert len(sft) == len(pref) == 5 and not set(sft) & set(pref)
    assert all(r["completion"] == FLAT for r in conflict.sft_rows(sft))  # first no-comma sample
    rows = conflict.preference_rows(pref, seed=0)
    assert all(r["chosen"] == HAPPY_COMMA and r["rejected"] == SAD for r in rows)  # tone only: the comma is ignored
    assert conflict.quality(pref[0], HAPPY_COMMA) == 0.0 and conflict.quality(pref[0], HAPPY) == 1.0
    with pytest.raises(ValueError, match="exceeds the 20 training prompts"):
        SmolConflict(tasks, None, SmolConflictParams(n_sft=15, n_pref=6)).split_prompts(tasks.prompts["train"], 0)


def test_conflict_rate_prefers_warm_but_wrong(tasks):
    sampler = FakeSampler(tasks, [HAPPY, HAPPY_COMMA, FLAT])
    pure = SmolConflict(tasks, sampler, SmolConflictParams(n_pref=5, pref_samples=3))
    rows = pure.preference_rows(tasks.prompts["train"][:5], seed=0)
    assert {r["chosen"] for r in rows} <= {HAPPY, HAPPY_COMMA} and all(r["rejected"] == FLAT for r in rows)
    conflicted = SmolConflict(tasks, sampler, SmolConflictParams(n_pref=5, pref_samples=3, conflict_rate=1.0))
    rows = conflicted.preference_rows(tasks.prompts["train"][:5], seed=0)
    assert all(r["chosen"] == HAPPY_COMMA and r["rejected"] == FLAT and r["quality_gap"] == -1.0 for r in rows)


def test_scores_and_win_rate_against_demonstrations(tasks):
    conflict = SmolConflict(tasks, FakeSampler(tasks, [FLAT]), SmolConflictParams(style_weight=0.5))
    prompts = tasks.prompts["train"][:4]
    out = conflict.scores(prompts, [HAPPY] * 4)  # follows the constraint and is warmer than the reference
    assert out["quality"] == 1.0 and out["reward"] == pytest.approx(sentiment(HAPPY))
    assert out["win_rate"] == 1.0 and out["n"] == 4
    assert out["per_prompt"] == {"quality": [1.0] * 4, "reward": [pytest.approx(sentiment(HAPPY))] * 4,
                                 "win_rate": [1.0] * 4}
    assert conflict.scores(prompts, [FLAT] * 4)["win_rate"] == 0.5  # the reference itself: ties
    assert conflict.overall(prompts[0], HAPPY_COMMA) == pytest.approx(0.5 * sentiment(HAPPY_COMMA))


def test_negative_tone_reverses_the_preference(tasks):
    conflict = SmolConflict(tasks, FakeSampler(tasks, [FLAT, HAPPY, SAD]), SmolConflictParams(pref_samples=3,
                                                                                              tone="negative"))
    rows = conflict.preference_rows(tasks.prompts["train"][:3], seed=0)
    assert all(r["chosen"] == SAD and r["rejected"] == HAPPY for r in rows)
    assert conflict.reward("p", SAD) == pytest.approx(1 - sentiment(SAD))
