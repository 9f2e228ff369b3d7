"""Judged win-rate rows (failures excluded, never losses) and the on-disk response cache."""
from __future__ import annotations

import json

import pytest

from mfnb import evaluation
from mfnb.judges import Outcome, PairwiseJudge
from mfnb.models import SamplingParams


class ScriptedJudge(PairwiseJudge):
    """Returns a fixed script of outcomes, in order."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)

    def _params(self):
        return {}

    def _judge_presented(self, batch):
        return [self.script.pop(0) for _ in batch]

    def compare(self, prompts, first, second, shuffle_order=True):
        return [self.script.pop(0) for _ in prompts]


def test_win_rate_row_excludes_failures_and_counts_ties_half():
    judge = ScriptedJudge([Outcome.WIN, Outcome.TIE, Outcome.LOSE, Outcome.FAILED, Outcome.WIN])
    row = evaluation.win_rate_row(judge, ["p"] * 5, ["a"] * 5, ["b"] * 5, delta=0.05)
    assert (row["n"], row["wins"], row["ties"], row["losses"], row["failed"]) == (4, 2, 1, 1, 1)
    assert row["win_rate"] == pytest.approx(2.5 / 4)
    assert row["hoeffding_radius"] == pytest.approx((__import__("math").log(2 / 0.05) / 4) ** 0.5)
    assert row["exact_low"] <= row["win_rate"] <= row["exact_high"]


def test_every_judgement_failed_gives_nan_not_zero():
    row = evaluation.win_rate_row(ScriptedJudge([Outcome.FAILED] * 3), ["p"] * 3, ["a"] * 3, ["b"] * 3)
    assert row["n"] == 0 and row["failed"] == 3 and row["win_rate"] != row["win_rate"]


class FakeWorld:
    key = "fake-world"
    prompts = {"validation": ["sort these words: fox cat owl . answer:"]}

    def respond(self, role, prompts, sampling, seed=0, show_progress=False):
        raise AssertionError("the cache should have answered")

    def load(self, role):
        raise AssertionError("responses never come from load()")


def test_role_responses_are_cached_per_world_role_sampling_and_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path))
    world, sampling, prompts = FakeWorld(), SamplingParams(), FakeWorld.prompts["validation"]
    target = evaluation._responses_file(world, "g1", prompts, sampling, 0)
    target.write_text(json.dumps({"responses": ["cat fox owl"]}))
    assert evaluation.role_responses(world, "g1", prompts, sampling, seed=0) == ["cat fox owl"]
    assert evaluation._responses_file(world, "g1", prompts, sampling, 1) != target
    assert evaluation._responses_file(world, "g2", prompts, sampling, 0) != target
    hotter = sampling.model_copy(update={"temperature": 0.7})
    assert evaluation._responses_file(world, "g1", prompts, hotter, 0) != target
