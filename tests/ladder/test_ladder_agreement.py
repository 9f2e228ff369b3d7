"""Notebook 01's judge check (mfnb.ladder.agreement.checker_table): parse rate and agreement with the world's
checker, for a judge answered through the protocol and for an LLM judge read answer by answer."""
from __future__ import annotations

import math

import pytest

from mfnb.judges import JudgeStats, Outcome, make_judge
from mfnb.ladder import agreement as ja

QUALITY = {"good": 1.0, "bad": 0.0, "ok": 0.5, "ok2": 0.52}
quality = lambda prompt, response: QUALITY[response]


class ScriptedVerdicts:
    """A judge that answers from a script through the protocol (no answers to read)."""

    def __init__(self, verdicts):
        self.verdicts, self.stats = verdicts, JudgeStats()

    def compare(self, prompts, first, second, shuffle_order=True):
        self.stats.calls += len(prompts)
        return [Outcome(v) for v in self.verdicts]


class ScriptedLLM(ScriptedVerdicts):
    def examine(self, prompts, first, second):
        return self.verdicts


def test_verdict_judge_parse_rate_and_agreement_exact():
    first, second = ["good", "bad", "good", "ok", "good"], ["bad", "good", "bad", "ok2", "ok"]
    # truth (margin 0.05): +1, -1, +1, tie, +1; verdicts: right, wrong, tie (1/2), ignored (checker tie), failed
    judge = ScriptedVerdicts(["win", "win", "tie", "lose", "failed"])
    row = ja.checker_table({"s": judge}, ["p"] * 5, first, second, quality, tie_margin=0.05).iloc[0]
    assert row["parse_rate"] == pytest.approx(4 / 5) and row["separated_pairs"] == 4
    assert row["agreement_n"] == 3 and row["agreement"] == pytest.approx(1.5 / 3)
    assert row["agreement_low"] < 0.5 < row["agreement_high"] and row["mode"] == "verdicts" and row["calls"] == 5
    assert "not distinguishable from chance" in ja.checker_lines(ja.checker_table({"s": judge}, ["p"] * 5, first, second,
                                                                                   quality, 0.05))[0]


def test_llm_judge_counts_single_answers_and_position_consistency():
    rows = [{"letter_ab": "A", "source_ab": "text", "letter_ba": "B", "source_ba": "logprobs", "verdict": "win",
             "p_first": 0.8},
            {"letter_ab": None, "source_ab": None, "letter_ba": "A", "source_ba": "text", "verdict": "failed",
             "p_first": None},
            {"letter_ab": "A", "source_ab": "text", "letter_ba": "A", "source_ba": "text", "verdict": "tie",
             "p_first": None}]
    table = ja.checker_table({"llm": ScriptedLLM(rows)}, ["p"] * 3, ["good", "good", "bad"], ["bad", "bad", "good"],
                             quality)
    row = table.iloc[0]
    assert row["mode"] == "both orders, answers read" and row["answers"] == 6
    assert row["parse_rate"] == pytest.approx(5 / 6) and row["read_from_logprobs"] == pytest.approx(1 / 6)
    assert row["verdict_rate"] == pytest.approx(2 / 3) and row["position_consistent"] == pytest.approx(1 / 2)
    assert row["agreement_n"] == 2 and row["agreement"] == pytest.approx(0.75)
    # without a checker: parse rates only, and the sentence says so
    none = ja.checker_table({"llm": ScriptedLLM(rows)}, ["p"] * 3, ["good"] * 3, ["bad"] * 3, None)
    assert math.isnan(none.iloc[0]["agreement"]) and none.iloc[0]["parse_rate"] == pytest.approx(5 / 6)
    assert "not measured" in ja.checker_lines(none)[0]


def test_the_oracle_agrees_with_its_own_checker_and_says_what_that_means(tmp_path):
    oracle = make_judge({"kind": "oracle", "name": "checker-test", "tie_margin": 0.05, "cache": str(tmp_path / "v.sqlite")}, quality_fn=quality)
    table = ja.checker_table({"oracle": oracle}, ["p"] * 3, ["good", "bad", "ok"], ["bad", "good", "ok2"], quality, 0.05)
    row = table.iloc[0]
    assert row["parse_rate"] == 1.0 and row["agreement"] == 1.0 and row["agreement_n"] == 2
    assert "judges by the checker itself" in ja.checker_lines(table)[0]


def test_ladder_pairs_are_table_1s_pairs(tiny_world):
    from mfnb.ladder import ladder_pairs
    from mfnb.models import SamplingParams

    sampling = SamplingParams(max_new_tokens=8, batch_size=64)
    prompts, first, second = ladder_pairs(tiny_world, ["student", "g1", "g2"], "validation", sampling, seeds=[0])
    n = len(tiny_world.prompts["validation"])
    assert len(prompts) == 2 * n and prompts[:n] == list(tiny_world.prompts["validation"])
    assert first[n:] != second[n:] and second[n:] == first[:n]  # g1 is the baseline of the second step

    few = ladder_pairs(tiny_world, ["student", "g1", "g2"], "validation", sampling, seeds=[0], max_pairs=5)
    assert len(few[0]) == 5 and set(zip(*few)) <= set(zip(prompts, first, second))
