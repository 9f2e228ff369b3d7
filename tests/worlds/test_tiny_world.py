"""The tiny world: cached by config, an ordered fidelity ladder, and room for DPO to teach the student."""
from __future__ import annotations

import random
import time

import pytest

from mfnb.evaluation import win_rate_row
from mfnb.judges import OracleJudge
from mfnb.models import LoraParams, SamplingParams, attach_lora, generate
from mfnb.training.config import DPOParams
from mfnb.training.dpo import dpo_update, preference_dataset
from mfnb.worlds import make_world
from mfnb.worlds.tiny.world import TinyWorld, TinyWorldParams, TrainRecipe

SAMPLING = SamplingParams()


def test_small_world_builds_once_then_loads_from_cache(tmp_path):
    params = TinyWorldParams(n_train=500, base=TrainRecipe(steps=20, lr=3e-3, batch_size=16),
                             finetune=TrainRecipe(steps=5, lr=1e-3, batch_size=16))
    world = TinyWorld(params, cache_root=tmp_path)
    spent = world.build(show_progress=False)
    assert set(spent) == {"base", "student", "g1", "g2", "g3"} and all(s > 0 for s in spent.values())
    assert world.is_built()
    again = TinyWorld(params, cache_root=tmp_path)
    start = time.perf_counter()
    assert again.build(show_progress=False) == {"student": 0.0, "g1": 0.0, "g2": 0.0, "g3": 0.0}
    model, tokenizer = again.load("g3")
    assert time.perf_counter() - start < 10
    assert tokenizer.padding_side == "left" and model.config.num_hidden_layers == params.arch.layers
    # a changed role recipe gets its own folder; the others (and the base) are reused
    changed = TinyWorldParams.validate_mapping({**params.model_dump(), "roles": {
        **{k: v.model_dump() for k, v in params.roles.items()}, "g1": {"habits": ["sort"], "cost": 1.0}}})
    other = TinyWorld(changed, cache_root=tmp_path)
    assert other.model_path("g1") != world.model_path("g1")
    assert other.model_path("g2") == world.model_path("g2")
    assert set(other.build(show_progress=False)) == {"student", "g1", "g2", "g3"}


def test_roles_fine_tuned_in_parallel_processes_equal_one_by_one(tmp_path):
    params = TinyWorldParams(n_train=500, base=TrainRecipe(steps=10, lr=3e-3, batch_size=16),
                             finetune=TrainRecipe(steps=5, lr=1e-3, batch_size=16))
    serial, parallel = TinyWorld(params, cache_root=tmp_path / "one"), TinyWorld(params, cache_root=tmp_path / "two")
    serial.build(show_progress=False, processes=1)
    parallel.build(show_progress=False, processes=2)
    for role in ["base", *params.roles]:
        a, b = (w.model_path(role) / "model.safetensors" for w in (serial, parallel))
        assert a.read_bytes() == b.read_bytes(), role


def test_unknown_role_and_world_kind():
    from mfnb.core.params import ParamsError

    with pytest.raises(KeyError, match="unknown role 'g9'"):
        TinyWorld().model_path("g9")
    with pytest.raises(ParamsError, match=r"world\.kind: unknown kind 'mars'; known kinds: \[.*'tiny'.*\]"):
        make_world({"kind": "mars"})


def _win_rate(world, judge, candidate, baseline):
    prompts = world.prompts["validation"]
    return win_rate_row(judge, prompts, candidate, baseline)["win_rate"]


@pytest.fixture(scope="module")
def validation_responses(tiny_world):
    prompts = tiny_world.prompts["validation"]
    out = {}
    for role in tiny_world.roles:
        model, tokenizer = tiny_world.load(role)
        out[role] = generate(model, tokenizer, prompts, SAMPLING, seed=1, show_progress=False)
    return out


def test_fidelity_ladder_is_ordered(tiny_world, validation_responses):
    judge = OracleJudge(tiny_world.quality, tie_margin=0.05, name=tiny_world.key)
    r = validation_responses
    for baseline, candidate in [("student", "g1"), ("g1", "g2"), ("g2", "g3")]:
        assert _win_rate(tiny_world, judge, r[candidate], r[baseline]) > 0.53, (candidate, baseline)
    assert _win_rate(tiny_world, judge, r["student"], r["g1"]) < 0.35


def test_lora_dpo_on_expert_pairs_raises_student_win_rate(tiny_world, validation_responses):
    """The world leaves room to learn: two LoRA DPO updates (expert chosen, student rejected) move the
    student's validation win rate against g1 measurably."""
    judge = OracleJudge(tiny_world.quality, tie_margin=0.05, name=tiny_world.key)
    g1, tokenizer = tiny_world.load("g1")
    student, _ = tiny_world.load("student")
    policy = attach_lora(student, LoraParams())
    g1_val = validation_responses["g1"]
    before = _win_rate(tiny_world, judge, generate(policy, tokenizer, tiny_world.prompts["validation"], SAMPLING,
                                                   seed=2, show_progress=False), g1_val)
    rng = random.Random(0)
    data: tuple[list, list, list] = ([], [], [])
    for it in range(2):
        prompts = rng.sample(tiny_world.prompts["train"], 512)
        data[0].extend(prompts)
        data[1].extend(generate(g1, tokenizer, prompts, SAMPLING, seed=20 + it, show_progress=False))
        data[2].extend(generate(policy, tokenizer, prompts, SAMPLING, seed=10 + it, show_progress=False))
        dpo_update(policy, tokenizer, preference_dataset(*data), DPOParams(lr=1e-3, batch_size=16), seed=it)
    after = _win_rate(tiny_world, judge, generate(policy, tokenizer, tiny_world.prompts["validation"], SAMPLING,
                                                  seed=2, show_progress=False), g1_val)
    assert after >= before + 0.05, (before, after)
