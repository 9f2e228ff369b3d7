"""mfnb.stats: exact small cases, scipy agreement, input errors, coverage by simulation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mfnb import stats
from mfnb.core import reference

# --------------------------------------------------------------------------- WinFreq


def test_win_freq_labels_and_numbers():
    assert stats.win_freq(["win", "tie", "lose", "win"]) == pytest.approx(2.5 / 4)
    assert stats.win_freq([1, 0.5, 0, 1]) == pytest.approx(2.5 / 4)
    assert stats.win_freq(["Win", " LOSE "]) == 0.5
    assert stats.win_freq(np.array([1.0, 1.0, 0.0])) == pytest.approx(2 / 3)


def test_failed_judgements_are_excluded_and_counted():
    s = stats.summarize(["win", None, -1, "lose", float("nan"), "tie", "failed"])
    assert (s.wins, s.ties, s.losses, s.failed, s.n) == (1, 1, 1, 4, 3)
    assert s.win_freq == pytest.approx(0.5)  # a failure scored as a loss would give 1.5/7
    assert stats.win_freq(["win", None, None]) == 1.0


def test_win_freq_errors():
    with pytest.raises(ValueError, match="unknown outcome label 'draw'"):
        stats.win_freq(["win", "draw"])
    with pytest.raises(ValueError, match="unknown outcome value 0.7"):
        stats.win_freq([1, 0.7])
    with pytest.raises(ValueError, match="booleans are ambiguous"):
        stats.win_freq([True])
    with pytest.raises(ValueError, match="no valid outcomes.*2 failed"):
        stats.win_freq([None, -1])


# --------------------------------------------------------------------------- radii


def test_hoeffding_radius_values():
    r = stats.hoeffding_radius(200, 0.05)
    assert r == pytest.approx(math.sqrt(math.log(40) / 200))
    assert r == pytest.approx(0.13581, abs=1e-5)
    assert stats.hoeffding_radius(200, 0.05, separable=True) == pytest.approx(2 * r)
    assert stats.hoeffding_radius(200, 0.05, tight=True) == pytest.approx(r / math.sqrt(2))
    np.testing.assert_allclose(stats.hoeffding_radius([50, 200], 0.05), [2 * r, r])


@pytest.mark.parametrize("n, delta, match", [
    (0, 0.05, "n must be >= 1"),
    ([10, 0], 0.05, "n must be >= 1"),
    (10, 0.0, r"delta must be in \(0, 1\)"),
    (10, 1.0, r"delta must be in \(0, 1\)"),
    (10, -0.1, r"delta must be in \(0, 1\)"),
    (10, float("nan"), r"delta must be in \(0, 1\)"),
])
def test_radius_bad_input(n, delta, match):
    with pytest.raises(ValueError, match=match):
        stats.hoeffding_radius(n, delta)


def test_sample_size_planner_inverts_radius():
    for r in (0.1, 0.05, 0.0137):
        for tight in (False, True):
            n = stats.n_for_radius(r, 0.05, tight=tight)
            assert stats.hoeffding_radius(n, 0.05, tight=tight) <= r
            assert stats.hoeffding_radius(n - 1, 0.05, tight=tight) > r
    assert stats.n_for_radius(stats.hoeffding_radius(200, 0.05), 0.05) == 200
    assert stats.n_to_resolve(0.05, 0.05, gap="true") == stats.n_for_radius(0.025, 0.05)
    with pytest.raises(ValueError, match="radius must be > 0"):
        stats.n_for_radius(0, 0.05)
    with pytest.raises(ValueError, match="difference must be nonzero"):
        stats.n_to_resolve(0.0, 0.05)


def test_decision_supported():
    r = stats.hoeffding_radius(200, 0.05)
    assert not stats.decision_supported(0.354, 0.3, r)
    assert stats.decision_supported(0.5, 0.3, r)
    np.testing.assert_array_equal(stats.decision_supported([0.1, 0.29, 0.45], 0.3, r), [True, False, True])


# --------------------------------------------------------------------------- intervals vs scipy


@pytest.mark.parametrize("k, n", [(0, 20), (3, 20), (10, 20), (20, 20), (57, 200), (1, 1)])
@pytest.mark.parametrize("delta", [0.05, 0.1])
def test_clopper_pearson_and_wilson_match_scipy(k, n, delta):
    ref = sps.binomtest(k, n)
    for method, scipy_method in (("clopper_pearson", "exact"), ("wilson", "wilson")):
        ci = ref.proportion_ci(confidence_level=1 - delta, method=scipy_method)
        low, high = stats.interval_from_counts(k, 0, n - k, delta, method)
        assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-10), method


def test_intervals_from_outcomes_and_clipping():
    outcomes = ["win"] * 3 + ["lose"] * 7
    low, high = stats.confidence_interval(outcomes, 0.05, "hoeffding_paper")
    r = stats.hoeffding_radius(10, 0.05)
    assert (low, high) == pytest.approx((max(0.0, 0.3 - r), 0.3 + r))
    for method in stats.INTERVAL_METHODS:
        lo, hi = stats.confidence_interval(["win"] * 5, 0.05, method)
        assert 0.0 <= lo <= hi == 1.0


def test_interval_errors():
    with pytest.raises(ValueError, match="unknown interval method 'bayes'"):
        stats.confidence_interval(["win", "lose"], 0.05, "bayes")
    with pytest.raises(ValueError, match="needs win/lose outcomes only"):
        stats.confidence_interval(["win", "tie", "lose"], 0.05, "wilson")
    with pytest.raises(ValueError, match="n must be >= 2"):
        stats.confidence_interval(["win"], 0.05, "bernstein")
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        stats.confidence_interval(["win", "lose"], 1.5)


# --------------------------------------------------------------------------- coverage by simulation

N_REPS = 4000


def coverage_ok(covered: np.ndarray, delta: float) -> bool:
    """Coverage at least 1 - delta up to 3 Monte-Carlo SEs (about 0.01 at delta = 0.1, 4000 reps)."""
    se = math.sqrt(delta * (1 - delta) / covered.size)
    return covered.mean() >= 1 - delta - 3 * se


def _covered(low, high, mu):
    return (np.asarray(low) <= mu) & (mu <= np.asarray(high))


@pytest.mark.parametrize("mu, tie", [(0.3, 0.0), (0.5, 0.0), (0.3, 0.2), (0.15, 0.3)])
def test_guaranteed_intervals_cover(mu, tie):
    rng = np.random.default_rng(11)
    delta, n = 0.1, 60
    w, t, l = stats.simulate_counts(mu, tie, n, N_REPS, rng)
    methods = ["hoeffding_paper", "hoeffding", "bernstein"] + (["clopper_pearson"] if tie == 0 else [])
    for method in methods:
        assert coverage_ok(_covered(*stats.interval_from_counts(w, t, l, delta, method), mu), delta), method


def test_too_narrow_interval_fails_the_same_check():
    """The check has teeth: 0.4 x Hoeffding's radius, or a Wald interval at 4*delta, must fail it."""
    rng = np.random.default_rng(12)
    delta, n, mu, tie = 0.1, 60, 0.3, 0.2
    w, t, l = stats.simulate_counts(mu, tie, n, N_REPS, rng)
    mean = (w + 0.5 * t) / n
    half = 0.4 * stats.hoeffding_radius(n, delta, tight=True)
    assert not coverage_ok(_covered(mean - half, mean + half, mu), delta)
    sd = np.sqrt((w + 0.25 * t) / n - mean**2)
    z = sps.norm.ppf(1 - 2 * delta)  # nominal 1 - 4 delta
    assert not coverage_ok(_covered(mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n), mu), delta)


