"""Notebook 03's orchestration without the notebook: ExpoExperiment on the tiny world with a handful of prompts
and pairs and a reward model that prefers fewer words (so every reward is minus a length, exactly), and the small
helpers its steps use, on hand-made inputs."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from mfnb import expo
from mfnb.core import paths
from mfnb.core.params import ParamsError

ROOT = paths.project_root()
CONTROL = "50%, lr 0.002"
BIG = 50.0   # the grid's one alpha != 0: large enough that a one-step adapter's extrapolation changes answers
SEEDS = [0, 1]  # two training seeds: every model trained, swept and tested per seed


def _params(**changes):
    values = yaml.safe_load((ROOT / "params" / "tiny" / "03_expo_alpha_curves.yaml").read_text())
    values.update(preference={**values["preference"], "n_pairs": 32}, fractions=[0.5, 1.0],
                  dpo={**values["dpo"], "batch_size": 16, "warmup_ratio": 0.0}, lr_probe=[2e-3],
                  figure6={"fractions": [0.5], "lrs": [2e-3], "epochs": []}, alphas=[0.0, BIG], sweep_seeds=[0],
                  report_seeds=[0], n_select=6, n_report=6, n_boot=100, judge={**values["judge"], "cache": False},
                  train_seeds=SEEDS)
    values.update(changes)
    return expo.ExpoParams.validate_mapping(values)


class FewerWords:
    """A reward model that scores a response by minus its number of words."""

    model_name = "fewer-words"

    def score(self, prompts, responses):
        return [-float(len(r.split())) for r in responses]


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory):
    """Every step of notebook 03, in its order, once: (experiment, the tables each step returned)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFNB_CACHE", str(tmp_path_factory.mktemp("cache")))
        exp = expo.ExpoExperiment(_params(), world=tiny_world, reward=FewerWords())
        out = {"runs": exp.train_adapters(progress=False)}
        out["again"] = exp.train_adapters(progress=False)
        out["sweeps"] = exp.alpha_sweeps(progress=False)
        out["alpha_table"] = exp.choose_alpha()
        out["optimal"] = exp.optimal_alphas()
        out["accuracy"] = exp.reward_model_accuracy()
        out["role_scores"] = exp.role_scores()
        out["with_sweeps"] = exp.accuracy_on_sweeps(out["accuracy"])
        out["models"], out["alphas"] = exp.test_models(1, progress=False)
        out["table1"] = exp.table1(progress=False)
        out["comparisons"] = exp.comparisons()
        out["examples"] = exp.examples()
        out["probe"] = exp.lr_probe(progress=False)
        out["shift"] = exp.alpha_shift()
        out["claims"] = exp.claims()
        out["verdicts"] = expo.overall(out["claims"])
        out["seed_claims"] = exp.seed_claims(out["claims"])
        yield exp, out


# ------------------------------------------------------------------------------------------ the DPO models


def test_adapters_one_row_per_model_and_cached_by_the_same_keys(run, tiny_world):
    exp, out = run
    runs = out["runs"]
    assert runs.columns.tolist() == ["model", "train_seed", "data", "control", "pairs", "lr", "epochs", "steps",
                                     "train_loss", "reward_margin", "delta_norm", "train_seconds", "cached"]
    assert runs["model"].tolist() == ["50%", "100%", CONTROL] * 2 and runs["train_seed"].tolist() == [0] * 3 + [1] * 3
    assert runs["data"].tolist() == ["50%", "100%", "50%"] * 2 and runs["control"].tolist() == ["-", "-", "lr 0.002"] * 2
    assert runs["pairs"].tolist() == [16, 32, 16] * 2 and runs["steps"].tolist() == [1, 2, 1] * 2
    assert runs["lr"].tolist() == [5e-4, 5e-4, 2e-3] * 2 and runs["epochs"].tolist() == [1.0] * 6
    assert not runs["cached"].any() and out["again"]["cached"].all()
    pd.testing.assert_frame_equal(runs.drop(columns="cached"), out["again"].drop(columns="cached"))
    assert (runs["delta_norm"] > 0).all()
    for seed in SEEDS:
        rows = runs[runs["train_seed"] == seed]
        assert exp.delta_norms[seed] == dict(zip(rows["model"], rows["delta_norm"]))
        for v in exp.variants:  # the notebook's cache keys
            assert exp.adapters[seed][v.key] == expo.adapter_path(tiny_world, exp.P, v.fraction, v.lr, epochs=v.epochs,
                                                                  seed=seed)
    # each seed trains on its own draw of the data: the 50% models see different pairs, the 100% ones the same set
    assert exp.adapters[0]["50%"] != exp.adapters[1]["50%"] and runs["delta_norm"].nunique() == 6


