"""Notebook 04's verdicts on constructed runs: paired t-intervals over seeds, the paper's direction read from its
tables, the combination over metrics, the original-EWC claims (a match cannot be proven; time and memory
ratios), Figure 2's claims, and the computed lambda choice."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from mfnb import hbat, stats
from mfnb.hbat import claims as hc

NOISE = (0.01, -0.01, 0.0)


def _runs(values: dict[str, tuple[float, float, float]], seconds: dict[str, float] | None = None):
    """Three seeds per method; (quality, reward, win_rate) plus a little per-seed noise shared by all methods
    except where a method's value differs, so paired differences are tight."""
    rows = []
    for method, (q, r, w) in values.items():
        for seed, e in enumerate(NOISE):
            rows.append({"method": method, "seed": seed, "quality": q + e, "reward": r + e * (1 + seed),
                         "win_rate": w + e * (2 - seed), "train_seconds": (seconds or {}).get(method, 10.0) * (1 + e)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.1, 0.3, 1, "reproduced"), (-0.3, -0.1, 1, "reversed"), (-0.1, 0.2, 1, "inconclusive"),
    (-0.3, -0.1, -1, "reproduced"), (math.nan, math.nan, 1, "inconclusive"),
])
def test_verdict(low, high, direction, expected):
    assert hbat.verdict(low, high, direction) == expected


def test_combine_needs_every_metric():
    assert hbat.combine(["reproduced"] * 3) == "reproduced"
    assert hbat.combine(["reproduced", "reproduced", "inconclusive"]) == "inconclusive"
    assert hbat.combine(["reversed", "inconclusive", "inconclusive"]) == "reversed"
    assert hbat.combine(["reversed", "reproduced", "reproduced"]) == "inconclusive"


def test_paired_difference_over_seeds():
    runs = _runs({"A": (0.5, 0.5, 0.5), "B": (0.4, 0.5, 0.5)})
    mean, low, high, n = hc.paired(runs, "A", "B", "quality")
    assert (mean, low, high, n) == (pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1), 3)  # same noise
    mean, low, high, n = hc.paired(runs, "A", "missing", "quality")
    assert n == 0 and math.isnan(mean)


def test_pairwise_claims_follow_the_papers_direction():
    # the paper: HbAT above DPO on all three Table 4 scores; w/o EWC above DPO on win rate only
    runs = _runs({"HbAT": (0.6, 0.8, 0.4), "DPO": (0.4, 0.7, 0.3), "w/o EWC": (0.6, 0.8, 0.4),
                  "SFT": (0.9, 0.0, 0.3)})
    rows = {r["claim"]: r for r in hbat.pairwise_claims(runs)}
    assert rows["HbAT beats two-stage DPO"]["verdict"] == "reproduced"
    assert rows["HbAT beats two-stage DPO"]["paper"].startswith("HbAT minus DPO: quality +5.79; reward +0.57")
    assert rows["the modified EWC helps: HbAT beats w/o EWC"]["verdict"] == "inconclusive"   # identical
    sft = rows["HbAT beats SFT"]   # reward reproduced, quality reversed (the alignment tax): mixed
    assert sft["verdict"] == "inconclusive" and "quality: reversed" in sft["per_metric"]
    assert "alternating alignment helps: HbAT beats w/o alternating" not in rows   # not run