def test_confidence_sequence_covers_under_repeated_checks():
    delta = 0.1
    for tie in (0.0, 0.2):
        seq = stats.sequential_coverage(0.3, tie, batch_size=10, n_batches=40, delta=delta, n_reps=N_REPS, seed=3,
                                        methods=["cs_mixture", "cs_union"])
        final = seq[seq["look"] == 40].set_index("method")["coverage_so_far"]
        se = math.sqrt(delta * (1 - delta) / N_REPS)
        assert (final >= 1 - delta - 3 * se).all(), final


def test_fixed_n_interval_fails_under_repeated_checks():
    """Clopper-Pearson is exact at one look but not at 40 looks together: the same check must catch it."""
    delta = 0.1
    seq = stats.sequential_coverage(0.3, 0.0, batch_size=10, n_batches=40, delta=delta, n_reps=N_REPS, seed=4,
                                    methods=["clopper_pearson"])
    at_first = seq.loc[seq["look"] == 1, "coverage_so_far"].item()
    at_last = seq.loc[seq["look"] == 40, "coverage_so_far"].item()
    se = math.sqrt(delta * (1 - delta) / N_REPS)
    assert at_first >= 1 - delta - 3 * se
    assert at_last < 1 - delta - 3 * se


def test_mixture_radius_properties():
    r = stats.mixture_cs_radius(np.array([10, 100, 1000, 10000]), 0.05, t_opt=200)
    assert np.all(np.diff(r) < 0)
    # valid at all n at once, so never tighter than Hoeffding's single-n radius
    assert np.all(r >= stats.hoeffding_radius(np.array([10, 100, 1000, 10000]), 0.05, tight=True))
    # tuning rho to t_opt makes it tightest there among rho choices
    rho = stats.mixture_rho(200, 0.05)
    assert stats.mixture_cs_radius(200, 0.05, rho=rho) <= stats.mixture_cs_radius(200, 0.05, rho=rho * 3)
    with pytest.raises(ValueError, match="rho must be > 0"):
        stats.mixture_cs_radius(10, 0.05, rho=0.0)


