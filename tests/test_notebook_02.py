"""Notebook 02 runs end to end through papermill with small parameters and writes its tables/figures."""
from __future__ import annotations


import pandas as pd
import pytest
import yaml

from mfnb import paths

pm = pytest.importorskip("papermill")

NOTEBOOK = "02_multifidelity_traces"


def test_notebook_02_runs_and_writes_tables(tmp_path, monkeypatch):
    root = paths.project_root()
    params = yaml.safe_load((root / "params" / "tiny" / f"{NOTEBOOK}.yaml").read_text())
    params.update(profile="tiny", batch_sizes=[32], trace_seeds=[0], n_validation=40, n_test=40,
                  max_iters_per_fidelity=2, max_iters=5, runs_dir=str(tmp_path / "runs"),
                  dpo={**params["dpo"], "lr": 1e-3})
    params["judge"] = {**params["judge"], "cache": str(tmp_path / "judge.sqlite")}
    # results go to tmp_path, never over the committed results/ (the kernel inherits the environment)
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path / "results"))
    out = tmp_path / f"{NOTEBOOK}.ipynb"
    pm.execute_notebook(str(root / "notebooks" / f"{NOTEBOOK}.ipynb"), str(out), parameters=params,
                        kernel_name="python3", cwd=str(root / "notebooks"), progress_bar=False)

    tables = tmp_path / "results" / "tiny" / "tables"
    traces = pd.read_csv(tables / "02_traces.csv")
    assert set(traces["batch_size"]) == {32} and set(traces["trace"]) == {1}
    assert traces["n"].le(40).all() and traces["win_rate"].between(0, 1).all()
    assert traces.loc[traces["candidate"] == "student", "fidelity"].tolist() == [1]
    mf_rows = traces[traces["kind"] != "vanilla"]
    assert mf_rows.groupby("fidelity")["kind"].first().eq("entry").all()  # each block opens with the entering model
    assert (mf_rows["radius"].round(4) == 0.3037).all()  # Lemma 1 at n = 40, delta = 0.05
    assert mf_rows["Lambda"].is_monotonic_increasing
    vanilla = traces[traces["kind"] == "vanilla"]
    assert set(vanilla["candidate"]) <= {"vanilla(m=2)", "vanilla(m=3)"}

    t4 = pd.read_csv(tables / "02_table4.csv")
    assert (t4["n"] + t4["failed"] == 40).all() and (t4["candidate_Lambda"] == t4["baseline_Lambda"]).all()
    ledger = pd.read_csv(tables / "02_ledger.csv")
    mf_train = ledger[(ledger["run"] == "mf") & (ledger["phase"] == "train") & (ledger["payer"] == "expert")]
    assert mf_train["cost"].sum() == mf_rows["Lambda"].max()
    for name in ("02_decisions", "02_theorem5", "02_time_shares", "02_departures", "02_iterations"):
        assert (tables / f"{name}.csv").is_file()
    figures = tmp_path / "results" / "tiny" / "figures"
    for name in ("02_traces", "02_cost_quality"):
        assert (figures / f"{name}.png").is_file() and (figures / f"{name}.pdf").is_file()