def test_original_ewc_claims():
    runs = _runs({"HbAT": (0.5, 0.7, 0.40), hbat.ORIGINAL_EWC: (0.5, 0.7, 0.40)},
                 seconds={"HbAT": 10.0, hbat.ORIGINAL_EWC: 20.0})
    costs = pd.DataFrame([{"repeat": r, "method": m, "peak_rss_mb": mb, "state_mb": s}
                          for r in (0, 1, 2) for m, mb, s in (("HbAT", 600.0 + r, 1.3), (hbat.ORIGINAL_EWC, 660.0 + r, 5.1))])
    rows = {r["claim"]: r for r in hbat.original_ewc_claims(runs, costs)}
    match = rows["the modified EWC matches the original EWC's win rate"]
    assert match["verdict"] == "inconclusive" and "indistinguishable" in match["ours"]  # no margin: no proof
    assert "58.10 vs 58.32" in match["paper"]
    faster = rows["the modified EWC trains faster than the original EWC"]
    assert faster["verdict"] == "reproduced" and ": 2.00 [" in faster["ours"]
    assert rows["the modified EWC needs less memory than the original EWC"]["verdict"] == "reproduced"
    # the same ratio in every repeat, or too few repeats, shows nothing (tiny's 1.15 came out 1.0 in 3 of 4 runs)
    memory = "the modified EWC needs less memory than the original EWC"
    same = costs.assign(peak_rss_mb=costs["method"].map({"HbAT": 600.0, hbat.ORIGINAL_EWC: 690.0}))
    row = {r["claim"]: r for r in hbat.original_ewc_claims(runs, same)}[memory]
    assert row["verdict"] == "inconclusive" and "1.1500" in row["ours"]
    assert "not shown: the ratio was the same in every repeat, so the repeats give no interval" in row["ours"]
    row = {r["claim"]: r for r in hbat.original_ewc_claims(runs, costs[costs["repeat"] < 2])}[memory]
    assert row["verdict"] == "inconclusive" and "not shown: only 2 repeat(s); an interval needs 3" in row["ours"]
    runs["cpu_seconds"] = runs["train_seconds"] * runs["method"].map({"HbAT": 1.0, hbat.ORIGINAL_EWC: 0.5})
    cpu = hbat.original_ewc_claims(runs)[1]   # CPU seconds win over wall seconds when every run has them
    assert "training CPU seconds" in cpu["ours"] and ": 1.00 [" in cpu["ours"] and cpu["verdict"] == "inconclusive"
    # a resolved difference in win rate contradicts "matches"
    apart = _runs({"HbAT": (0.5, 0.7, 0.30), hbat.ORIGINAL_EWC: (0.5, 0.7, 0.40)})
    assert hbat.original_ewc_claims(apart)[0]["verdict"] == "reversed"
    assert hbat.original_ewc_claims(apart)[2]["verdict"] == "inconclusive"   # no Table 7 runs


def _grid(axis: str, values: dict[float, tuple[float, float, float]]):
    rows = []
    for value, (q, r, w) in values.items():
        for seed, e in enumerate(NOISE):
            rows.append({"axis": axis, "value": value, "seed": seed, "quality": q + e, "reward": r + e,
                         "win_rate": w + e})
    return pd.DataFrame(rows)


def test_figure2_claims():
    grid = pd.concat([_grid("N", {1: (0.5, 0.5, 0.5), 2: (0.6, 0.6, 0.5), 5: (0.4, 0.6, 0.6)}),
                      _grid("Fmax", {1.0: (0.5, 0.5, 0.5), 50.0: (0.6, 0.6, 0.6), 100.0: (0.55, 0.6, 0.6)})])
    rows = {r["claim"]: r for r in hbat.figure2_claims(grid, n_splits=2)}
    splits = rows["too many splits hurt"]   # quality resolved, reward equal: the Figure 2 scores disagree
    assert splits["verdict"] == "inconclusive" and "win_rate: reversed" in splits["per_metric"]
    fmax = rows["the best Fmax is 50"]      # quality beats both; reward ties with 100
    assert fmax["verdict"] == "inconclusive" and "quality: reproduced" in fmax["per_metric"]
    better = pd.concat([_grid("Fmax", {1.0: (0.5, 0.5, 0.5), 50.0: (0.6, 0.6, 0.6), 100.0: (0.55, 0.55, 0.6)})])
    assert hbat.figure2_claims(better, n_splits=2)[0]["verdict"] == "reproduced"
    assert hbat.figure2_claims(_grid("N", {1: (0.5,) * 3, 2: (0.6,) * 3}), n_splits=2) == []   # N max = ours


def test_lambda_choice_statement():
    lam = _grid("lambda", {0.01: (0.6, 0.7, 0.5), 0.1: (0.62, 0.5, 0.45), 1.0: (0.8, 0.0, 0.3)})
    lam["val_win_rate"] = lam["win_rate"]
    dpo = _grid("DPO", {math.nan: (0.4, 0.9, 0.3)})
    dpo["val_win_rate"] = dpo["win_rate"]
    table, text = hbat.lambda_choice(pd.concat([lam, dpo], ignore_index=True), chosen=0.01)
    assert "prefers lambda = 0.01" in text and "which is the best" in text
    assert "At the paper's lambda = 1, test reward minus DPO's: -0.900" in text and "holds DPO's preference" in text
    assert set(table["axis"]) == {"lambda", "DPO"} and len(table) == 4
    _, text = hbat.lambda_choice(pd.concat([lam, dpo], ignore_index=True), chosen=1.0)
    assert "which is resolved below the best" in text


