"""Notebook 03 runs through papermill with small parameters, twice: its tables are read back and checked,
and the second run trains nothing (adapters and the reward model come from the cache)."""
from __future__ import annotations

import pandas as pd
import papermill as pm
import pytest
import yaml

from mfnb.core import paths

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
        figure6={"fractions": [0.25], "lrs": [2.0e-3], "epochs": [3.0]},
        alphas=[0.0, 1.0, 4.0],
        reward_model={**params["reward_model"], "n_pairs": 1024, "epochs": 1.0},
        sweep_seeds=[0],
        report_seeds=[0, 1],
        n_boot=200,
        n_select=40,
        n_report=60,
        judge={**params["judge"], "cache": str(tmp_path / "verdicts.sqlite")},
        train_seeds=[0, 1],
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
    assert runs["model"].tolist() == ["25%", "100%", "25%, lr 0.002", "25%, 3 epochs"] * 2
    assert runs["train_seed"].tolist() == [0] * 4 + [1] * 4
    assert runs["pairs"].tolist() == [64, 256, 64, 64] * 2 and runs["steps"].tolist() == [4, 16, 4, 12] * 2
    assert runs["cached"].all()  # the second run trained nothing
    sweep = pd.read_csv(tables / "03_alpha_sweep.csv")
    assert len(sweep) == 24 and (sweep["n"] == 40).all()
    optimal = pd.read_csv(tables / "03_optimal_alpha.csv")
    assert optimal["data"].tolist() == ["25%", "100%"] * 2 and optimal["train_seed"].tolist() == [0, 0, 1, 1]
    assert set(optimal["alpha_by_reward"]) <= {0.0, 1.0, 4.0}
    assert (optimal["alpha_low"] <= optimal["alpha_by_reward"]).all()
    assert (optimal["alpha_by_reward"] <= optimal["alpha_high"]).all()
    table1 = pd.read_csv(tables / "03_expo_table1.csv")
    assert table1["model"].tolist() == ["SFT", "DPO(100% data)", "DPO(100% data)+ExPO",
                                        "DPO(100% data)+ExPO (oracle alpha)", "DPO(25% data)",
                                        "DPO(25% data)+ExPO", "DPO(25% data)+ExPO (oracle alpha)",
                                        "DPO(25% data, lr 0.002)", "DPO(25% data, lr 0.002)+ExPO",
                                        "DPO(25% data, 3 epochs)", "DPO(25% data, 3 epochs)+ExPO"]
    # 60 prompts x 2 sampling seeds, x 2 training seeds for every model but the SFT one
    assert (table1["wins"] + table1["ties"] + table1["losses"]).tolist() == [120] + [240] * 10
    assert table1["alpha_per_seed"].fillna("").str.count(",").tolist() == [0] + [1] * 10
    for metric in ("reward", "win_rate", "lc_win_rate"):
        assert (table1[f"{metric}_low"] <= table1[metric] + 1e-12).all()
        assert (table1[metric] <= table1[f"{metric}_high"] + 1e-12).all()
    assert table1["lc_win_rate"].between(0, 1).all()
    assert table1.set_index("model").loc["DPO(100% data)+ExPO", "paper_lc_win_rate"] == pytest.approx(0.202)
    comparison = pd.read_csv(tables / "03_comparisons.csv")
    assert set(comparison["reading"]) <= {"higher", "lower", "indistinguishable"}
    assert ((comparison["low"] <= comparison["difference"] + 1e-12)
            & (comparison["difference"] <= comparison["high"] + 1e-12)).all()
    shift = pd.read_csv(tables / "03_figure6_alpha_shift.csv")
    assert shift["control"].tolist() == ["25%, lr 0.002", "25%, 3 epochs"]
    claims = pd.read_csv(tables / "03_claims.csv")
    assert set(claims["verdict"]) <= {"reproduced", "reversed", "inconclusive", "not testable"}
    assert {"Figure 5, Table 3", "Table 1", "Table 1 (oracle arm)", "Figure 6"} <= set(claims["source"])
    seeds = pd.read_csv(tables / "03_seed_verdicts.csv")  # each training seed alone, beside the crossed verdict
    assert seeds["claim"].tolist() == claims["claim"].tolist() and {"seed 0", "seed 1", "moved"} <= set(seeds)
    verdicts = pd.read_csv(tables / "03_verdicts.csv")
    assert verdicts["claim"].is_unique
    assert set(verdicts["verdict"]) <= {"reproduced", "reversed", "inconclusive", "not testable"}
    accuracy = pd.read_csv(tables / "03_reward_model_accuracy.csv")
    assert accuracy["pairs_from"].str.startswith(("perturbed", "samples", "ExPO")).all() and len(accuracy) == 3
    assert (accuracy["accuracy"].iloc[:2] > 0.5).all() and (accuracy["pairs"] > 0).all()
    for name in ("03_expo_alpha_curves", "03_expo_table1", "03_figure6_control"):
        assert (tmp_path / "results" / "tiny" / "figures" / f"{name}.png").is_file()
    text = (tmp_path / "run1.ipynb").read_text()
    assert "Why does the optimal alpha fall with data?" in text and "the optimal alpha falls as the data grows" in text
