"""Notebook 03 runs through papermill with small parameters, twice: its tables are read back and checked,
and the second run trains nothing (adapters and the reward model come from the cache)."""
from __future__ import annotations

import pandas as pd
import papermill as pm
import pytest
import yaml

from mfnb import paths

NOTEBOOK = "03_expo_alpha_curves"


def test_notebook_03_small_run(tiny_world, tmp_path, monkeypatch):
    root = paths.project_root()
    params = yaml.safe_load((root / "params" / "tiny" / f"{NOTEBOOK}.yaml").read_text())
    params.update(
        profile="tiny",
        preference={**params["preference"], "n_pairs": 256},
        fractions=[0.25, 1.0],
        dpo={**params["dpo"], "batch_size": 16},
        lr_probe=[],
        alphas=[0.0, 1.0, 4.0],
        reward_model={**params["reward_model"], "n_pairs": 1024, "epochs": 1.0},
        sweep_seeds=[0],
        n_select=40,
        n_report=60,
        judge={**params["judge"], "cache": str(tmp_path / "verdicts.sqlite")},
    )
    # adapters, the reward model and sampled responses go to a scratch cache; the world is shared (read-only)
    cache = tmp_path / "cache"
    (cache / "worlds").mkdir(parents=True)
    (cache / "worlds" / tiny_world.root.name).symlink_to(tiny_world.root)
    monkeypatch.setenv("MFNB_CACHE", str(cache))
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path / "results"))
    for run in range(2):
        pm.execute_notebook(str(root / "notebooks" / f"{NOTEBOOK}.ipynb"), str(tmp_path / f"run{run}.ipynb"),
                            parameters=params, kernel_name="python3", cwd=str(root / "notebooks"),
                            progress_bar=False)
    tables = tmp_path / "results" / "tiny" / "tables"
    runs = pd.read_csv(tables / "03_dpo_runs.csv")
    assert runs["data"].tolist() == ["25%", "100%"] and runs["pairs"].tolist() == [64, 256]
    assert runs["cached"].all()  # the second run trained nothing
    sweep = pd.read_csv(tables / "03_alpha_sweep.csv")
    assert len(sweep) == 6 and (sweep["n"] == 40).all()
    optimal = pd.read_csv(tables / "03_optimal_alpha.csv")
    assert optimal["data"].tolist() == ["25%", "100%"]
    assert set(optimal["alpha_by_reward"]) <= {0.0, 1.0, 4.0}
    table1 = pd.read_csv(tables / "03_expo_table1.csv")
    assert table1["model"].tolist() == ["SFT", "DPO(100% data)", "DPO(100% data)+ExPO", "DPO(25% data)",
                                        "DPO(25% data)+ExPO"]
    assert (table1["wins"] + table1["ties"] + table1["losses"] == 60).all()
    assert table1["lc_win_rate"].between(0, 1).all()
    assert table1.set_index("model").loc["DPO(100% data)+ExPO", "paper_lc_win_rate"] == pytest.approx(0.202)
    accuracy = pd.read_csv(tables / "03_reward_model_accuracy.csv")
    assert accuracy["pairs_from"].str.startswith(("perturbed", "samples", "ExPO")).all() and len(accuracy) == 3
    assert (accuracy["accuracy"].iloc[:2] > 0.5).all() and (accuracy["pairs"] > 0).all()
    for name in ("03_expo_alpha_curves", "03_expo_table1"):
        assert (tmp_path / "results" / "tiny" / "figures" / f"{name}.png").is_file()
    assert "Optimal alpha vs data size" in (tmp_path / "run1.ipynb").read_text()
