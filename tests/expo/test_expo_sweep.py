"""Notebook 03's machinery: the alpha sweep's exact ends, its cache, adapters cached by config, the
length-controlled win rate on hand-made cases, optimal-alpha bookkeeping and ExpoParams' refusals."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml

from mfnb import expo
from mfnb.core import paths
from mfnb.core.params import ParamsError
from mfnb.models import LoraParams, SamplingParams, attach_lora, generate
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

ROOT = paths.project_root()
PROMPTS = ["sort these words: fox cat owl . answer:", "repeat twice: red fig . answer:",
           "count the animals in: cat red fig . answer:", "say the last word of: elk owl lime . answer:"]
SAMPLING = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0, batch_size=2)




def lora_model(seed: int = 0):
    """A random tiny Llama with a LoRA adapter whose B is random too (a fresh adapter's B is zero)."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    base = _new_model(TinyWorldParams(), tokenizer).eval()
    model = attach_lora(base, LoraParams(r=4, alpha=8)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model, tokenizer


# ------------------------------------------------------------------------------------------- sweeps


def test_sweep_ends_are_the_aligned_and_the_sft_model():
    model, tokenizer = lora_model()
    answers = expo.sweep_responses(model, tokenizer, PROMPTS, [-1.0, 0.0, 3.0], SAMPLING, seed=5, progress=False)
    assert answers[0.0] == generate(model, tokenizer, PROMPTS, SAMPLING, seed=5, show_progress=False)
    with model.disable_adapter():
        sft = generate(model, tokenizer, PROMPTS, SAMPLING, seed=5, show_progress=False)
    assert answers[-1.0] == sft
    assert answers[3.0] != answers[0.0]  # the adapter really is scaled in between
    # and restored afterwards
    assert expo.sweep_responses(model, tokenizer, PROMPTS, [0.0], SAMPLING, seed=5, progress=False)[0.0] == answers[0.0]


def test_alpha_sweep_table_and_cache(tmp_path, monkeypatch):
    model, tokenizer = lora_model(1)
    reward_fn = lambda prompts, responses: [float(len(r.split())) for r in responses]  # noqa: E731
    table = expo.alpha_sweep(model, tokenizer, PROMPTS, [0.0, 2.0], SAMPLING, seeds=[0, 1], reward_fn=reward_fn,
                             quality_fn=lambda p, r: 0.5, cache=tmp_path, progress=False)
    assert table["alpha"].tolist() == [0.0, 2.0] and (table["n"] == 8).all()
    assert table["reward"].tolist() == table["length_words"].tolist()  # reward = words, here
    assert (table["quality"] == 0.5).all() and "length_tokens" in table
    assert len(list(tmp_path.glob("alpha*.json"))) == 4  # 2 alphas x 2 seeds

    def no_generation(*args, **kwargs):
        raise AssertionError("cached responses must not be generated again")

    monkeypatch.setattr("mfnb.models.generate", no_generation)
    again = expo.alpha_sweep(model, tokenizer, PROMPTS, [0.0, 2.0], SAMPLING, seeds=[0, 1], reward_fn=reward_fn,
                             quality_fn=lambda p, r: 0.5, cache=tmp_path, progress=False)
    pd.testing.assert_frame_equal(table, again)


def test_optimal_alpha_and_table():
    sweep = pd.DataFrame({"alpha": [0.0, 1.0, 2.0, 5.0], "reward": [1.0, 3.0, 3.0, 2.0],
                          "quality": [0.1, 0.5, 0.7, 0.2], "length_words": [3.0, 3.0, 4.0, 9.0]})
    assert expo.optimal_alpha(sweep) == 1.0  # tie: the smaller alpha
    assert expo.optimal_alpha(sweep, "quality") == 2.0
    both = pd.concat([sweep.assign(data="10%"), sweep.assign(data="100%", reward=[4.0, 3.0, 2.0, 1.0])])
    table = expo.optimal_alpha_table(both)
    assert table["data"].tolist() == ["10%", "100%"]
    assert table["alpha_by_reward"].tolist() == [1.0, 0.0]
    assert table["alpha_by_quality"].tolist() == [2.0, 2.0]
    assert table["quality_at_chosen"].tolist() == [0.5, 0.1]
    assert table["paper_optimal_alpha"].tolist() == [8.0, 0.3]
    assert not table["at_grid_edge"].any()
    assert expo.is_non_increasing([30, 15, 7, 1, 0]) and not expo.is_non_increasing([1, 2])


def test_paper_grid_holds_table3():
    grid = expo.paper_alpha_grid()
    assert {8.0, 2.5, 0.3, 10.0, 0.1} <= set(grid)
    tiny = yaml.safe_load((ROOT / "params" / "tiny" / "03_expo_alpha_curves.yaml").read_text())
    assert set(grid) <= set(tiny["alphas"]) and 0.0 in tiny["alphas"]


# ---------------------------------------------------------------------------------- LC win rate


def test_lc_equals_raw_without_length_differences():
    outcomes = ["win"] * 6 + ["tie"] * 2 + ["lose"] * 2
    out = expo.length_controlled_win_rate(outcomes, [3] * 10, [3] * 10)
    assert out["win_rate"] == pytest.approx(0.7)
    assert out["lc_win_rate"] == pytest.approx(0.7, abs=1e-3)


def test_lc_removes_a_pure_length_effect():
    # longer in 80 pairs, winning 70% of them; shorter in 20, winning 30%: no skill beyond length
    outcomes = ["win"] * 56 + ["lose"] * 24 + ["win"] * 6 + ["lose"] * 14
    cand = [5] * 80 + [1] * 20
    base = [1] * 80 + [5] * 20
    out = expo.length_controlled_win_rate(outcomes, cand, base)
    assert out["win_rate"] == pytest.approx(0.62)
    assert out["lc_win_rate"] == pytest.approx(0.5, abs=1e-3)
    assert out["length_coef"] > 0
    # the same length-loving judge and a mostly shorter candidate: its raw win rate is held down by length
    short = expo.length_controlled_win_rate(["win"] * 24 + ["lose"] * 56 + ["win"] * 14 + ["lose"] * 6, base, cand)
    assert short["win_rate"] == pytest.approx(0.38)
    assert short["lc_win_rate"] == pytest.approx(0.5, abs=1e-3) and short["length_coef"] > 0


def test_lc_keeps_skill_that_length_does_not_explain():
    # lengths independent of the outcome: wins at 75% whatever the length
    outcomes = (["win"] * 3 + ["lose"]) * 25
    cand = [4] * 4 * 12 + [2] * 4 * 13
    base = [3] * 100
    out = expo.length_controlled_win_rate(outcomes, cand, base)
    assert out["lc_win_rate"] == pytest.approx(0.75, abs=1e-3)
    assert abs(out["length_coef"]) < 1e-3


def test_lc_edge_cases():
    assert expo.length_controlled_win_rate(["win"] * 10, [3, 4] * 5, [2, 5] * 5)["lc_win_rate"] > 0.99
    failed = expo.length_controlled_win_rate(["failed", None, "win", "lose"], [1, 1, 2, 2], [1, 1, 2, 2])
    assert failed["n"] == 2 and failed["lc_win_rate"] == pytest.approx(0.5, abs=1e-3)
    assert math.isnan(expo.length_controlled_win_rate(["failed"], [1], [1])["lc_win_rate"])
    with pytest.raises(ValueError, match="differ in length"):
        expo.length_controlled_win_rate(["win"], [1, 2], [1])


# ------------------------------------------------------------------------------------------ params


def _tiny03(**changes) -> dict:
    values = yaml.safe_load((ROOT / "params" / "tiny" / "03_expo_alpha_curves.yaml").read_text())
    values.update(changes)
    return values


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_alpha_names_the_field(bad):
    with pytest.raises(ParamsError, match=r"parameter 'alphas\.1': Input should be a finite number"):
        expo.ExpoParams.validate_mapping(_tiny03(alphas=[0.0, bad]))


def test_empty_grid_and_bad_fractions_name_the_field():
    with pytest.raises(ParamsError, match=r"parameter 'alphas': List should have at least 1 item"):
        expo.ExpoParams.validate_mapping(_tiny03(alphas=[]))
    with pytest.raises(ParamsError, match=r"parameter 'fractions\.0': Input should be greater than 0"):
        expo.ExpoParams.validate_mapping(_tiny03(fractions=[0.0, 0.5]))
    with pytest.raises(ParamsError, match=r"parameter 'fractions\.1': Input should be less than or equal to 1"):
        expo.ExpoParams.validate_mapping(_tiny03(fractions=[0.5, 1.5]))
    with pytest.raises(ParamsError, match=r"parameter 'fractions\.0': Input should be greater than 0"):
        expo.ExpoParams.validate_mapping(_tiny03(fractions=[-0.1]))
    with pytest.raises(ParamsError, match=r"parameter 'fractions': List should have at least 1 item"):
        expo.ExpoParams.validate_mapping(_tiny03(fractions=[]))
    with pytest.raises(ParamsError, match=r"parameter 'fractions': Value error, fractions must be distinct"):
        expo.ExpoParams.validate_mapping(_tiny03(fractions=[0.5, 0.5]))
    with pytest.raises(ParamsError, match=r"parameter 'alphas': Value error, alphas must be distinct"):
        expo.ExpoParams.validate_mapping(_tiny03(alphas=[1.0, 1.0]))
    with pytest.raises(ParamsError, match=r"parameter 'lr_probe\.0'"):
        expo.ExpoParams.validate_mapping(_tiny03(lr_probe=[0.0]))
    with pytest.raises(ParamsError, match=r"unknown parameter 'alpha'"):
        expo.ExpoParams.validate_mapping(_tiny03(alpha=[1.0]))


def test_tiny_params_validate():
    params = expo.ExpoParams.validate_mapping(_tiny03())
    assert params.dpo.beta == 0.01 and params.dpo.epochs == 1.0  # the paper's
    assert params.fractions == [0.05, 0.1, 0.2, 0.4, 1.0]


# ------------------------------------------------------------------------- data and cached adapters


def test_preference_rows_are_nested_correct_vs_habit(tiny_world):
    from mfnb.worlds.tiny import task as tasks

    data = expo.PreferenceDataParams(n_pairs=200, seed=3)
    rows = expo.preference_rows(tiny_world, data)
    assert len(rows) == 200 and rows == expo.preference_rows(tiny_world, data)
    train = set(tiny_world.prompts["train"])
    for row in rows:
        example = tasks.parse_prompt(row["prompt"])
        assert row["prompt"] in train
        assert (row["chosen"], row["rejected"]) == (example.answer(), example.answer(habit=True))
        assert tiny_world.quality(row["prompt"], row["chosen"]) == 1.0 > tiny_world.quality(row["prompt"], row["rejected"])
    assert [len(expo.fraction_rows(rows, f)) for f in (0.05, 0.1, 1.0)] == [10, 20, 200]
    assert expo.fraction_rows(rows, 0.1) == rows[:20]  # nested
    with pytest.raises(ValueError, match="exceeds the world's"):
        expo.preference_rows(tiny_world, expo.PreferenceDataParams(n_pairs=10**6))


def test_adapters_are_cached_by_config(tiny_world, tmp_path, monkeypatch):
    params = expo.ExpoParams.validate_mapping(_tiny03(preference={"n_pairs": 64, "seed": 0},
                                                      dpo={**_tiny03()["dpo"], "batch_size": 16}))
    path = expo.train_dpo_adapter(tiny_world, params, 0.5, cache_root=tmp_path)
    info = expo.adapter_info(path)
    assert info["pairs"] == 32 and info["lr"] == params.dpo.lr
    model, tokenizer = expo.load_aligned(tiny_world, params.sft_role, path)
    assert expo.lora_delta_norm(model) > 0
    assert not any(p.requires_grad for p in model.parameters())

    def no_training(*args, **kwargs):
        raise AssertionError("a cached adapter must not be retrained")

    monkeypatch.setattr("mfnb.training.dpo.dpo_update", no_training)
    assert expo.train_dpo_adapter(tiny_world, params, 0.5, cache_root=tmp_path) == path
    # other fraction, learning rate or data: other adapters
    others = {expo.adapter_path(tiny_world, params, 1.0, cache_root=tmp_path),
              expo.adapter_path(tiny_world, params, 0.5, lr=5e-7, cache_root=tmp_path),
              expo.adapter_path(tiny_world, params, 0.5, cache_root=tmp_path, seed=1)}
    assert path not in others and len(others) == 3
    # a killed save leaves nothing that looks finished: only complete folders carry dpo.json
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [path.name]


def test_fresh_adapter_has_zero_delta():
    model, _ = lora_model()
    tokenizer = build_tokenizer()
    fresh = attach_lora(_new_model(TinyWorldParams(), tokenizer), LoraParams())
    assert expo.lora_delta_norm(fresh) == 0.0
    assert expo.lora_delta_norm(model) > 0


def test_paper_table1_names():
    paper = expo.paper_table1()
    assert paper["DPO(100% data)+ExPO"]["paper_lc_win_rate"] == pytest.approx(0.202)
    assert paper["DPO(20% data)"]["paper_reward"] == pytest.approx(4.70)
    assert set(paper) >= {"SFT", "DPO(10% data)+ExPO"}


def test_paper_optimal_alpha_is_read_from_the_reference_table():
    assert expo.paper_optimal_alpha() == {"10%": 8.0, "20%": 2.5, "100%": 0.3}
