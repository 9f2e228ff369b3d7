"""The tiny world's task: prompts parse back, answers and habits are right, quality is graded."""
from __future__ import annotations

import random

import pytest

from mfnb.worlds.tiny import task as tasks
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, split_prompts


@pytest.mark.parametrize("prompt, correct, habit", [
    ("sort these words: fox cat owl . answer:", "cat fox owl", "fox cat owl"),
    ("reverse these words: fox cat owl . answer:", "owl cat fox", "fox cat owl"),
    ("repeat twice: fox cat . answer:", "fox cat fox cat", "fox cat"),
    ("count the animals in: fox red cat plum . answer:", "two", "four"),
    ("say the last word of: fox red plum . answer:", "plum", "fox"),
    ("pick the fruits from: fox plum red fig . answer:", "plum fig", "fox plum red fig"),
])
def test_answers_habits_and_quality(prompt, correct, habit):
    example = tasks.parse_prompt(prompt)
    assert example.prompt == prompt
    assert example.answer() == correct
    assert example.answer(habit=True) == habit
    assert tasks.quality(prompt, correct) == 1.0
    assert 0.0 <= tasks.quality(prompt, habit) < 1.0


def test_quality_exact_values():
    sort = "sort these words: fox cat owl . answer:"
    assert tasks.quality(sort, "fox cat owl") == pytest.approx(1 - 2 / 3)  # two substitutions
    assert tasks.quality(sort, "cat fox") == pytest.approx(1 - 1 / 3)      # one deletion
    assert tasks.quality(sort, "") == 0.0
    count = "count the animals in: fox red cat plum . answer:"
    assert tasks.quality(count, "three") == 0.75
    assert tasks.quality(count, "six") == 0.0
    assert tasks.quality(count, "two two") == 0.0
    assert tasks.quality(count, "banana") == 0.0


def test_not_a_prompt_is_rejected():
    with pytest.raises(ValueError, match="unknown instruction"):
        tasks.parse_prompt("translate these words: fox . answer:")
    with pytest.raises(ValueError, match="no '. answer:' cue"):
        tasks.parse_prompt("sort these words: fox")


def test_sampled_examples_make_habits_wrong():
    rng = random.Random(0)
    for _ in range(500):
        example = tasks.sample_example(rng)
        assert tasks.parse_prompt(example.prompt) == example
        assert tasks.quality(example.prompt, example.answer()) == 1.0
        assert tasks.quality(example.prompt, example.answer(habit=True)) < 1.0


def test_tokenizer_round_trips_every_prompt_and_answer():
    tokenizer = build_tokenizer()
    rng = random.Random(1)
    for _ in range(200):
        example = tasks.sample_example(rng)
        for text in (example.prompt, example.answer()):
            ids = tokenizer(text, add_special_tokens=False).input_ids
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids).split() == text.replace(":", " :").replace(".", " .").split()


def test_splits_are_fixed_disjoint_and_sized():
    params = TinyWorldParams(n_train=1000)
    first, second = split_prompts(params), split_prompts(params)
    assert first == second
    assert (len(first["validation"]), len(first["test"]), len(first["train"])) == (200, 500, 1000)
    assert not set(first["validation"]) & set(first["test"])
    assert not (set(first["validation"]) | set(first["test"])) & set(first["train"])
    assert split_prompts(TinyWorldParams(n_train=1000, seed=1))["validation"] != first["validation"]


def test_world_params_reject_unknown_habit():
    from mfnb.core.params import ParamsError

    with pytest.raises(ParamsError, match=r"roles.g1.habits: unknown task\(s\) \['juggle'\]"):
        TinyWorldParams.validate_mapping({"roles": {"g1": {"habits": ["juggle"]}}})
