"""Notebook 03's intervals and verdicts on constructed data: the paired bootstrap over prompts, the
optimal alpha's replicates, the LC win rate refitted per replicate, the verdict rules, the Figure 6
control's models, and the parameters' refusals."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from mfnb import expo
from mfnb.core import paths
from mfnb.core.params import ParamsError
from mfnb.expo import bootstrap
from mfnb.stats import interval_reading

ROOT = paths.project_root()


def _tiny03(**changes):
    values = yaml.safe_load((ROOT / "params" / "tiny" / "03_expo_alpha_curves.yaml").read_text())
    values.update(changes)
    return values


# ------------------------------------------------------------------------------------------ bootstrap


def test_counts_resample_every_prompt_and_are_seeded():
    counts = bootstrap.bootstrap_counts(7, 50, seed=3)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    assert (counts == bootstrap.bootstrap_counts(7, 50, seed=3)).all()
    assert not (counts == bootstrap.bootstrap_counts(7, 50, seed=4)).all()


def test_replicate_means_weight_each_prompt_by_its_count():
    counts = np.array([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    values = np.array([1.0, 2.0, 6.0])
    assert bootstrap.replicate_means(values, counts).tolist() == [3.0, 1.0, pytest.approx(14 / 3)]
    both = bootstrap.replicate_means(np.stack([values, 2 * values]), counts)  # [n_boot, 2]
    assert both.shape == (3, 2) and both[:, 1] == pytest.approx(2 * both[:, 0])


def test_percentile_interval_discrete_ends_are_values_taken():
    reps = np.array([0.0] * 10 + [2.5] * 80 + [7.0] * 10)
    low, high = bootstrap.percentile_interval(reps, 0.95, discrete=True)
    assert (low, high) == (0.0, 7.0)
    low, high = bootstrap.percentile_interval(np.arange(101.0), 0.9)
    assert (low, high) == (pytest.approx(5.0), pytest.approx(95.0))
    assert all(math.isnan(x) for x in bootstrap.percentile_interval([math.nan]))


def test_argmax_takes_the_smallest_option_on_a_tie_and_follows_the_resample():
    # option 0 wins on prompt 0, option 5 on prompt 1; equal means take the smaller option
    values = np.array([[1.0, 0.0], [0.0, 1.0]])           # rows follow `options`
    counts = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0]])
    assert bootstrap.argmax_replicates(values[::-1], counts, [5.0, 0.0]).tolist() == [0.0, 0.0, 5.0]
    assert bootstrap.best_value_replicates(values, counts).tolist() == [0.5, 1.0, 1.0]


def test_rank_correlation_exact_values():
    rho = bootstrap.rank_correlation_replicates([0.05, 0.1, 0.2], np.array([[30.0, 15.0, 7.0], [1.0, 2.0, 3.0],
                                                                             [4.0, 4.0, 4.0], [2.0, 1.0, 1.0]]))
    assert rho[:3].tolist() == [pytest.approx(-1.0), pytest.approx(1.0), 0.0]
    assert rho[3] == pytest.approx(-math.sqrt(3) / 2)  # ranks (3, 1.5, 1.5) against (1, 2, 3)


def test_lc_replicates_with_unit_counts_is_the_point_estimate():
    rng = np.random.default_rng(0)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=(40, 2))
    cand, base = rng.integers(1, 9, size=(40, 2)), rng.integers(1, 9, size=(40, 2))
    point = expo.length_controlled_win_rate(outcomes.ravel().tolist(), cand.ravel().tolist(), base.ravel().tolist())
    reps = bootstrap.lc_replicates(outcomes, cand, base, np.ones((2, 40)))
    assert reps == pytest.approx([point["lc_win_rate"]] * 2, abs=1e-9)
    counts = bootstrap.bootstrap_counts(40, 30, seed=0)
    assert bootstrap.lc_replicates(outcomes, cand, base, counts).shape == (30,)


def test_lc_replicates_drop_failed_judgements():
    outcomes = np.array([[1.0], [math.nan], [0.0], [1.0]])
    lengths = np.full((4, 1), 3.0)  # no length differences: LC = raw win rate over the judged ones
    assert bootstrap.lc_replicates(outcomes, lengths, lengths, np.ones((1, 4)))[0] == pytest.approx(2 / 3, abs=1e-3)


# ------------------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.1, 0.3, 1, "reproduced"), (-0.3, -0.1, 1, "reversed"), (-0.1, 0.2, 1, "inconclusive"),
    (0.0, 0.2, 1, "inconclusive"), (-0.3, -0.1, -1, "reproduced"), (0.1, 0.3, -1, "reversed"),
    (math.nan, math.nan, 1, "inconclusive"),
])
def test_verdict_from_an_interval(low, high, direction, expected):
    assert expo.verdict(low, high, direction) == expected


@pytest.mark.parametrize("verdicts, expected", [
    (["reproduced", "reproduced"], "reproduced"), (["reproduced", "inconclusive"], "inconclusive"),
    (["reversed", "inconclusive"], "reversed"), (["reversed", "reproduced"], "inconclusive"),
    (["inconclusive"], "inconclusive"), ([], "inconclusive"),
])
def test_combine(verdicts, expected):
    assert expo.combine(verdicts) == expected


def _samples(values: dict[str, list[float]], seeds=(0,)):
    rows = []
    for model, per_prompt in values.items():
        for seed in seeds:
            for i, v in enumerate(per_prompt):
                rows.append({"model": model, "seed": seed, "prompt": i, "outcome": v, "reward": 2 * v,
                             "length_words": 3, "baseline_length": 3})
    return pd.DataFrame(rows)


def test_sample_stats_pairs_models_on_the_same_prompts():
    a = [1.0, 0.0, 0.5, 1.0, 0.0, 1.0]
    b = [0.5, 0.0, 0.0, 0.5, 0.0, 0.5]
    stats = expo.SampleStats(_samples({"A": a, "A again": a, "B": b}), n_boot=300, seed=1)
    assert stats.interval("A", "win_rate")[0] == pytest.approx(3.5 / 6)
    assert stats.difference("A", "A again", "win_rate") == (0.0, 0.0, 0.0)  # paired: identical models
    diff, low, high = stats.difference("A", "B", "reward")
    assert diff == pytest.approx(2 * (3.5 - 1.5) / 6) and 0 < low <= diff <= high  # reward = 2 x outcome
    assert interval_reading(low, high) == "higher" and interval_reading(-0.1, 0.1) == "indistinguishable"
    table = expo.samples_table(stats, ["A", "B"], metrics=("win_rate",))
    assert table["wins"].tolist() == [3, 0] and table["ties"].tolist() == [1, 3] and table["losses"].tolist() == [2, 3]


def test_sample_stats_across_training_seeds():
    a = [1.0, 0.0, 0.5, 1.0, 0.0, 1.0]
    b = [0.5, 0.0, 0.0, 0.5, 0.0, 0.5]
    seed0 = _samples({"DPO": a, "SFT": b}).assign(train_seed=0)
    seed1 = _samples({"DPO": b}).assign(train_seed=1)   # the same model trained again: now no better than SFT
    sft = seed0[seed0["model"] == "SFT"].assign(train_seed=expo.NOT_TRAINED)
    stats = expo.SampleStats(pd.concat([seed0[seed0["model"] == "DPO"], seed1, sft]), n_boot=300, seed=1)
    assert stats.train_seeds == [0, 1]
    assert stats.seed_spread("DPO", "win_rate") == pytest.approx([3.5 / 6, 1.5 / 6])
    assert stats.seed_spread("SFT", "win_rate") == pytest.approx([1.5 / 6, 1.5 / 6])  # beside every seed
    diff, low, high = stats.difference("DPO", "SFT", "win_rate")
    assert diff == pytest.approx(1.0 / 6)   # the seeds' mean: (2 / 6 + 0) / 2
    assert low < 0 < high                   # one seed alone would resolve it; the two seeds do not
    single = expo.SampleStats(pd.concat([seed0[seed0["model"] == "DPO"], sft]), n_boot=300, seed=1)
    assert single.difference("DPO", "SFT", "win_rate")[1] > 0
    with pytest.raises(KeyError, match="no test samples for model 'DPO' under training seed 2"):
        stats._matrix("DPO", "outcome", 2)


def test_the_oracle_arm_tests_expo_apart_from_the_reward_model():
    good, bad = [1.0] * 30, [0.0] * 15 + [0.5] * 15
    stats = expo.SampleStats(_samples({"DPO(10% data)": bad, "DPO(10% data)+ExPO": bad,
                                       "DPO(10% data)+ExPO (oracle alpha)": good}), n_boot=200)
    rows = expo.table1_claims(stats, [0.1], reward_doubt="at chance", oracle=True)
    assert [r["claim"] for r in rows] == ["ExPO improves the DPO model", expo.ORACLE_CLAIM]
    assert rows[0]["verdict"] == expo.NOT_TESTABLE and rows[1]["verdict"] == "reproduced"
    assert rows[1]["source"] == "Table 1 (oracle arm)" and rows[1]["ours"].startswith("win rate +0.750")
    assert len(expo.table1_claims(stats, [0.1])) == 1  # no oracle arm where the world knows no quality


def test_table1_claims_read_the_papers_direction():
    # ExPO strictly better on every prompt and metric for 10%; identical at 100% (the reward model chose 0)
    good, bad = [1.0] * 30, [0.0] * 15 + [0.5] * 15
    stats = expo.SampleStats(_samples({"DPO(10% data)": bad, "DPO(10% data)+ExPO": good, "DPO(100% data)": good,
                                       "DPO(100% data)+ExPO": good}), n_boot=200)
    rows = {(r["claim"], r["scope"]): r for r in expo.table1_claims(stats, [0.1, 1.0])}
    assert rows[("ExPO improves the DPO model", "10%")]["verdict"] == "reproduced"
    assert rows[("ExPO improves the DPO model", "100%")]["verdict"] == "inconclusive"
    assert "chose alpha = 0" in rows[("ExPO improves the DPO model", "100%")]["ours"]
    assert "chose alpha = 0" not in rows[("ExPO improves the DPO model", "10%")]["ours"]
    assert "LC win rate +0.029" in rows[("ExPO improves the DPO model", "100%")]["paper"]  # the paper's +2.9 LC points
    vs_full = rows[("DPO with less data + ExPO matches or beats full-data DPO", "10%")]
    assert vs_full["verdict"] == "inconclusive" and "indistinguishable" in vs_full["ours"]


def _scores(best_alpha: float, n: int = 20, alphas=(0.0, 1.0, 5.0)):
    """Per-prompt rewards peaking at best_alpha, with prompt-level noise."""
    rng = np.random.default_rng(int(best_alpha * 10))
    rows = []
    for a in alphas:
        for i in range(n):
            rows.append({"alpha": a, "seed": 0, "prompt": i, "reward": -abs(a - best_alpha) + 0.1 * rng.normal()})
    return pd.DataFrame(rows)


def test_alpha_choice_and_the_trend_claim():
    choice = expo.AlphaChoice({"5%": _scores(5.0), "20%": _scores(1.0), "100%": _scores(0.0)}, n_boot=200)
    assert choice.point == {"5%": 5.0, "20%": 1.0, "100%": 0.0}
    table = choice.table({"5%": 0.5, "20%": 1.0, "100%": 2.0})
    assert table.set_index("model").loc["5%", "extrapolated_norm"] == pytest.approx(3.0)
    trend = expo.alpha_trend_claim(choice, [0.05, 0.2, 1.0])
    assert trend["verdict"] == "reproduced" and "rho(fraction, optimal alpha) -1.00" in trend["ours"]
    rising = expo.AlphaChoice({"5%": _scores(0.0), "20%": _scores(1.0), "100%": _scores(5.0)}, n_boot=200)
    assert expo.alpha_trend_claim(rising, [0.05, 0.2, 1.0])["verdict"] == "reversed"


def test_alpha_shift_of_a_control():
    choice = expo.AlphaChoice({"5%": _scores(5.0), "5%, 10 epochs": _scores(1.0)}, n_boot=200)
    shift = expo.alpha_shift(choice, [expo.Variant(0.05, epochs=10.0)])
    row = shift.iloc[0]
    assert (row["default_alpha"], row["control_alpha"], row["difference"]) == (5.0, 1.0, 4.0)
    assert bool(row["alpha_falls"]) and not bool(row["alpha_rises"])


def test_claims_over_several_training_seeds_cross_seeds_and_prompts():
    falling = {"5%": _scores(5.0), "20%": _scores(1.0), "100%": _scores(0.0)}
    rising = {"5%": _scores(0.0), "20%": _scores(1.0), "100%": _scores(5.0)}
    agree = {s: expo.AlphaChoice(falling, n_boot=200) for s in (0, 1, 2)}
    trend = expo.alpha_trend_claim(agree, [0.05, 0.2, 1.0])
    assert trend["verdict"] == "reproduced" and "mean over 3 training seeds" in trend["ours"]
    assert "5%: 5.0 [5.0, 5.0], 5.0 [5.0, 5.0], 5.0 [5.0, 5.0]" in trend["ours"]  # each seed's alpha
    # seeds that disagree cannot reproduce a trend one of them shows
    split = {0: expo.AlphaChoice(falling, n_boot=200), 1: expo.AlphaChoice(rising, n_boot=200)}
    assert expo.alpha_trend_claim(split, [0.05, 0.2, 1.0])["verdict"] == "inconclusive"
    assert expo.alpha_trend_claim(split[0], [0.05, 0.2, 1.0])["verdict"] == "reproduced"
    control = {"5%": _scores(5.0), "5%, 10 epochs": _scores(1.0)}
    shift = expo.alpha_shift({0: expo.AlphaChoice(control, n_boot=200), 1: expo.AlphaChoice(control, n_boot=200)},
                             [expo.Variant(0.05, epochs=10.0)]).iloc[0]
    assert (shift["difference"], shift["seeds"]) == (4.0, 2) and bool(shift["alpha_falls"])
    summary = expo.alpha_summary(split, {0: {"5%": 1.0, "20%": 1.0, "100%": 1.0},
                                         1: {"5%": 3.0, "20%": 1.0, "100%": 1.0}}).set_index("model")
    assert summary.loc["5%", "alpha"] == 2.5 and summary.loc["5%", "delta_norm"] == 2.0
    assert (summary["alpha_low"] >= 0.0).all() and (summary["alpha_high"] <= 5.0).all()  # inside the swept grid
    assert summary.loc["5%", "extrapolated_norm"] == (6.0 * 1.0 + 1.0 * 3.0) / 2  # (1 + alpha) ||delta|| per seed


def test_variant_names():
    assert expo.Variant(0.05).name() == "DPO(5% data)" and expo.Variant(0.05).key == "5%"
    control = expo.Variant(0.1, lr=5e-3)
    assert control.name(expo=True) == "DPO(10% data, lr 0.005)+ExPO" and control.key == "10%, lr 0.005"
    assert control.default == expo.Variant(0.1) and not control.is_default
    params = expo.ExpoParams.validate_mapping(_tiny03(figure6={"fractions": [0.05, 0.1], "lrs": [5e-3],
                                                              "epochs": [10.0]}))
    assert [v.key for v in expo.control_variants(params)] == ["5%, lr 0.005", "10%, lr 0.005", "5%, 10 epochs",
                                                             "10%, 10 epochs"]


def test_control_runs_are_cached_apart_from_the_default_model(tiny_world):
    params = expo.ExpoParams.validate_mapping(_tiny03())
    default = expo.adapter_key(tiny_world, params, 0.05)
    assert expo.adapter_key(tiny_world, params, 0.05, epochs=params.dpo.epochs) == default
    assert len({default, expo.adapter_key(tiny_world, params, 0.05, epochs=10.0),
                expo.adapter_key(tiny_world, params, 0.05, lr=5e-3)}) == 3
    assert expo.dpo_steps(205, params.dpo) == 7
    assert expo.dpo_steps(205, params.dpo.model_copy(update={"epochs": 10.0})) == 70


# ------------------------------------------------------------------------------------------ bad input


def test_bad_control_and_seed_parameters_name_the_field():
    with pytest.raises(ParamsError, match=r"parameter 'figure6'.*figure6\.fractions \[0\.3\] are not in fractions"):
        expo.ExpoParams.validate_mapping(_tiny03(figure6={"fractions": [0.3], "lrs": [1e-3]}))
    with pytest.raises(ParamsError, match=r"parameter 'figure6'.*neither lrs nor epochs"):
        expo.ExpoParams.validate_mapping(_tiny03(figure6={"fractions": [0.1]}))
    with pytest.raises(ParamsError, match=r"parameter 'figure6\.epochs'.*distinct"):
        expo.ExpoParams.validate_mapping(_tiny03(figure6={"fractions": [0.1], "epochs": [2.0, 2.0]}))
    with pytest.raises(ParamsError, match=r"parameter 'report_seeds'.*distinct.*\[0\] repeated"):
        expo.ExpoParams.validate_mapping(_tiny03(report_seeds=[0, 0]))
    with pytest.raises(ParamsError, match=r"parameter 'sweep_seeds'.*distinct"):
        expo.ExpoParams.validate_mapping(_tiny03(sweep_seeds=[1, 1]))
    with pytest.raises(ParamsError, match=r"parameter 'n_boot'"):
        expo.ExpoParams.validate_mapping(_tiny03(n_boot=10))
    with pytest.raises(ParamsError, match=r"unknown parameter 'report_seed'"):
        expo.ExpoParams.validate_mapping(_tiny03(report_seed=0))


def test_reward_model_doubt_follows_the_exact_interval_of_its_accuracy():
    good = pd.DataFrame([{"pairs_from": "samples", "pairs": 100, "accuracy": 0.70}])
    assert expo.reward_model_doubt(good) is None and expo.reward_model_doubt(None) is None
    # 60 of 100 has an exact 95% lower bound of 0.497: not shown to beat chance
    borderline = pd.DataFrame([{"pairs_from": "samples", "pairs": 100, "accuracy": 0.60}])
    doubt = expo.reward_model_doubt(borderline)
    assert doubt is not None and "0.600 [0.497, 0.697] on 100 pairs of samples" in doubt
    assert expo.reward_model_doubt(borderline, delta=0.2) is None     # 80% lower bound 0.535


def test_a_reward_model_at_chance_makes_every_claim_on_its_alpha_not_testable_never_reversed():
    """The ExPO model is the model at the alpha the reward model chose: with that instrument at chance, a
    comparison that would read reversed (or reproduced) cannot test ExPO; the differences are still shown."""
    good, bad = [1.0] * 30, [0.0] * 15 + [0.5] * 15
    for expo_scores, plain in ((good, "reproduced"), (bad, "reversed")):
        other = bad if expo_scores is good else good
        stats = expo.SampleStats(_samples({"DPO(10% data)": other, "DPO(10% data)+ExPO": expo_scores,
                                           "DPO(100% data)": other, "DPO(100% data)+ExPO": expo_scores}),
                                 n_boot=200)
        assert expo.table1_claims(stats, [0.1])[0]["verdict"] == plain
        rows = expo.table1_claims(stats, [0.1, 1.0], reward_doubt="at chance")
        assert {r["verdict"] for r in rows} == {expo.NOT_TESTABLE}
        assert all("; not testable here: at chance" in r["ours"] and "[" in r["ours"] for r in rows)
    choice = expo.AlphaChoice({"5%": _scores(5.0), "20%": _scores(1.0), "100%": _scores(0.0)}, n_boot=200)
    trend = expo.alpha_trend_claim(choice, [0.05, 0.2, 1.0], reward_doubt="at chance")
    assert trend["verdict"] == expo.NOT_TESTABLE and trend["ours"].endswith("not testable here: at chance")


def test_a_claims_overall_verdict_combines_its_testable_scopes_and_counts_the_rest():
    claims = pd.DataFrame([
        {"claim": "c", "source": "s", "verdict": "reproduced"}, {"claim": "c", "source": "s", "verdict": "not testable"},
        {"claim": "d", "source": "s", "verdict": "not testable"}, {"claim": "d", "source": "s", "verdict": "not testable"}])
    table = expo.overall(claims).set_index("claim")
    assert table.loc["c", "verdict"] == "reproduced" and table.loc["d", "verdict"] == "not testable"
    assert table.loc["d", ["reproduced", "reversed", "inconclusive", "not_testable"]].tolist() == [0, 0, 0, 2]
    lines = expo.verdict_lines(table.reset_index())
    assert lines[1] == "- **d** (s): **not testable** (0 reproduced, 0 reversed, 0 inconclusive, 2 not testable)"


def test_judged_samples_rows_by_hand():
    from mfnb.expo.report import judged_samples

    class Scripted:
        def compare(self, prompts, first, second):
            return ["win" if len(a) > len(b) else "tie" if a == b else "lose" for a, b in zip(first, second)]

    frame = judged_samples(Scripted(), ["p", "q"], {0: ["b b", "c"]}, {"m": {0: ["a a a", "c"]}},
                           reward_fn=lambda ps, rs: [len(r) for r in rs], quality_fn=lambda p, r: float(p == "q"),
                           progress=False)
    assert frame["outcome"].tolist() == [1.0, 0.5]
    assert frame["length_words"].tolist() == [3, 1] and frame["baseline_length"].tolist() == [2, 1]
    assert frame["reward"].tolist() == [5.0, 1.0] and frame["quality"].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="model 'm': no baseline responses for seed 1"):
        judged_samples(Scripted(), ["p"], {0: ["b"]}, {"m": {1: ["a"]}}, progress=False)