def test_figure2_without_a_sweep_says_so():
    """n_grid and fmax_grid empty: the grid holds only DPO rows, and the read-out says Figure 2 was not run."""
    dpo = _grid("DPO", {math.nan: (0.4, 0.9, 0.3)})
    assert hbat.figure2_statement(dpo) == "- Figure 2 was not run: `n_grid` and `fmax_grid` are both empty."
    assert hbat.figure2_claims(dpo, n_splits=2) == []


def test_conflict_check_pairs_over_seeds():
    runs = _runs({"SFT": (0.6, 0.3, 0.5), "DPO": (0.5, 0.5, 0.5)})
    out, text = hbat.conflict_check(runs)
    assert out["quality"]["mean"] == pytest.approx(-0.1) and out["quality"]["seeds"] == 3
    assert out["quality"]["high"] < 0 < out["reward"]["low"]
    assert "over 3 seeds" in text and "the alignment tax is there and resolved beyond seed noise." in text


def test_conflict_check_one_seed_pairs_over_test_prompts():
    """One seed: the interval comes from the per-prompt test scores of the SFT and DPO runs (matched by key)."""
    runs = pd.DataFrame([{"method": "SFT", "seed": 0, "quality": 0.6, "reward": 0.3, "key": "s"},
                         {"method": "DPO", "seed": 0, "quality": 0.45, "reward": 0.5, "key": "d"}])
    sft = {"quality": [0.6, 0.7, 0.5, 0.6], "reward": [0.3] * 4}
    dpo = {"quality": [0.4, 0.55, 0.4, 0.45], "reward": [0.5, 0.6, 0.4, 0.5]}
    records = [{"key": "s", "label": "SFT", "per_prompt": sft}, {"key": "d", "label": "DPO", "per_prompt": dpo},
               {"key": "other", "label": "DPO", "per_prompt": sft}]    # a run not in `runs` is not used
    out, text = hbat.conflict_check(runs, records)
    diffs = [-0.2, -0.15, -0.1, -0.15]
    mean, sd = sum(diffs) / 4, pd.Series(diffs).std()
    half = 3.182446305284263 * sd / 2                                    # t(0.975, 3) * sd / sqrt(4)
    assert out["quality"]["mean"] == pytest.approx(mean)
    assert (out["quality"]["low"], out["quality"]["high"]) == pytest.approx((mean - half, mean + half))
    assert out["quality"]["prompts"] == 4 and out["reward"]["mean"] == pytest.approx(0.2)
    assert "over 4 test prompts, paired; one seed" in text and "resolved beyond the test prompts' noise." in text
    # without per-prompt scores (records of an older run): no interval, and the text says it is not resolved
    out, text = hbat.conflict_check(runs, [{"key": "s"}, {"key": "d"}])
    assert math.isnan(out["quality"]["low"]) and "over 1 seeds" in text and "not resolved beyond seed noise" in text
    assert "there is no interval: no tax is shown" in text


def test_conflict_check_does_not_call_an_unresolved_loss_a_tax():
    """A mean loss whose interval reaches past zero (the smol run: -0.004 [-0.067, 0.058]) is not a tax."""
    runs = pd.DataFrame([{"method": "SFT", "seed": 0, "quality": 0.5, "reward": 0.3, "key": "s"},
                         {"method": "DPO", "seed": 0, "quality": 0.49, "reward": 0.5, "key": "d"}])
    records = [{"key": "s", "per_prompt": {"quality": [0.5, 0.6, 0.4, 0.5], "reward": [0.3] * 4}},
               {"key": "d", "per_prompt": {"quality": [0.6, 0.5, 0.3, 0.56], "reward": [0.5] * 4}}]
    out, text = hbat.conflict_check(runs, records)
    assert out["quality"]["low"] < 0 < out["quality"]["high"] and out["quality"]["mean"] == pytest.approx(-0.01)
    assert "its interval includes zero: no tax is shown, not resolved beyond the test prompts' noise." in text
    assert "the alignment tax is there" not in text