def test_confidence_sequence_frame():
    seq = stats.confidence_sequence(["win", "lose", None] * 20, delta=0.05, batch_size=10)
    assert list(seq["n"]) == [10, 20, 30, 40]
    assert seq["win_freq"].iloc[-1] == pytest.approx(0.5)
    assert (seq["low"] <= seq["win_freq"]).all() and (seq["high"] >= seq["win_freq"]).all()
    union = stats.confidence_sequence(["win", "lose"] * 20, delta=0.05, batch_size=10, method="cs_union")
    assert union["high"].iloc[0] - union["low"].iloc[0] > union["high"].iloc[-1] - union["low"].iloc[-1]
    with pytest.raises(ValueError, match="unknown confidence-sequence method"):
        stats.confidence_sequence(["win"], method="bogus")


def test_union_bound_radius():
    assert stats.union_bound_radius(100, 1, 0.05, n_checks=5) == pytest.approx(
        stats.hoeffding_radius(100, 0.01, tight=True))
    assert stats.union_bound_radius(100, 3, 0.05) == pytest.approx(
        stats.hoeffding_radius(100, 0.05 / 12, tight=True))
    with pytest.raises(ValueError, match="exceeds n_checks"):
        stats.union_bound_radius(100, 6, 0.05, n_checks=5)


# --------------------------------------------------------------------------- judge noise


def test_noisy_win_rate_closed_form():
    # w=0.5, t=0.2, l=0.3, p=0.1 -> 0.45 + 0.03 + 0.1
    assert stats.noisy_win_rate(0.5, 0.2, 0.3, 0.1) == pytest.approx(0.58)
    # equals 1/2 + (1-2p)(WinRate - 1/2)
    assert stats.noisy_win_rate(0.5, 0.2, 0.3, 0.1) == pytest.approx(0.5 + 0.8 * (0.6 - 0.5))
    assert stats.noisy_win_rate(0.5, 0.2, 0.3, 0.5) == pytest.approx(0.5)
    assert stats.debias_win_rate(0.58, 0.1) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="flip probability must be in"):
        stats.noisy_win_rate(0.5, 0.2, 0.3, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 0.5\) to debias"):
        stats.debias_win_rate(0.5, 0.5)


def test_noisy_judge_simulation_matches_closed_form():
    table = stats.label_noise_table([0.2, 0.7], 0.2, [0.0, 0.25], n=100, n_reps=2000, seed=1)
    assert (table["z"].abs() < 4).all()


# --------------------------------------------------------------------------- paper decisions, Theorem 5


def test_trace_decisions_follow_the_paper_rule():
    d = stats.trace_decisions(reference.load("mf_traces"), gamma=0.3, n_validation=200, delta=0.05)
    assert not d["candidate"].str.startswith("vanilla").any()
    ups = d[d["decision"] == "upgrade"]
    assert (ups["win_rate"] > 0.3).all() and len(ups) == 8
    stops = d[d["decision"] == "stop"]
    assert len(stops) == 4 and (stops["gap"] < 0).all() and (stops["fidelity"] == "Qwen").all()
    row = d[(d["batch_size"] == 1024) & (d["trace"] == 1) & (d["candidate"] == "step1-iter2")
            & (d["fidelity"] == "Llama")].iloc[0]
    assert row["radius_paper"] == pytest.approx(stats.hoeffding_radius(200, 0.05))
    assert not row["supported_paper"]
    assert row["n_needed_paper"] == stats.n_to_resolve(0.354 - 0.3, 0.05)
    summary = stats.summarize_decisions(d)
    assert summary["looks"].sum() == len(d)


