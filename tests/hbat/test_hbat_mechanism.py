"""Does the importance weighting matter (mfnb.hbat.mechanism): HbAT paired with its controls, by hand."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from mfnb import hbat

UNIFORM, RELEASED = hbat.MECHANISM_CONTROLS


def _runs(diff_reward: list[float], quality=None):
    rows = []
    for seed, d in enumerate(diff_reward):
        base = 0.5 + 0.01 * seed
        rows.append({"method": "HbAT", "seed": seed, "reward": base + d, "quality": quality, "win_rate": 0.6})
        rows.append({"method": UNIFORM, "seed": seed, "reward": base, "quality": quality, "win_rate": 0.6})
    return pd.DataFrame(rows)


def test_hbat_minus_the_uniform_anchor_over_seeds():
    table = hbat.mechanism_table(_runs([0.10, 0.12, 0.08]), metrics=("reward", "win_rate", "quality"))
    reward = table.set_index("metric").loc["reward"]
    assert reward["control"] == UNIFORM and reward["n"] == 3 and reward["over"] == "seeds"
    assert reward["difference"] == pytest.approx(0.10)
    # t-interval over three differences 0.10, 0.12, 0.08: sd 0.02, t(0.975, 2) = 4.303
    assert reward["high"] - reward["difference"] == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-3)
    assert reward["reading"] == "higher"
    win = table.set_index("metric").loc["win_rate"]
    assert win["difference"] == 0.0 and win["reading"] == "indistinguishable"
    assert table.set_index("metric").loc["quality", "reading"] == "no known quality"   # a judge-only world
    lines = hbat.mechanism_lines(table, {})
    assert lines == [f"- **HbAT minus {UNIFORM}** (paired over seeds): reward +0.100 [0.050, 0.150] (higher); "
                     "win rate +0.000 [0.000, 0.000] (indistinguishable): differs on reward."]


def test_no_control_run_says_how_to_measure_it_and_the_spread_reads_the_records():
    table = hbat.mechanism_table(pd.DataFrame([{"method": "HbAT", "seed": 0, "reward": 0.5}]), metrics=("reward",))
    assert table.empty and list(table.columns) == list(hbat.mechanism.COLUMNS)
    records = [{"label": "HbAT", "importance": [{"F": {"a": 2.0, "b": 2.0}}, {"F": {"a": 3.0, "b": 1.0}}]},
               {"label": "DPO", "importance": []}]
    spread = hbat.importance_spread(records)
    assert spread["stages"] == 2 and spread["tensors"] == 2 and spread["max_over_min"] == 3.0
    assert spread["effective_tensors"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    lines = hbat.mechanism_lines(table, spread)
    assert lines[0].startswith("- **HbAT's own weights:** over 2 penalised stages, F_i ran from 1.000 to 3.000")
    assert "Not measured: add `HbAT w/ uniform anchor`" in lines[1]
    assert hbat.importance_spread([]) == {}


def test_a_control_that_trained_the_same_model_reads_identical():
    table = hbat.mechanism_table(_runs([0.0, 0.0]), metrics=("reward",))
    assert hbat.mechanism_lines(table, {})[0].endswith(
        "reward +0.000 [0.000, 0.000] (indistinguishable): identical on every score: the two trained the same model "
        "as far as these scores see.")