def test_pairwise_claims_one_seed_pair_over_prompts_where_scores_exist():
    """HbAT vs SFT with one seed: quality and reward paired over prompts (resolved both ways), the win rate
    without per-prompt scores has no interval; failed judgements (NaN) drop out of the pairs."""
    runs = pd.DataFrame([{"method": "HbAT", "seed": 0, "quality": 0.5, "reward": 0.6, "win_rate": 0.5, "key": "h"},
                         {"method": "SFT", "seed": 0, "quality": 0.6, "reward": 0.4, "win_rate": 0.5, "key": "s"}])
    records = [{"key": "h", "per_prompt": {"quality": [0.5, 0.4, 0.6, 0.5], "reward": [0.6, 0.7, 0.5, float("nan")]}},
               {"key": "s", "per_prompt": {"quality": [0.6, 0.5, 0.7, 0.6], "reward": [0.4, 0.5, 0.4, 0.3]}}]
    row = [r for r in hbat.pairwise_claims(runs, records=records) if r["claim"] == "HbAT beats SFT"][0]
    assert row["per_metric"] == "quality: reversed, reward: reproduced, win_rate: inconclusive"
    assert "quality -0.100 [-0.100, -0.100] (paired over 4 test prompts)" in row["ours"]
    assert "(paired over 3 test prompts)" in row["ours"] and row["verdict"] == "inconclusive"
    # without records the one-seed claim has no interval at all
    row = [r for r in hbat.pairwise_claims(runs) if r["claim"] == "HbAT beats SFT"][0]
    assert row["per_metric"] == "quality: inconclusive, reward: inconclusive, win_rate: inconclusive"



def _judge_only(frame, none: bool = False):
    """The same runs from a world with no known quality (the paper world's `quality = None`)."""
    return frame.assign(quality=None if none else math.nan)


@pytest.mark.parametrize("none", [False, True])
def test_no_known_quality_every_summary_and_claim_says_not_testable(none):
    """A judge-only world's quality column is all NaN (or None, read back from JSON): every table and statement
    of notebook 04 still computes, quality-only verdicts are "not testable", the other metrics decide."""
    from mfnb.hbat import report

    runs = _judge_only(_runs({"SFT": (0.9, 0.0, 0.3), "DPO": (0.4, 0.7, 0.3), "HbAT": (0.6, 0.8, 0.4),
                              "w/o EWC": (0.6, 0.8, 0.4), hbat.ORIGINAL_EWC: (0.5, 0.8, 0.4)}), none)
    summary = hbat.seed_summary(runs, by=["method"])
    assert summary["quality"].isna().all() and summary["reward"].notna().all()
    assert set(hbat.table4_with_paper(summary)["method"]) == set(runs["method"])
    assert report.best_methods(summary) == {"quality": "no known quality", "reward": "HbAT", "win_rate": "HbAT"}

    order = hbat.orderings(runs)
    quality = order[order["metric"] == "quality"]
    assert len(quality) and set(quality["verdict"]) == {"not testable"} and set(quality["ours"]) == {"no known quality"}
    assert "not testable" not in set(order.loc[order["metric"] != "quality", "verdict"])
    statement = hbat.ordering_statement(order)
    assert f"{len(quality)} are not testable (no known quality)" in statement
    assert "- quality (paper: pandalm): not testable, no known quality in this world." in statement

    out, text = hbat.conflict_check(runs)
    assert out["quality"]["verdict"] == "not testable" and out["reward"]["mean"] == pytest.approx(0.7)
    assert "no known quality" in text and "is not testable here" in text and "+0.700" in text

    rows = {r["claim"]: r for r in hbat.pairwise_claims(runs) + hbat.original_ewc_claims(runs)}
    beats = rows["HbAT beats two-stage DPO"]   # reward and win rate decide; quality is named as untestable
    assert beats["per_metric"].startswith("quality: not testable, reward: reproduced")
    assert "quality: no known quality" in beats["ours"] and beats["verdict"] == "reproduced"
    assert "quality: no known quality" in rows["the modified EWC matches the original EWC's win rate"]["ours"]

    grid = _judge_only(pd.concat([_grid("N", {1: (0.5, 0.5, 0.5), 2: (0.6, 0.6, 0.5), 5: (0.4, 0.5, 0.6)}),
                                  _grid("Fmax", {1.0: (0.5, 0.5, 0.5), 50.0: (0.6, 0.6, 0.6)}),
                                  _grid("DPO", {math.nan: (0.4, 0.9, 0.3)})]), none)
    lines = hbat.figure2_statement(grid)
    assert "best by quality: no known quality, by reward" in lines
    claims = {r["claim"]: r for r in hbat.figure2_claims(grid, n_splits=2)}
    assert claims["too many splits hurt"]["verdict"] == "reproduced"       # on reward, the one testable Figure 2 score
    assert "quality: not testable" in claims["the best Fmax is 50"]["per_metric"]
    # a claim made on quality alone has no testable metric
    assert hbat.figure2_claims(grid, n_splits=2, metrics=("quality",))[0]["verdict"] == "not testable"
    assert set(hbat.claims_table(list(rows.values()))["verdict"]) <= {*hbat.VERDICTS, "not testable"}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close(hbat.plot_tradeoff(summary))
    plt.close(hbat.plot_figure2(grid))