def test_radius_table_shape():
    t = stats.radius_table([10, 200], [0.05, 0.1])
    assert set(t["method"]) >= {"Lemma 1 (paper)", "hoeffding", "cs_mixture", "clopper_pearson"}
    assert isinstance(t, pd.DataFrame) and t["radius"].notna().all()


def test_plot_winrates_with_reference_column():
    from mfnb.core.plots import plot_winrates

    df = pd.DataFrame({"label": ["a", "b", "a", "b"], "win_rate": [0.4, 0.6, 0.5, 0.7],
                       "low": [0.3, 0.5, 0.4, 0.6], "high": [0.5, 0.7, 0.6, 0.8],
                       "paper": [0.45, 0.65, 0.45, 0.65], "run": ["x", "x", "y", "y"]})
    fig = plot_winrates(df, reference="paper", hue="run", threshold=0.5)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "paper (reference)" in labels and "x" in labels
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]


def test_exact_ties_interval_is_clopper_pearson_without_ties_and_covers_with_ties():
    from scipy.stats import binomtest

    low, high = stats.interval_from_counts(30, 0, 70, 0.05, "exact_ties")
    ci = binomtest(30, 100).proportion_ci(0.95, "exact")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    rng = np.random.default_rng(3)
    mu, tie, n = 0.3, 0.2, 200
    w, t, l = stats.simulate_counts(mu, tie, n, N_REPS, rng)
    assert coverage_ok(_covered(*stats.interval_from_counts(w, t, l, 0.05, "exact_ties"), mu), 0.05)


# --------------------------------------------------------------------------- tie conventions


def test_tie_conventions_on_fixed_counts():
    # the student against g1 on 200 validation prompts: 7 wins, 92 ties, 101 losses
    assert stats.win_rate_from_counts(7, 92, 101, "half") == pytest.approx((7 + 46) / 200)
    assert stats.win_rate_from_counts(7, 92, 101, "wins_over_total") == pytest.approx(7 / 200)
    np.testing.assert_allclose(stats.win_rate_from_counts([7, 0], [92, 0], [101, 0], "half"), [0.265, np.nan])
    half = stats.convention_summary(7, 92, 101, "half")
    wot = stats.convention_summary(7, 92, 101, "wins_over_total")
    assert (half["value"], wot["value"]) == (pytest.approx(0.265), pytest.approx(0.035))
    # wins / total is binomial whatever the ties: its exact interval is Clopper-Pearson on 7 of 200
    cp = sps.binomtest(7, 200).proportion_ci(0.95, method="exact")
    assert (wot["exact_low"], wot["exact_high"]) == (pytest.approx(cp.low), pytest.approx(cp.high))
    assert wot["exact_method"] == "clopper_pearson" and half["exact_method"] == "exact_ties"
    assert (half["exact_low"], half["exact_high"]) == pytest.approx(stats.interval_from_counts(7, 92, 101, 0.05,
                                                                                               "exact_ties"))
    assert half["radius"] == wot["radius"] == pytest.approx(stats.hoeffding_radius(200, 0.05))
    assert wot["exact_high"] - wot["exact_low"] < half["exact_high"] - half["exact_low"]
    # without ties the two conventions agree, value and interval
    assert stats.convention_interval(30, 0, 70, "half") == pytest.approx(stats.convention_interval(30, 0, 70,
                                                                                                   "wins_over_total"))
    with pytest.raises(ValueError, match=r"parameter 'tie_convention': unknown tie convention 'ties'.*known: "
                                         "wins_over_total, half"):
        stats.check_convention("ties")
    with pytest.raises(ValueError, match="parameter 'convention'"):
        stats.win_rate_from_counts(1, 1, 1, "halves")


