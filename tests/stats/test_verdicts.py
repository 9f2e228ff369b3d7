"""The claim helpers every notebook's verdicts share (mfnb.stats.verdicts): the verdict from an interval, one
verdict from several, how a difference and its interval are written and read, and the claims table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from mfnb import expo, hbat, stats
from mfnb.stats import seed_replicate_interval


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.1, 0.3, 1, "reproduced"), (-0.3, -0.1, 1, "reversed"), (0.0, 0.2, 1, "inconclusive"),
    (-0.3, -0.1, -1, "reproduced"), (0.1, 0.3, -1, "reversed"), (math.nan, 0.2, 1, "inconclusive"),
])
def test_claim_verdict(low, high, direction, expected):
    assert stats.claim_verdict(low, high, direction) == expected


@pytest.mark.parametrize("verdicts, expected", [
    (["reproduced", "reproduced"], "reproduced"), (["reproduced", "inconclusive"], "inconclusive"),
    (["reversed", "inconclusive"], "reversed"), (["reversed", "reproduced"], "inconclusive"), ([], "inconclusive"),
])
def test_combine_verdicts(verdicts, expected):
    assert stats.combine_verdicts(verdicts) == expected


@pytest.mark.parametrize("diff, low, high, expected", [
    (0.12, 0.01, 0.23, "+0.120 [0.010, 0.230]"),
    (-0.0005, -0.0015, 0.0005, "-0.001 [-0.002, 0.001]"),   # half away from zero, as the tables round
    (0.0, 0.0, 0.0, "+0.000 [0.000, 0.000]"),
    (0.3, math.nan, math.nan, "+0.300 [n/a, n/a]"),
])
def test_difference_text(diff, low, high, expected):
    assert stats.difference_text(diff, low, high) == expected


@pytest.mark.parametrize("low, high, expected", [
    (0.01, 0.2, "higher"), (-0.2, -0.01, "lower"), (0.0, 0.2, "indistinguishable"), (-0.2, 0.0, "indistinguishable"),
    (math.nan, 0.2, "no interval"), (0.1, math.nan, "no interval"),
])
def test_interval_reading(low, high, expected):
    assert stats.interval_reading(low, high) == expected


def test_interval_reading_says_why_there_is_none():
    assert stats.interval_reading(math.nan, math.nan, missing="no interval (one seed)") == "no interval (one seed)"
    assert stats.interval_reading(0.1, 0.2, missing="no interval (one seed)") == "higher"


def test_claims_table_keeps_the_columns_in_order():
    rows = [{"verdict": "reproduced", "claim": "a beats b", "ours": "+0.1"}, {"claim": "c", "paper": "p"}]
    table = stats.claims_table(rows, ("claim", "paper", "ours", "verdict"))
    assert table.columns.tolist() == ["claim", "paper", "ours", "verdict"]
    assert table["claim"].tolist() == ["a beats b", "c"]
    assert table.loc[0, "verdict"] == "reproduced" and pd.isna(table.loc[1, "verdict"])
    assert stats.claims_table([], ("claim", "verdict")).columns.tolist() == ["claim", "verdict"]


def test_both_papers_write_their_claims_with_the_shared_helpers():
    assert expo.claims_table([]).columns.tolist() == ["claim", "source", "scope", "paper", "ours", "verdict"]
    assert hbat.claims_table([]).columns.tolist() == ["claim", "source", "paper", "ours", "per_metric", "verdict"]
    assert expo.VERDICTS == hbat.VERDICTS == stats.CLAIM_VERDICTS == ("reproduced", "reversed", "inconclusive")
    assert expo.verdict is hbat.verdict is stats.claim_verdict
    assert expo.combine is hbat.combine is stats.combine_verdicts


def test_combine_testable_leaves_out_what_could_not_be_tested():
    assert stats.combine_testable(["reproduced", stats.NOT_TESTABLE]) == "reproduced"
    assert stats.combine_testable(["reversed", stats.NOT_TESTABLE, "inconclusive"]) == "reversed"
    assert stats.combine_testable([stats.NOT_TESTABLE] * 2) == stats.NOT_TESTABLE == "not testable"
    assert stats.combine_testable([]) == stats.NOT_TESTABLE


# ------------------------------------------------------------------ statistics measured once per training seed


def test_seed_replicate_interval_with_one_seed_is_the_percentile_interval():
    reps = np.arange(101, dtype=float)  # 0..100: the 2.5% and 97.5% percentiles are 2.5 and 97.5
    assert seed_replicate_interval([50.0], [reps]) == pytest.approx((50.0, 2.5, 97.5))
    assert seed_replicate_interval([50.0], [reps]) == (50.0, *expo.percentile_interval(reps))
    assert seed_replicate_interval([50.0], [reps + 0.5], discrete=True) == (50.0, 2.5, 98.5)  # values it took
    point, low, high = seed_replicate_interval([1.0], [np.full(10, np.nan)])
    assert point == 1.0 and math.isnan(low) and math.isnan(high)


def test_seed_replicate_interval_adds_the_seed_spread_to_the_prompt_spread():
    # seeds at 0 and 2: seed term var([0, 2]) / 2 = 1; the seed-averaged replicates [0, 2]: prompt term 2
    point, low, high = seed_replicate_interval([0.0, 2.0], [np.array([-1.0, 1.0]), np.array([1.0, 3.0])],
                                               n_prompts=3)
    a, b = 1.0, 2.0
    df = (a + b) ** 2 / (a**2 / 1 + b**2 / 2)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(a + b)
    assert point == 1.0 and (low, high) == pytest.approx((1.0 - half, 1.0 + half))
    # a bounded statistic (a rank correlation) keeps its interval inside its range
    _, low, high = seed_replicate_interval([-1.0, -0.9], [np.full(4, -1.0), np.array([-0.8, -1.0, -0.9, -0.9])],
                                           bounds=(-1.0, 1.0))
    assert low == -1.0 and high < 1.0
    # identical seeds and replicates without spread: the interval is the point
    assert seed_replicate_interval([0.3, 0.3], [np.full(5, 0.3), np.full(5, 0.3)]) == (0.3, 0.3, 0.3)
    # one seed far off widens the interval past zero although every replicate is on one side
    _, low, _ = seed_replicate_interval([0.1, 0.1, 2.0], [np.full(50, 0.1), np.full(50, 0.1), np.full(50, 2.0)])
    assert low < 0


def test_seed_replicate_interval_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one point and one set of replicates per seed, got 2 points and 1"):
        seed_replicate_interval([0.0, 1.0], [np.zeros(3)])
    with pytest.raises(ValueError, match="delta must be in"):
        seed_replicate_interval([0.0], [np.zeros(3)], level=1.0)