def test_preference_rows_and_their_length_bias(run, tiny_world):
    exp, _ = run
    assert exp.preference_rows == expo.preference_rows(tiny_world, exp.P.preference) and len(exp.preference_rows) == 32
    other = exp.seed_preference_rows(1)
    assert other == expo.preference_rows(tiny_world, exp.P.preference, 1) and other != exp.preference_rows
    # 32 pairs of many more training prompts: each seed draws its own 32, and seed 0 keeps the single-seed order
    assert sorted(map(str, other)) != sorted(map(str, exp.preference_rows)) and len(other) == 32
    words = [len(r["chosen"].split()) - len(r["rejected"].split()) for r in exp.preference_rows]
    assert expo.length_bias(exp.preference_rows) == pytest.approx(sum(words) / 32)


# ------------------------------------------------------------------------------- sweeps and the chosen alpha


def test_sweeps_cover_every_model_and_alpha(run):
    exp, out = run
    sweeps = out["sweeps"]
    assert list(zip(sweeps["train_seed"], sweeps["model"], sweeps["alpha"])) == \
        [(s, m, a) for s in SEEDS for m in ("50%", "100%", CONTROL) for a in (0.0, BIG)]
    assert (sweeps["n"] == 6).all() and sweeps["control"].tolist() == (["-"] * 4 + ["lr 0.002"] * 2) * 2
    assert sweeps["reward"].tolist() == (-sweeps["length_words"]).tolist()  # the reward counts words
    assert sweeps["delta_norm"].tolist() == [exp.delta_norms[s][m] for s, m in zip(sweeps["train_seed"], sweeps["model"])]
    assert exp.sweeps["model"].tolist() == ["50%", "50%", "100%", "100%"] * 2 and exp.sweeps.index.tolist() == [*range(8)]
    mean = expo.seed_mean(sweeps)  # one row per model and alpha, the mean of the seeds
    assert list(zip(mean["model"], mean["alpha"])) == [(m, a) for m in ("50%", "100%", CONTROL) for a in (0.0, BIG)]
    both = sweeps[(sweeps["model"] == "50%") & (sweeps["alpha"] == BIG)]["reward"]
    assert mean.loc[(mean["model"] == "50%") & (mean["alpha"] == BIG), "reward"].item() == pytest.approx(both.mean())
    assert exp.sft_metrics["n"] == 6 and exp.sft_metrics["reward"] == -exp.sft_metrics["length_words"]
    assert exp.control_keys == ["50%", CONTROL]


def test_alpha_choice_and_the_optimal_alpha_table(run):
    exp, out = run
    table, optimal = out["alpha_table"], out["optimal"]
    assert table["model"].tolist() == ["50%", "100%", CONTROL] * 2 and set(table["alpha"]) <= {0.0, BIG}
    assert table.columns[:2].tolist() == ["model", "train_seed"] and table["train_seed"].tolist() == [0] * 3 + [1] * 3
    assert table["extrapolated_norm"].tolist() == [(1 + a) * n for a, n in zip(table["alpha"], table["delta_norm"])]
    for seed in SEEDS:
        rows = table[table["train_seed"] == seed]
        assert exp.seed_chosen(seed) == dict(zip(rows["model"], rows["alpha"]))
    assert exp.chosen == {k: (exp.seed_chosen(0)[k] + exp.seed_chosen(1)[k]) / 2 for k in exp.chosen}  # median of 2
    assert optimal["data"].tolist() == ["50%", "100%"] * 2 and optimal["train_seed"].tolist() == [0, 0, 1, 1]
    assert optimal["alpha_by_reward"].tolist() == [exp.seed_chosen(s)[d] for s, d in zip(optimal["train_seed"],
                                                                                         optimal["data"])]
    assert optimal[["alpha_low", "alpha_high"]].to_numpy().tolist() == \
        table[table["model"] != CONTROL][["alpha_low", "alpha_high"]].to_numpy().tolist()
    shift = out["shift"].iloc[0]
    differences = [exp.seed_chosen(s)["50%"] - exp.seed_chosen(s)[CONTROL] for s in SEEDS]
    assert shift["control"] == CONTROL and shift["seeds"] == 2
    assert shift["difference"] == pytest.approx(sum(differences) / 2)
    summary = exp.alpha_summary().set_index("model")
    assert summary.loc["50%", "alpha"] == pytest.approx((exp.seed_chosen(0)["50%"] + exp.seed_chosen(1)["50%"]) / 2)
    assert summary.loc["50%", "delta_norm"] == pytest.approx((exp.delta_norms[0]["50%"] + exp.delta_norms[1]["50%"]) / 2)


