"""The smol world on SmolLM2 itself (offline): prompts, roles and costs, nested best-of-k experts whose
cost is what was sampled, the student's own stream, the capabilities' data, and bad input."""
from __future__ import annotations

import pytest

from mfnb.core.params import ParamsError
from mfnb.models import SamplingParams
from mfnb.worlds import World, has, make_world
from mfnb.worlds.smol.world import SmolWorld, SmolWorldParams

pytestmark = pytest.mark.smollm2

SMALL = {"kind": "smol", "instructions": {"n_train": 12, "n_validation": 3, "n_test": 3},
         "experts": {"g1": 1, "g2": 2, "g3": 4}}
SAMPLING = SamplingParams(max_new_tokens=10, temperature=0.1, top_p=0.9, batch_size=16)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return SmolWorld(SmolWorldParams.validate_mapping(SMALL, source="world"),
                     cache_root=tmp_path_factory.mktemp("smol"))


def test_protocol_prompts_roles_costs(world):
    assert isinstance(world, World) and world.kind == "smol"
    assert {k: len(v) for k, v in world.prompts.items()} == {"train": 12, "validation": 3, "test": 3}
    prompt = world.prompts["validation"][0]
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert not set(world.prompts["train"]) & set(world.prompts["test"])
    assert world.roles == ["student", "g1", "g2", "g3"]
    assert world.costs == {"student": 1.0, "g1": 1.0, "g2": 2.0, "g3": 4.0}
    assert world.parameters("g3") == 134_515_008
    assert "best of 4" in world.describe("g3")
    assert all(has(world, c) for c in ("quality", "preference_pairs", "reward_model", "reward_pairs", "conflict"))
    # the checker reads the user turn out of the template: an answer that ignores every constraint scores 0
    assert world.quality(prompt, "") == 0.0
    assert make_world(SMALL).key == world.key


def test_experts_are_nested_best_of_k_and_charged_k_samples(world):
    prompts = world.prompts["validation"]
    answers = {r: world.respond(r, prompts, SAMPLING) for r in ("g1", "g2", "g3")}
    for i, p in enumerate(prompts):  # best-of-4 sees best-of-2's samples: never worse under the checker
        q = [world.tasks.score(p, answers[r][i])[:2] for r in ("g1", "g2", "g3")]
        assert q[0] <= q[1] <= q[2]
    assert world.respond("g3", prompts, SAMPLING) == answers["g3"]  # stored: the same answers again
    spent = world.spent("g3", prompts, SAMPLING)
    assert spent["samples"] == 4 * len(prompts) and spent["tokens"] > 0
    assert world.spent("student", prompts, SAMPLING)["samples"] == len(prompts)
    # experts sample at the world's temperature, the student at the caller's
    assert world.expert_sampling(SAMPLING).temperature == 0.7 and SAMPLING.temperature == 0.1


def test_load_gives_a_trainable_student_and_refuses_experts(world):
    model, tokenizer = world.load("student")
    assert tokenizer.padding_side == "left" and any(p.requires_grad for p in model.parameters())
    with pytest.raises(ParamsError, match="best-of-2 sampling, not a model"):
        world.load("g2")
    with pytest.raises(KeyError, match="unknown role 'g9'"):
        world.respond("g9", world.prompts["test"], SAMPLING)


def test_preference_pairs_rank_by_the_checker(world):
    prompts = world.prompts["train"][:3]
    rows = world.preference_pairs(prompts, "checker_best_vs_worst")
    assert [r["prompt"] for r in rows] == prompts
    for r in rows:
        assert world.tasks.score(r["prompt"], r["chosen"])[:2] >= world.tasks.score(r["prompt"], r["rejected"])[:2]
    with pytest.raises(ParamsError, match="preference.source.*checker_best_vs_worst"):
        world.preference_pairs(prompts, "correct_vs_habit")


def test_bad_world_params_name_the_field():
    with pytest.raises(ParamsError, match="world.kind: unknown kind 'smoll'"):
        make_world({"kind": "smoll"})
    with pytest.raises(ParamsError, match="experts"):
        make_world({"kind": "smol", "experts": {"g1": 0}})
    with pytest.raises(ParamsError, match="instruction_ids|instructions"):
        make_world({"kind": "smol", "instructions": {"instruction_ids": ["no:such_id"]}})
