"""Notebook 02 runs end to end through papermill with small parameters and writes its tables/figures; its
verdicts are computed (the text is in the executed notebook), and bad input stops it at the parameter check."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from mfnb.core import paths

pm = pytest.importorskip("papermill")

NOTEBOOK = "02_multifidelity_traces"
ROOT = paths.project_root()


def _params(tmp_path, **change):
    params = yaml.safe_load((ROOT / "params" / "tiny" / f"{NOTEBOOK}.yaml").read_text())
    params.update(profile="tiny", batch_sizes=[32], trace_seeds=[0, 1], n_validation=40, n_test=40,
                  max_iters_per_fidelity=2, max_iters=5, runs_dir=str(tmp_path / "runs"), baseline_batch_sizes={},
                  dpo={**params["dpo"], "lr": 1e-3})
    params["judge"] = {**params["judge"], "cache": str(tmp_path / "judge.sqlite")}
    params.update(change)
    return params


def test_notebook_02_runs_and_writes_tables(tmp_path, monkeypatch):
    params = _params(tmp_path)
    # results go to tmp_path, never over the committed results/ (the kernel inherits the environment)
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path / "results"))
    out = tmp_path / f"{NOTEBOOK}.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb"), str(out), parameters=params,
                        kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)

    tables = tmp_path / "results" / "tiny" / "tables"
    traces = pd.read_csv(tables / "02_traces.csv")
    assert set(traces["batch_size"]) == {32} and set(traces["trace"]) == {1, 2} and set(traces["seed"]) == {0, 1}
    assert traces["n"].le(40).all() and traces["win_rate"].between(0, 1).all()
    assert (traces["wins_over_total"] <= traces["win_rate"]).all()
    assert (traces["value"] == traces["win_rate"]).all()  # the tiny profile decides with WinFreq
    assert traces.loc[traces["candidate"] == "student", "fidelity"].tolist() == [1, 1]
    mf_rows = traces[traces["kind"] != "vanilla"]
    assert mf_rows.groupby(["trace", "fidelity"])["kind"].first().eq("entry").all()  # blocks open with the entering model
    assert (mf_rows["radius"].round(4) == 0.3037).all()  # Lemma 1 at n = 40, delta = 0.05
    assert mf_rows.groupby("trace")["Lambda"].apply(lambda s: s.is_monotonic_increasing).all()

    per_seed = pd.read_csv(tables / "02_table4_per_seed.csv")
    assert set(per_seed["baseline"]) == {"vanilla-m1", "vanilla-m2", "vanilla-m3", "sft", "fixed_ladder"} or \
        set(per_seed["baseline"]) >= {"vanilla-m1", "vanilla-m3", "sft", "fixed_ladder"}
    assert (per_seed["n"] + per_seed["failed"] == 40).all()
    assert (per_seed["candidate_Lambda"] == per_seed["baseline_Lambda"]).all()  # equal budget, B = 32 fits exactly
    assert (per_seed["wins_over_total"] <= per_seed["win_rate"]).all()
    assert (per_seed["win_rate_exact_low"] <= per_seed["win_rate"]).all()
    t4 = pd.read_csv(tables / "02_table4.csv")
    assert (t4["seeds"] == 2).all() and set(t4["verdict"]) <= {"multi-fidelity better", "multi-fidelity worse",
                                                              "inconclusive"}
    assert (t4["win_rate_low"] <= t4["win_rate"]).all() and (t4["win_rate"] <= t4["win_rate_high"]).all()
    ratios = pd.read_csv(tables / "02_spend_ratio_per_seed.csv")
    assert len(ratios) == 2 and (ratios["target_run"] == "vanilla-m3").all()
    assert pd.read_csv(tables / "02_spend_ratio.csv")["batch_size"].astype(str).tolist() == ["32", "all"]

    ledger = pd.read_csv(tables / "02_ledger.csv")
    for (label, run), sub in ledger[(ledger["phase"] == "train") & (ledger["payer"] == "expert")].groupby(["label", "run"]):
        if run in ("vanilla-m1", "sft", "fixed_ladder"):  # full-budget baselines spend exactly the mf run's Lambda
            mf_spent = ledger[(ledger["label"] == label) & (ledger["run"] == "mf") & (ledger["phase"] == "train")
                              & (ledger["payer"] == "expert")]["cost"].sum()
            assert sub["cost"].sum() == mf_spent, (label, run)
    decisions = pd.read_csv(tables / "02_decisions.csv")
    assert set(decisions["convention"]) == {"half"} and set(decisions["gamma_rule"]) == {"exceeds"}
    assert (decisions["other_convention"] == "wins_over_total").all()
    for name in ("02_decisions_summary", "02_theorem5", "02_time_shares", "02_departures", "02_iterations",
                 "02_budgets", "02_vs_top_expert"):
        assert (tables / f"{name}.csv").is_file()
    departures = pd.read_csv(tables / "02_departures.csv").set_index("what")
    assert "WinFreq (ties 1/2)" in departures.loc["win rate compared with gamma", "here"]
    assert "the initial student" in departures.loc["DPO reference model", "here"]
    figures = tmp_path / "results" / "tiny" / "figures"
    for name in ("02_traces", "02_cost_quality", "02_table4", "02_spend_to_match"):
        assert (figures / f"{name}.png").is_file() and (figures / f"{name}.pdf").is_file()
    text = out.read_text()
    for computed in ("**Overall:** of", "Decisions used **WinFreq (ties 1/2)**", "Under wins / total the same rule",
                     "B = 32, vs **vanilla-m3**"):
        assert computed.replace("**", "") in text.replace("**", ""), computed


# one case: the path (a kernel, about 13 s); every field's message is checked on the library call in
# test_multifidelity.py and through the CLI below
@pytest.mark.parametrize("change, message", [
    ({"baselines": ["vanilla-m3", "stf"]}, "parameter 'baselines': Value error, unknown baseline 'stf' "
                                             "(did you mean 'sft'?)"),
])
def test_plain_papermill_with_bad_input_stops_at_the_parameter_check(tmp_path, monkeypatch, change, message):
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path / "results"))
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters=_params(tmp_path, **change), kernel_name="python3",
                            cwd=str(ROOT / "notebooks"), progress_bar=False)
    assert err.value.ename == "ParamsError" and message in err.value.evalue
    assert "from_namespace" in err.value.source  # the first cell after the imports: nothing ran
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key, value, message", [
    ("baselines", "[vanilla-m3, stf]", "parameter 'baselines': Value error, unknown baseline 'stf' (did you mean 'sft'?)"),
    ("trace_seeds", "[0, 1, 1]", "parameter 'trace_seeds': Value error, seed(s) [1] listed more than once"),
    ("tie_convention", "wins", "parameter 'tie_convention': Input should be 'wins_over_total' or 'half'"),
])
def test_python_m_mfnb_run_refuses_bad_input_naming_the_field(tmp_path, monkeypatch, capsys, key, value, message):
    from mfnb import cli

    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path / "results"))
    status = cli.main(["run", "02", "-p", key, value])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "nothing was run." in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()
