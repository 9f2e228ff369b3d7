"""Notebook 01 runs through papermill with small parameters; its table is read back and checked."""
from __future__ import annotations

import pandas as pd
import papermill as pm
import yaml

from mfnb.core import paths

NOTEBOOK = "01_fidelity_winrates"


def test_notebook_01_writes_an_ordered_ladder(tiny_world, tmp_path, monkeypatch):
    root = paths.project_root()
    params = yaml.safe_load((root / "params" / "tiny" / f"{NOTEBOOK}.yaml").read_text())
    params.update(profile="tiny", judge={**params["judge"], "cache": str(tmp_path / "verdicts.sqlite")})
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path / "results"))
    for run in range(2):
        pm.execute_notebook(str(root / "notebooks" / f"{NOTEBOOK}.ipynb"), str(tmp_path / f"run{run}.ipynb"),
                            parameters=params, kernel_name="python3", cwd=str(root / "notebooks"),
                            progress_bar=False)
    table = pd.read_csv(tmp_path / "results" / "tiny" / "tables" / f"{NOTEBOOK}.csv")
    assert list(table["candidate"]) == ["g1", "g2", "g3"]
    assert (table["win_rate"] > 0.5).all() and (table["n"] == 200).all() and (table["failed"] == 0).all()
    assert table["paper_wins_over_total (reference)"].round(3).tolist() == [0.785, 0.520, 0.695]
    # both tie conventions: wins / total counts a tie as not won, so it sits below WinFreq whenever there are ties
    assert (table["wins_over_total"] == table["wins"] / table["n"]).all()
    assert (table["wins_over_total"] <= table["win_rate"]).all()
    assert (table["wins_over_total_low"] <= table["wins_over_total"]).all()
    assert (table["wins_over_total"] <= table["wins_over_total_high"]).all()
    costs = pd.read_csv(tmp_path / "results" / "tiny" / "tables" / "01_costs.csv")
    assert costs["cost_per_response"].tolist() == [1.0, 1.0, 4.0, 16.0]
    assert costs["mean_quality"].is_monotonic_increasing
    for ext in ("png", "pdf"):
        assert (tmp_path / "results" / "tiny" / "figures" / f"{NOTEBOOK}.{ext}").is_file()
    # the second run answered every judgement from the cache
    second = (tmp_path / "run1.ipynb").read_text()
    assert "Judge: 0 new calls" in second
    assert "The ladder is" in second and "wins / total" in second  # the computed verdict
    # how far to trust the judge: the oracle reads every pair and agrees with the checker it is built on
    agreement = pd.read_csv(tmp_path / "results" / "tiny" / "tables" / "01_judge_agreement.csv")
    assert agreement["judge"].tolist() == ["judge (oracle)"] and agreement["kind"].tolist() == ["OracleJudge"]
    assert agreement["pairs"].tolist() == [600] and agreement["parse_rate"].tolist() == [1.0]
    assert agreement["agreement_n"].iloc[0] > 0 and agreement["agreement"].iloc[0] == 1.0
    assert "judges by the checker itself" in second
