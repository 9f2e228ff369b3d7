"""Notebook 04 (HbAT ablations) runs end to end through papermill with small parameters and writes its
tables and figures (about a minute on 2 cores once the tiny world is built)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from mfnb.core import paths

pm = pytest.importorskip("papermill")

NOTEBOOK = "04_hbat_ablations"


def test_notebook_04_runs_and_writes_tables(tmp_path, monkeypatch):
    root = paths.project_root()
    params = yaml.safe_load((root / "params" / "tiny" / f"{NOTEBOOK}.yaml").read_text())
    params["conflict"].update(n_sft=100, n_pref=100)
    params.update(profile="tiny", seeds=[0], grid_seeds=[0], n_grid=[2, 3], fmax_grid=[50.0, 100.0],
                  lam_grid=[0.01, 1.0], n_validation=50, n_test=100, efficiency_repeats=1)
    # results (and the run store under results/<profile>/runs) go to tmp_path, never over committed results
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path / "results"))
    out = tmp_path / f"{NOTEBOOK}.ipynb"
    pm.execute_notebook(str(root / "notebooks" / f"{NOTEBOOK}.ipynb"), str(out), parameters=params,
                        kernel_name="python3", cwd=str(root / "notebooks"), progress_bar=False)

    tables = tmp_path / "results" / "tiny" / "tables"
    table4 = pd.read_csv(tables / "04_table4.csv")
    assert list(table4["method"]) == ["SFT", "DPO", "HbAT", "w/o EWC", "w/o alternating", "HbAT-Freeze",
                                      "HbAT w/ original EWC", "HbAT w/ uniform anchor", "HbAT w/ released importance"]
    mechanism = pd.read_csv(tables / "04_mechanism.csv")
    assert set(mechanism["control"]) == {"HbAT w/ uniform anchor", "HbAT w/ released importance"}
    assert set(mechanism["over"]) <= {"test prompts", "seeds"} and (mechanism["n"] > 0).all()   # one seed: prompts
    assert table4[["quality", "reward", "win_rate"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table4["seeds"] == 1).all()
    assert table4.set_index("method").loc["SFT", "reward"] == 0.0       # demonstrations never carry the style
    assert table4.set_index("method").loc["HbAT", "paper_gpt4_win"] == pytest.approx(60.10)
    assert table4.set_index("method").loc["HbAT w/ original EWC", "paper_gpt4_win"] == pytest.approx(58.32)
    runs = pd.read_csv(tables / "04_table4_runs.csv").set_index("method")
    assert runs.loc["HbAT", "n_stages"] == 4       # sft, dpo, sft, dpo
    assert runs.loc["HbAT w/ original EWC", "importance_seconds"] > 0 and runs.loc["HbAT", "importance_seconds"] == 0
    assert runs.loc["HbAT w/ original EWC", "state_bytes"] > runs.loc["HbAT", "state_bytes"]  # a Fisher per element
    order = pd.read_csv(tables / "04_orderings.csv")
    assert len(order) == 36 and set(order["metric"]) == {"quality", "reward", "win_rate"}
    # one seed: paired over the test prompts, as the claims are, so the two tables agree
    assert set(order["paired_over"]) == {"100 test prompts (one seed)"}
    claims = pd.read_csv(tables / "04_claims.csv").set_index("claim")
    beats = order[(order["paper_says"] == "HbAT > DPO") & (order["source"] == "Table 4")].set_index("metric")
    for metric, verdict in (p.split(": ") for p in claims.loc["HbAT beats two-stage DPO", "per_metric"].split(", ")):
        assert beats.loc[metric, "verdict"] == verdict, metric
    grid = pd.read_csv(tables / "04_figure2_runs.csv")
    assert set(grid["axis"]) == {"N", "Fmax", "DPO"}
    table7 = pd.read_csv(tables / "04_table7.csv").set_index("method")
    assert table7.loc["DPO", "relative_time"] == 1.0 and table7.loc["HbAT", "relative_time"] > 0
    assert table7.loc["HbAT w/ original EWC", "importance_seconds"] > 0
    assert table7.loc["HbAT w/ original EWC", "paper_relative_time"] == pytest.approx(1.64)
    lam = pd.read_csv(tables / "04_lambda_runs.csv")
    assert set(lam["axis"]) == {"lambda", "DPO"} and set(lam.loc[lam["axis"] == "lambda", "value"]) == {0.01, 1.0}
    assert lam["val_win_rate"].between(0, 1).all()
    claims = pd.read_csv(tables / "04_claims.csv")
    assert set(claims["verdict"]) <= {"reproduced", "reversed", "inconclusive"}
    assert {"HbAT beats two-stage DPO", "the modified EWC matches the original EWC's win rate",
            "the modified EWC trains faster than the original EWC", "the best Fmax is 50",
            "too many splits hurt"} <= set(claims["claim"])
    # one seed: the claims and the tax check pair the runs over the 100 test prompts instead (per-prompt scores)
    hbat_vs_dpo = claims.set_index("claim").loc["HbAT beats two-stage DPO", "ours"]
    assert hbat_vs_dpo.count("(paired over 100 test prompts)") == 3
    assert not (tables / "04_seed_verdicts.csv").exists()  # one seed: no seed alone to set beside the verdicts
    conflict = json.loads((tables / "04_conflict_check.json").read_text())
    assert conflict["quality"]["prompts"] == 100 and conflict["quality"]["low"] <= conflict["quality"]["high"]
    imp = pd.read_csv(tables / "04_importance.csv")
    assert imp["F_ours"].sum() == pytest.approx(100.0)
    figures = tmp_path / "results" / "tiny" / "figures"
    for name in ("04_table4_tradeoff", "04_table4_winrate", "04_figure2"):
        assert (figures / f"{name}.png").is_file() and (figures / f"{name}.pdf").is_file()
    text = out.read_text()
    assert "By mean validation win rate over seeds the sweep prefers lambda" in text
    assert "Verdicts per claim" in text and "original EWC: raw Fisher mean per element" in text
