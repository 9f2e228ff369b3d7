"""What the HbAT conflict worlds share: the prompt split, and the scores (exact values on a hand-made case,
failed scores and failed judgements kept in place)."""
from __future__ import annotations

import math

import pytest

from mfnb.worlds.shared.conflict import conflict_scores, split_prompts
from mfnb.worlds.tiny.conflict import ConflictParams, ConflictWorld


class ScriptedJudge:
    """Returns the outcomes it was given and records what it was asked."""

    def __init__(self, outcomes):
        self.outcomes, self.asked = outcomes, None

    def compare(self, prompts, first, second):
        self.asked = (prompts, first, second)
        return list(self.outcomes)


def test_means_win_rate_and_per_prompt_by_hand():
    judge = ScriptedJudge(["win", "tie", "lose", None])
    out = conflict_scores(["p1", "p2", "p3", "p4"], ["a", "b", "c", "d"], [1.0, 0.5, 0.0, 0.5], [2, 0, 1, 1],
                          judge, ["r1", "r2", "r3", "r4"])
    assert judge.asked == (["p1", "p2", "p3", "p4"], ["a", "b", "c", "d"], ["r1", "r2", "r3", "r4"])
    assert out["quality"] == pytest.approx(0.5) and out["reward"] == pytest.approx(1.0)
    assert out["n"] == 3 and out["win_rate"] == pytest.approx(0.5)  # (1 + 1/2 + 0) / 3, the failed one left out
    assert out["win_low"] < 0.5 < out["win_high"]
    assert out["per_prompt"]["quality"] == [1.0, 0.5, 0.0, 0.5]
    assert out["per_prompt"]["win_rate"][:3] == [1.0, 0.5, 0.0] and math.isnan(out["per_prompt"]["win_rate"][3])


def test_a_failed_score_is_no_low_score():
    out = conflict_scores(["p1", "p2"], ["a", "b"], [1.0, math.nan], [0.0, 1.0], ScriptedJudge(["win", "win"]),
                          ["r1", "r2"])
    assert math.isnan(out["quality"]) and out["reward"] == 0.5


def test_nothing_to_score_is_nan_not_zero():
    out = conflict_scores([], [], [], [], ScriptedJudge([]), [])
    assert math.isnan(out["quality"]) and math.isnan(out["reward"]) and math.isnan(out["win_rate"])
    assert out["n"] == 0 and math.isnan(out["win_low"])


def test_split_is_disjoint_seeded_and_checked():
    prompts = [f"p{i}" for i in range(10)]
    sft, pref = split_prompts(prompts, 3, 4, seed=0)
    assert len(sft) == 3 and len(pref) == 4 and not set(sft) & set(pref) and set(sft + pref) <= set(prompts)
    assert (sft, pref) == split_prompts(prompts, 3, 4, seed=0) != split_prompts(prompts, 3, 4, seed=1)
    with pytest.raises(ValueError, match="n_sft \\+ n_pref = 11 exceeds the 10 training prompts"):
        split_prompts(prompts, 5, 6, seed=0)


def test_judge_names_key_the_judge_caches_and_stay_fixed():
    """The oracle judge's name is part of its cache key: a renamed judge would silently re-judge everything."""
    from mfnb.worlds.smol.conflict import SmolConflict, SmolConflictParams

    judge = ConflictWorld(ConflictParams(style_weight=0.25)).judge(tie_margin=0.1)
    assert judge.name == f"hbat_conflict.overall(style={ConflictParams().style!r},w=0.25)" and judge.tie_margin == 0.1
    smol = SmolConflict(tasks=None, sampler=None, params=SmolConflictParams(style_weight=1 / 3, tone="negative"))
    assert smol.judge().name == "smol_conflict.overall(vader-negative,w=0.333333)"