def test_one_seed_without_known_quality_pairs_reward_over_prompts():
    """One seed and per-prompt scores whose quality is all NaN: the tax is not testable, the reward's change is
    paired over prompts."""
    runs = pd.DataFrame([{"method": "SFT", "seed": 0, "quality": math.nan, "reward": 0.3, "win_rate": 0.4, "key": "s"},
                         {"method": "DPO", "seed": 0, "quality": math.nan, "reward": 0.5, "win_rate": 0.5, "key": "d"}])
    nan = [math.nan] * 4
    records = [{"key": "s", "per_prompt": {"quality": nan, "reward": [0.3, 0.2, 0.4, 0.3]}},
               {"key": "d", "per_prompt": {"quality": nan, "reward": [0.5, 0.5, 0.6, 0.4]}}]
    out, text = hbat.conflict_check(runs, records)
    assert out["quality"]["verdict"] == "not testable" and out["reward"]["prompts"] == 4
    assert "over 4 test prompts, paired" in text and "not testable" in text


def test_with_one_seed_the_orderings_pair_over_test_prompts_as_the_claims_do():
    """smol's one-seed run had every ordering inconclusive with NaN intervals while the claims table, paired over
    test prompts, resolved HbAT > SFT on reward: both now pair the same way and agree."""
    runs = pd.DataFrame([{"method": m, "seed": 0, "key": m, "quality": q, "reward": r, "win_rate": 0.5}
                         for m, q, r in (("SFT", 0.6, 0.1), ("HbAT", 0.6, 0.5))])
    per_prompt = {"SFT": {"quality": [0.6] * 20, "reward": [0.0, 0.2] * 10, "win_rate": [0.5] * 20},
                  "HbAT": {"quality": [0.6] * 20, "reward": [0.4, 0.6] * 10, "win_rate": [0.5] * 20}}
    records = [{"key": m, "label": m, "seed": 0, "per_prompt": s} for m, s in per_prompt.items()]
    order = hbat.orderings(runs, records=records).set_index("metric")
    reward = order.loc["reward"]
    assert reward["paired_over"] == "20 test prompts (one seed)" and reward["our_gap"] == pytest.approx(0.4)
    assert reward["verdict"] == "reproduced" and reward["our_low"] == pytest.approx(0.4)   # no spread: [0.4, 0.4]
    claim = {r["claim"]: r for r in hbat.pairwise_claims(runs, records=records)}["HbAT beats SFT"]
    assert "reward: reproduced" in claim["per_metric"]
    assert "over test prompts (one seed: seed noise is not in the interval)" in hbat.ordering_statement(order.reset_index())
    assert hbat.orderings(runs).set_index("metric").loc["reward", "verdict"] == "inconclusive"   # no records: NaN


def test_seed_claims_set_each_seed_alone_beside_the_verdict_over_seeds():
    runs = _runs({"HbAT": (0.6, 0.8, 0.4), "DPO": (0.4, 0.7, 0.3), "SFT": (0.9, 0.0, 0.3)})
    table = hbat.seed_claims(runs)
    assert table.columns.tolist() == ["claim", "source", "verdict", "seed 0", "seed 1", "seed 2", "moved",
                                      "seeds_resolving"]
    row = table.set_index("claim").loc["HbAT beats two-stage DPO"]
    # over three seeds the difference is resolved; one seed alone has no interval (no per-prompt records)
    assert row["verdict"] == "reproduced" and row[["seed 0", "seed 1", "seed 2"]].tolist() == ["inconclusive"] * 3
    assert bool(row["moved"]) and row["seeds_resolving"] == 0
    assert table["claim"].tolist() == [r["claim"] for r in hbat.all_claims(runs)]
    assert hbat.seed_claims(runs[runs["seed"] == 0]).empty   # one seed: nothing to compare
    lines = stats.seed_alone_lines(table)
    assert lines[0].startswith(f"- **One training seed alone** (3 seeds): {int(table['moved'].sum())} of {len(table)}")
    assert "  - HbAT beats two-stage DPO: **reproduced** over the seeds; alone seed 0: inconclusive" in "\n".join(lines)