def test_outcome_scores_keep_failed_judgements_in_place():
    out = stats.outcome_scores(["win", "tie", None, "lose"], "half")
    np.testing.assert_array_equal(out, [1.0, 0.5, np.nan, 0.0])
    np.testing.assert_array_equal(stats.outcome_scores(["win", "tie", None, "lose"], "wins_over_total"),
                                  [1.0, 0.0, np.nan, 0.0])


def test_seed_prompt_interval_small_case():
    y = np.array([[1.0, 0.0, 1.0, 0.5], [0.5, 0.0, 1.0, 0.5]])
    iv = stats.seed_prompt_interval(y, 0.05)
    seed_means, prompt_means = y.mean(axis=1), y.mean(axis=0)
    a, b = seed_means.var(ddof=1) / 2, prompt_means.var(ddof=1) / 4
    df = (a + b) ** 2 / (a**2 / 1 + b**2 / 3)
    half = sps.t.ppf(0.975, df) * np.sqrt(a + b)
    assert iv["mean"] == pytest.approx(0.5625) and iv["df"] == pytest.approx(df) and iv["seeds"] == 2
    assert (iv["low"], iv["high"]) == (pytest.approx(max(0, 0.5625 - half)), pytest.approx(min(1, 0.5625 + half)))
    one = stats.seed_prompt_interval(y[:1], 0.05)  # one seed: prompts only
    assert one["method"] == "t over prompts (one seed)" and one["df"] == 3
    with pytest.raises(ValueError, match="no valid scores"):
        stats.seed_prompt_interval(np.full((2, 3), np.nan))


def test_seed_prompt_interval_covers_a_crossed_design():
    """Seeds and prompts both random (y = mu + a_s + b_p + e): the interval covers mu at >= 1 - delta,
    while a t-interval that ignores the seed term (prompts only, seeds pooled) does not."""
    rng = np.random.default_rng(1)
    S, P, reps, delta = 3, 100, 600, 0.1
    hit = naive = 0
    for _ in range(reps):
        y = 0.5 + rng.normal(0, 0.08, (S, 1)) + rng.normal(0, 0.2, (1, P)) + rng.normal(0, 0.2, (S, P))
        iv = stats.seed_prompt_interval(y, delta)
        hit += iv["low"] <= 0.5 <= iv["high"]
        pooled = y.mean(axis=0)
        half = sps.t.ppf(1 - delta / 2, P - 1) * pooled.std(ddof=1) / np.sqrt(P)
        naive += abs(pooled.mean() - 0.5) <= half
    assert hit / reps >= 1 - delta - 0.03
    assert naive / reps < 1 - delta - 0.1


def test_verdicts_and_spend_ratio():
    assert stats.verdict(0.51, 0.6) == "multi-fidelity better"
    assert stats.verdict(0.4, 0.49) == "multi-fidelity worse"
    assert stats.verdict(0.45, 0.55) == stats.verdict(0.5, 0.6) == stats.verdict(np.nan, 0.6) == "inconclusive"
    assert stats.first_reaching([0, 10, 20, 60], [0.1, 0.2, 0.3, 0.5], 0.3) == 20
    assert stats.first_reaching([0, 10], [0.1, 0.2], 0.3) == np.inf
    s = stats.ratio_summary([0.2, 0.4, 0.6], 0.05)
    half = sps.t.ppf(0.975, 2) * 0.2 / np.sqrt(3)
    assert (s["mean"], s["low"], s["high"]) == (pytest.approx(0.4), pytest.approx(0.4 - half), pytest.approx(0.4 + half))
    censored = stats.ratio_summary([0.2, np.inf, 0.6])
    assert censored["reached"] == 2 and np.isnan(censored["mean"]) and censored["median"] == 0.6


def test_claim_verdicts_follow_the_interval_and_the_claimed_side():
    assert stats.claim_verdict(0.01, 0.2) == "reproduced" and stats.claim_verdict(-0.2, -0.01) == "reversed"
    assert stats.claim_verdict(-0.1, 0.1) == "inconclusive" and stats.claim_verdict(float("nan"), 1.0) == "inconclusive"
    assert stats.claim_verdict(-0.2, -0.01, direction=-1) == "reproduced"
    assert stats.combine_verdicts(["reproduced", "reproduced"]) == "reproduced"
    assert stats.combine_verdicts(["reversed", "inconclusive"]) == "reversed"
    assert stats.combine_verdicts(["reproduced", "reversed"]) == "inconclusive" and stats.combine_verdicts([]) == "inconclusive"