def test_reward_model_checks(run, tiny_world):
    exp, out = run
    accuracy = out["accuracy"]
    assert accuracy["pairs_from"].tolist() == ["perturbed answers (like its training pairs)",
                                               "samples of the world's models (student, g1, g2, g3)"]
    assert out["role_scores"]["model"].tolist() == tiny_world.roles
    assert (out["role_scores"]["reward"] == -out["role_scores"]["length_words"]).all()
    with_sweeps = out["with_sweeps"]
    assert with_sweeps.iloc[:2].equals(accuracy) and with_sweeps["pairs_from"].iloc[2] == \
        "ExPO responses at alpha vs at alpha = 0"
    assert 0 < with_sweeps["pairs"].iloc[2] <= 2 * 2 * 6  # 2 fractions x 2 training seeds x one alpha != 0 x 6 prompts


# ------------------------------------------------------------------------------------------- Table 1


def test_test_models_in_table1_order(run):
    exp, out = run
    oracle = " (oracle alpha)"
    names = ["SFT", "DPO(100% data)", "DPO(100% data)+ExPO", "DPO(100% data)+ExPO" + oracle, "DPO(50% data)",
             "DPO(50% data)+ExPO", "DPO(50% data)+ExPO" + oracle, "DPO(50% data, lr 0.002)",
             "DPO(50% data, lr 0.002)+ExPO"]
    assert list(out["models"]) == names[1:] and out["table1"]["model"].tolist() == names
    chosen = exp.seed_chosen(1)  # test_models(1): the second training seed's models at its own choices
    by_quality = exp.seed_oracle_chosen(1)  # the oracle arm: default models only, alpha by the known quality
    assert set(by_quality) == {"50%", "100%"} and set(by_quality.values()) <= {0.0, BIG}
    assert by_quality == {k: exp.oracle_choice[1].point[k] for k in ("50%", "100%")}
    assert out["alphas"] == {"DPO(100% data)": 0.0, "DPO(100% data)+ExPO": chosen["100%"],
                             "DPO(100% data)+ExPO" + oracle: by_quality["100%"],
                             "DPO(50% data)": 0.0, "DPO(50% data)+ExPO": chosen["50%"],
                             "DPO(50% data)+ExPO" + oracle: by_quality["50%"],
                             "DPO(50% data, lr 0.002)": 0.0, "DPO(50% data, lr 0.002)+ExPO": chosen[CONTROL]}
    for key, name in (("50%", "DPO(50% data)"), (CONTROL, "DPO(50% data, lr 0.002)")):
        at = exp.test_responses(key, sorted({0.0, chosen[key]}), 1)
        assert out["models"][name] == at[0.0] and out["models"][name + "+ExPO"] == at[chosen[key]]
    assert exp.default_rows == ["SFT", "DPO(50% data)", "DPO(50% data)+ExPO", "DPO(50% data)+ExPO" + oracle,
                                "DPO(100% data)", "DPO(100% data)+ExPO", "DPO(100% data)+ExPO" + oracle]
    assert exp.control_rows == names[7:]
    assert exp.control_beside == ["DPO(50% data)+ExPO"] and exp.full_model == "DPO(100% data)"


def test_table1_counts_every_judgement(run):
    exp, out = run
    table1 = out["table1"]
    samples = [6] + [12] * 8  # the SFT model once, every DPO model per training seed
    assert (table1["wins"] + table1["ties"] + table1["losses"]).tolist() == samples and table1["samples"].tolist() == samples
    medians = {n: (a + exp.test_models(0, progress=False)[1][n]) / 2 for n, a in out["alphas"].items()}
    assert table1["alpha"].tolist() == [-1.0, *medians.values()]
    assert table1["alpha_per_seed"].tolist()[:3] == ["", "0, 0", f"{exp.seed_chosen(0)['100%']:g}, "
                                                                   f"{exp.seed_chosen(1)['100%']:g}"]
    assert table1["reward"].tolist() == pytest.approx((-table1["length_words"]).tolist())
    # the SFT model stands beside every seed; a DPO model's value is its seeds' mean
    stats = exp.stats
    assert stats.train_seeds == SEEDS and stats.seed_spread("SFT", "reward") == [stats.stat("SFT", "reward")[0]] * 2
    spread = stats.seed_spread("DPO(50% data)", "reward")
    assert stats.interval("DPO(50% data)", "reward")[0] == pytest.approx(sum(spread) / 2)


def test_comparison_pairs_and_their_differences(run):
    exp, out = run
    assert exp.comparison_pairs() == [("DPO(50% data)+ExPO", "DPO(50% data)"),
                                      ("DPO(100% data)+ExPO", "DPO(100% data)"),
                                      ("DPO(50% data)+ExPO (oracle alpha)", "DPO(50% data)"),
                                      ("DPO(100% data)+ExPO (oracle alpha)", "DPO(100% data)"),
                                      ("DPO(50% data)+ExPO", "DPO(100% data)"),
                                      ("DPO(50% data)+ExPO", "DPO(50% data, lr 0.002)"),
                                      ("DPO(50% data)+ExPO", "DPO(50% data, lr 0.002)+ExPO")]
    comparison = out["comparisons"]
    assert list(dict.fromkeys(zip(comparison["a"], comparison["b"]))) == exp.comparison_pairs()
    assert comparison["difference"].tolist() == pytest.approx((comparison["a_value"] - comparison["b_value"]).tolist())


def test_comparison_pairs_without_full_data_or_control(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path))
    exp = expo.ExpoExperiment(_params(fractions=[0.25, 0.5], figure6={}), world=tiny_world, reward=FewerWords())
    assert exp.full_model is None and exp.controls == [] and exp.control_keys == []
    assert exp.comparison_pairs()[:2] == [("DPO(25% data)+ExPO", "DPO(25% data)"),
                                          ("DPO(50% data)+ExPO", "DPO(50% data)")]
    assert exp.default_rows[:3] == ["SFT", "DPO(25% data)", "DPO(25% data)+ExPO"]


# ------------------------------------------------------------------------- examples, learning rate, claims


def test_examples_of_the_fraction_closest_to_the_papers_best(run):
    exp, out = run
    examples = out["examples"]
    show = sorted({0.0, exp.seed_chosen(0)["50%"], BIG})
    columns = ["prompt", "SFT"] + [c for a in show for c in (f"50%, alpha={a:g}", f"q(alpha={a:g})")]
    assert examples.columns.tolist() == columns and len(examples) == 6
    assert examples["prompt"].tolist() == exp.select_prompts


def test_lr_probe_reuses_our_sweep_and_sweeps_the_others(run):
    exp, out = run
    probe = out["probe"]
    assert probe["lr"].tolist() == [5e-4, 2e-3] and probe["used"].tolist() == [True, False]
    assert not probe["paper"].any() and probe["alpha_min"].tolist() == [0.0, 0.0]
    full = exp.sweeps[(exp.sweeps["fraction"] == 1.0) & (exp.sweeps["train_seed"] == 0)].set_index("alpha")
    ours = probe.iloc[0]
    assert ours["reward_at_alpha_min"] == full.loc[0.0, "reward"]
    assert ours["reward_at_chosen"] == full.loc[ours["alpha_by_reward"], "reward"]
    assert ours["delta_norm"] == exp.delta_norms[0]["100%"]
    assert probe["alpha_by_reward"].isin([0.0, BIG]).all() and probe["quality_at_chosen"].notna().all()


def test_claims_and_findings(run):
    exp, out = run
    claims, verdicts = out["claims"], out["verdicts"]
    assert claims.columns.tolist() == list(expo.CLAIM_COLUMNS)
    assert claims["source"].tolist()[:2] == ["Figure 5, Table 3", "Section 3.3, Figure 5"]
    assert claims.loc[claims["source"] == "Figure 6", "scope"].tolist() == [CONTROL, CONTROL]
    assert set(claims["verdict"]) <= {*expo.VERDICTS, expo.NOT_TESTABLE}
    assert verdicts["claim"].tolist()[0] == expo.TREND_CLAIM
    seeds = out["seed_claims"]
    assert seeds.columns.tolist() == ["claim", "source", "scope", "verdict", "seed 0", "seed 1", "moved",
                                      "seeds_resolving"]
    assert seeds[["claim", "scope", "verdict"]].equals(claims[["claim", "scope", "verdict"]])
    assert seeds["moved"].tolist() == [(r["seed 0"], r["seed 1"]) != (r["verdict"],) * 2 for _, r in seeds.iterrows()]
    lines = exp.findings(verdicts, claims, out["shift"], out["optimal"], out["probe"], seed_claims=seeds)
    assert lines[:len(verdicts)] == expo.verdict_lines(verdicts)
    assert lines[len(verdicts)].startswith("- **One training seed alone** (2 seeds): ")
    assert any("Why does the optimal alpha fall with data?" in line for line in lines)
    assert any(line.startswith("- **Length**") for line in lines)
    assert lines[-1].startswith("- Judge: ") and "cache hits" in lines[-1]
    doubted = exp.claims("at chance")
    oracle = doubted["claim"] == expo.ORACLE_CLAIM  # the oracle arm has no reward model to doubt
    assert doubted.loc[oracle, "scope"].tolist() == ["50%", "100%"] and doubted.loc[oracle, "verdict"].tolist() == \
        claims.loc[claims["claim"] == expo.ORACLE_CLAIM, "verdict"].tolist()
    assert set(doubted.loc[~oracle, "verdict"]) == {expo.NOT_TESTABLE}
    assert doubted.loc[0, "ours"].endswith("not testable here: at chance")


def test_a_world_without_the_sft_role_fails_at_construction(tiny_world):
    with pytest.raises(ParamsError, match="parameter 'sft_role'"):
        expo.ExpoExperiment(_params(sft_role="nobody"), world=tiny_world)


# ----------------------------------------------------------------------------------- the small helpers


def test_sweep_pairs_set_every_alpha_against_alpha_zero():
    answers = {0.0: ["a0", "b0"], 1.0: ["a1", "b1"], 3.0: ["a3", "b3"]}
    assert expo.sweep_pairs(["p", "q"], answers) == [
        {"prompt": "p", "chosen": "a1", "rejected": "a0"}, {"prompt": "q", "chosen": "b1", "rejected": "b0"},
        {"prompt": "p", "chosen": "a3", "rejected": "a0"}, {"prompt": "q", "chosen": "b3", "rejected": "b0"}]
    assert expo.sweep_pairs(["p"], {1.0: ["a1"]}) == []
    assert expo.sweep_pairs(["p"], {0.0: ["a0"]}) == []


def test_length_bias_by_hand():
    rows = [{"chosen": "a b c", "rejected": "a"}, {"chosen": "a", "rejected": "a b"}]
    assert expo.length_bias(rows) == 0.5


def test_verdict_and_claim_lines_by_hand():
    verdicts = pd.DataFrame([
        {"claim": "x falls", "source": "Figure 5", "verdict": "reproduced", "reproduced": 1, "reversed": 0,
         "inconclusive": 0},
        {"claim": "y helps", "source": "Table 1", "verdict": "inconclusive", "reproduced": 2, "reversed": 0,
         "inconclusive": 1}])
    assert expo.verdict_lines(verdicts) == [
        "- **x falls** (Figure 5): **reproduced**",
        "- **y helps** (Table 1): **inconclusive** (2 reproduced, 0 reversed, 1 inconclusive)"]
    claims = expo.claims_table([{"claim": "y helps", "source": "Table 1", "scope": "10%", "paper": "+0.1",
                                 "ours": "+0.2 [0.1, 0.3]", "verdict": "reproduced"}])
    assert expo.claim_lines(claims) == [
        "- **y helps**, 10% (Table 1; reproduced). Paper: +0.1. Ours: +0.2 [0.1, 0.3]."]


def test_winrate_rows_stack_both_win_rates_of_the_chosen_models():
    table1 = pd.DataFrame({"model": ["SFT", "DPO", "control"], "win_rate": [0.1, 0.2, 0.3],
                           "win_rate_low": [0.0, 0.1, 0.2], "win_rate_high": [0.2, 0.3, 0.4],
                           "lc_win_rate": [0.15, 0.25, 0.35], "lc_win_rate_low": [0.05, 0.15, 0.25],
                           "lc_win_rate_high": [0.25, 0.35, 0.45], "paper_win_rate": [0.05, math.nan, math.nan],
                           "paper_lc_win_rate": [0.06, math.nan, math.nan]})
    rows = expo.winrate_rows(table1, ["SFT", "DPO"])
    assert rows["model"].tolist() == ["SFT", "DPO", "SFT", "DPO"]
    assert rows["metric"].tolist() == ["win rate", "win rate", "LC win rate", "LC win rate"]
    assert rows["value"].tolist() == [0.1, 0.2, 0.15, 0.25] and rows["low"].tolist() == [0.0, 0.1, 0.05, 0.15]
    assert rows["high"].tolist() == [0.2, 0.3, 0.25, 0.35] and rows["paper"].tolist()[::2] == [0.05, 0.06]
    assert rows.index.tolist() == [0, 1, 3, 4]
