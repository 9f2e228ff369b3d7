"""The cost estimate (mfnb.estimate): exact counts on small hand-made params, pricing, throughputs, the rehearsal
check and the command."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from mfnb import cli, estimate
from mfnb.core import paths
from mfnb.core.params import ParamsError, load_yaml, merge_overlay
from mfnb.estimate import check, counts
from mfnb.estimate.costs import Assumptions, judge_clock, priced, template_tokens
from mfnb.estimate.throughput import Throughput, ThroughputError, throughputs
from mfnb.judges import TEMPLATES


def _params(notebook: str, overlay: dict, roles: dict | None = None):
    values = merge_overlay(load_yaml(paths.params_file(notebook, "paper")), overlay)
    if roles is not None:  # replaced, not merged: the test's roles only
        values["world"]["roles"] = roles
    return estimate.validate(notebook, values, "test")


def _by_item(items: pd.DataFrame, start: str) -> pd.Series:
    rows = items[items["item"].str.startswith(start)]
    assert len(rows) == 1, (start, list(items["item"]))
    return rows.iloc[0]


def test_notebook_01_counts_roles_seeds_steps_and_the_judge_check():
    P = _params("01_fidelity_winrates", {"world": {"data": {"n_validation": 5}}, "chain": ["student", "llama3", "mistral"],
                                         "sampling_seeds": [0, 1], "sampling": {"max_new_tokens": 20},
                                         "agreement": {"max_pairs": 3, "judges": {"extra": {"kind": "oracle"}}}})
    items = estimate.count({"01_fidelity_winrates": P})
    assert _by_item(items, "responses")["responses"] == 3 * 2 * 5
    table1 = _by_item(items, "Table 1")
    assert table1["judge_pairs"] == 2 * 2 * 5 and table1["judge_requests"] == 40 and table1["max_new_tokens"] == 20
    own, extra = _by_item(items, "judge check (judge)"), _by_item(items, "judge check (extra)")
    assert own["judge_pairs"] == 3 and own["judge_requests"] == 6      # an LLM judge: both orders
    assert extra["judge_pairs"] == 3 and extra["judge_requests"] == 0  # an oracle makes no requests


def test_notebook_03_counts_adapters_pairs_steps_sweeps_and_table1():
    P = _params("03_expo_alpha_curves", {
        "world": {"data": {"n_dev": 10}}, "preference": {"n_pairs": 50}, "fractions": [0.1, 1.0],
        "figure6": {"fractions": [0.1], "lrs": [1.0e-5], "epochs": [2.0]}, "lr_probe": [5.0e-6, 5.0e-7],
        "alphas": [0.0, 1.0, 2.0], "sweep_seeds": [0, 1], "n_select": 4, "n_report": 3, "report_seeds": [0],
        "dpo": {"batch_size": 2, "grad_accum": 2, "epochs": 1.0}, "alpaca_eval": None, "off_the_shelf": []},
        roles={"sft": {"model": "alignment-handbook/zephyr-7b-sft-full", "cost": 0.0},
               "gpt4_turbo": {"references": True, "description": "references"}})
    sizes = estimate.Sizes()
    items = estimate.count({"03_expo_alpha_curves": P}, sizes)
    # adapters: 10% (5 pairs), 100% (50), 10% at lr 1e-5 (5), 10% for 2 epochs (5); global batch 4
    adapters = _by_item(items, "DPO adapters (data fractions")
    assert adapters["training_runs"] == 4 and adapters["train_rows"] == 65
    assert adapters["optimizer_steps"] == 2 + 13 + 2 + 4 and adapters["train_sequences"] == 2 * (5 + 50 + 5 + 10)
    probe = _by_item(items, "DPO adapters (learning-rate probe)")  # 5e-7 is dpo.lr on 100%: already trained
    assert (probe["training_runs"], probe["train_rows"], probe["optimizer_steps"]) == (1, 50, 13)
    assert _by_item(items, "alpha sweeps")["responses"] == 4 * 3 * 2 * 4
    assert _by_item(items, "probe sweeps")["responses"] == 1 * 3 * 4
    assert _by_item(items, "roles on the validation prompts")["responses"] == 2 * 4   # sft, both sweep seeds
    assert _by_item(items, "Table 1 responses")["responses"] == (1 + 2 * 4) * 3
    assert _by_item(items, "Table 1:")["judge_requests"] == 2 * 9 * 3
    assert set(sizes.used) == {"alpaca_eval.eval"}  # n_report 3 of AlpacaEval's 805; n_pairs and n_dev are given


_SMALL_03 = {"world": {"data": {"n_dev": 10}}, "preference": {"n_pairs": 50}, "fractions": [1.0],
             "figure6": {"fractions": [], "lrs": [], "epochs": []}, "lr_probe": [], "alphas": [0.0, 1.0],
             "sweep_seeds": [3, 4], "n_select": 4, "n_report": 3, "report_seeds": [0, 1],
             "sampling": {"max_new_tokens": 10}}
_ROLES_03 = {"sft": {"model": "alignment-handbook/zephyr-7b-sft-full", "cost": 0.0},
             "gpt4_turbo": {"references": True, "description": "references"},
             "tulu": {"model": "allenai/tulu-2-13b", "cost": 0.0}, "tulu_dpo": {"model": "allenai/tulu-2-dpo-13b", "cost": 0.0},
             "oc": {"model": "openchat/openchat-3.5", "cost": 0.0}, "star": {"model": "x/Starling", "cost": 0.0}}


def test_notebook_03_alpaca_eval_judges_each_pair_once_and_table2_counts_each_pair():
    P = _params("03_expo_alpha_curves", {**_SMALL_03, "off_the_shelf": [
        {"name": "tulu", "sft_role": "tulu", "aligned_role": "tulu_dpo", "alphas": [0.1, 0.3, 0.5]},
        {"name": "star", "sft_role": "oc", "aligned_role": "star", "alphas": [0.2]}]}, roles=_ROLES_03)
    items = estimate.count({"03_expo_alpha_curves": P})
    table1 = _by_item(items, "Table 1:")
    # 1 fraction: SFT + the adapter at alpha 0 and at its alpha = 3 models, 2 report seeds, 3 prompts; one order each
    assert table1["judge_kind"] == "alpaca_eval" and table1["judge_pairs"] == 3 * 2 * 3 and table1["judge_requests"] == 18
    assert table1["judge"]["max_tokens"] == 1 and table1["judge"]["verdict"] == "logprobs"
    assert "gpt-4-1106-preview" in table1["judge_model"] and table1["judge"]["input_price"] == 10.0
    # the paper world samples only the SFT role on the validation prompts (no known quality): both sweep seeds
    assert _by_item(items, "roles on the validation prompts")["responses"] == 2 * 4
    # Table 2, per pair: alpha 0 and every alpha on the 4 validation prompts (first sweep seed only); aligned and
    # chosen alpha on the 3 test prompts per report seed; every nonzero alpha extrapolated, the chosen one again
    tulu, star = _by_item(items, "Table 2 alpha search (tulu)"), _by_item(items, "Table 2 alpha search (star)")
    assert (tulu["responses"], tulu["extrapolations"], tulu["extrapolated_gb"]) == (4 * 4, 3, 3 * 26)
    assert (star["responses"], star["extrapolations"], star["extrapolated_gb"]) == (2 * 4, 1, 0)  # no size in the name
    test = _by_item(items, "Table 2 test responses (tulu)")
    assert (test["responses"], test["extrapolations"], test["extrapolated_gb"]) == (2 * 2 * 3, 1, 26)
    table2 = _by_item(items, "Table 2:")
    assert table2["judge_pairs"] == 4 * 2 * 3 and table2["judge_requests"] == 24 and table2["max_new_tokens"] == 10
    assert items["extrapolations"].sum() == 3 + 1 + 1 + 1
    rates = {k: Throughput(1.0, "x") for k in ("sampling", "training", "training_full")}
    got = priced(items, rates, Assumptions(prompt_tokens=10))
    t2 = got[got["item"].str.startswith("Table 2:")].iloc[0]
    per_request = template_tokens(counts.alpaca_eval_judge(P.alpaca_eval)["template"]) + 10 + 2 * 10
    assert per_request > 300 + 30   # alpaca_eval's own prompt (~1,360 characters without its fields)
    assert t2["judge_input_tokens"] == 24 * per_request and t2["judge_output_tokens"] == 24
    assert t2["judge_dollars"] == pytest.approx((24 * per_request * 10.0 + 24 * 30.0) / 1e6)
    # the pairwise judge (alpaca_eval unset) asks every pair of both tables in both orders
    P = _params("03_expo_alpha_curves", {**_SMALL_03, "alpaca_eval": None, "off_the_shelf": [
        {"name": "tulu", "sft_role": "tulu", "aligned_role": "tulu_dpo", "alphas": [0.1]}]}, roles=_ROLES_03)
    items = estimate.count({"03_expo_alpha_curves": P})
    assert _by_item(items, "Table 1:")["judge_requests"] == 2 * 18 and _by_item(items, "Table 2:")["judge_requests"] == 2 * 12
    assert "Table 2" not in " ".join(estimate.count({"03_expo_alpha_curves": _params(
        "03_expo_alpha_curves", {**_SMALL_03, "off_the_shelf": []}, roles=_ROLES_03)})["item"])


def test_notebook_04_counts_each_distinct_stage_once_and_table7():
    P = _params("04_hbat_ablations", {
        "conflict": {"n_sft": 10, "n_pref": 7}, "methods": ["SFT", "DPO", "HbAT"], "n_grid": [1, 2], "fmax_grid": [],
        "hbat": {"n_splits": 2, "sft": {"batch_size": 4, "epochs": 1.0}, "dpo": {"batch_size": 4, "epochs": 1.0}},
        "n_validation": 3, "n_test": 5, "efficiency_repeats": 1})
    items = estimate.count({"04_hbat_ablations": P})
    # runs: SFT, DPO, HbAT (N=2) and the grid's HbAT at N=1 (N=2 and the grid's DPO are the same runs again).
    # new stages: sft0 on all 10 (SFT's, shared by DPO and HbAT N=1), DPO's dpo0 (7); HbAT N=2: sft0 5, dpo0 4,
    # sft1 5, dpo1 3; HbAT N=1: dpo0 7 under EWC. Table 7 once: DPO (10, 7), HbAT and the original EWC (5, 4, 5, 3)
    sft, dpo = _by_item(items, "SFT stages"), _by_item(items, "DPO stages")
    assert (sft["training_runs"], sft["train_rows"]) == (3 + 5, 20 + 30)
    assert (dpo["training_runs"], dpo["train_rows"]) == (4 + 5, 21 + 21)
    assert sft["optimizer_steps"] == (3 + 2 + 2) + (3 + 4 * 2) and dpo["optimizer_steps"] == 6 + 6
    assert dpo["train_sequences"] == 2 * 42 and sft["full_ft"]
    assert _by_item(items, "responses")["responses"] == 7 * 3 + 4 * 5
    assert _by_item(items, "win rate")["judge_requests"] == 2 * 41


def test_a_count_that_needs_an_unknown_size_names_the_field():
    values = merge_overlay(load_yaml(paths.params_file("04_hbat_ablations", "tiny")), {"conflict": {"n_sft": None}})
    P = estimate.validate("04_hbat_ablations", values, "test")
    with pytest.raises(ParamsError, match="conflict.n_sft"):
        estimate.count({"04_hbat_ablations": P})
    with pytest.raises(ParamsError, match="--size nowhere.train=N"):
        counts.Sizes()("nowhere.train")


def test_pricing_and_the_judge_clock_exact_on_one_item():
    judge = {"kind": "openai", "model": "m", "max_tokens": 7, "input_price": 2.0, "output_price": 10.0,
             "rate_limit": 2, "concurrency": 1}
    items = pd.DataFrame([counts.Item("01_x", "a", responses=10, max_new_tokens=20, judge_pairs=5, judge=judge,
                                      train_sequences=6, max_length=30).row()])
    rates = {"sampling": Throughput(100.0, "s"), "training": Throughput(50.0, "t"), "training_full": Throughput(1.0, "f")}
    got = priced(items, rates, Assumptions(prompt_tokens=10)).iloc[0]
    per_request = template_tokens(TEMPLATES["dpo"]) + 10 + 2 * 20
    assert got["generated_tokens"] == 200 and got["trained_tokens"] == 180
    assert got["judge_input_tokens"] == 10 * per_request and got["judge_output_tokens"] == 70
    assert got["judge_dollars"] == pytest.approx((10 * per_request * 2.0 + 70 * 10.0) / 1e6)
    assert got["sampling_gpu_hours"] == pytest.approx(2 / 3600) and got["training_gpu_hours"] == pytest.approx(3.6 / 3600)
    clock = judge_clock(priced(items, rates, Assumptions(prompt_tokens=10, judge_latency_s=5)), Assumptions()).iloc[0]
    assert clock["bound"] == "requests/min" and clock["hours"] == pytest.approx(5 / 60)   # 10 requests at 2 a minute
    slow = judge_clock(priced(items, rates, Assumptions()), Assumptions(judge_latency_s=60)).iloc[0]
    assert slow["bound"] == "concurrency x latency" and slow["hours"] == pytest.approx(10 / 60)


def test_throughputs_from_a_file_defaults_and_errors(tmp_path):
    assert throughputs("tiny")["sampling"].source.startswith("measured: benchmarks/README.md")
    assert throughputs("paper")["training"].source.startswith("assumed")
    own = tmp_path / "t.csv"
    own.write_text("kind,tokens_per_second,source,profile\nsampling,123,bench,paper\ntraining,7,x,tiny\n")
    got = throughputs("paper", own, training_full=9)
    assert got["sampling"].tokens_per_second == 123 and "bench" in got["sampling"].source
    assert got["training"].source.startswith("assumed") and got["training_full"].source == "given on the command line"
    scale = tmp_path / "gpu_scale.csv"
    scale.write_text("part,variant,status,seconds,tokens,tokens_per_s\ndpo,checkpointing on,ok,2,8000,4000\n"
                     "dpo,checkpointing off,oom,,,\nsample,hf engine,ok,4,4000,1000\n")
    got = throughputs("paper", scale)
    assert (got["training"].tokens_per_second, got["sampling"].tokens_per_second) == (4000, 1000)
    # full fine-tuning, never measured, follows the LoRA rate in use: 3/4 of the measured 4000
    assert got["training_full"].tokens_per_second == 3000 and "gpu_scale.py, part 'dpo'" in got["training_full"].source
    assert throughputs("paper")["training_full"].tokens_per_second == 0.75 * throughputs("paper")["training"].tokens_per_second
    assert throughputs("smol", scale)["training"].source.startswith("measured: benchmarks/README.md")
    bad = tmp_path / "bad.csv"
    bad.write_text("kind,tokens_per_second\nsampling,fast\n")
    with pytest.raises(ThroughputError, match="bad.csv line 2: tokens_per_second 'fast'"):
        throughputs("paper", bad)
    with pytest.raises(ThroughputError, match="not found"):
        throughputs("paper", tmp_path / "none.csv")


def test_the_rehearsal_check_names_each_disagreement(tmp_path):
    items = pd.DataFrame([counts.Item("03_expo_alpha_curves", "DPO adapters (data fractions and Figure 6 controls)",
                                      train_kind="dpo", training_runs=3, train_rows=10, optimizer_steps=4).row(),
                          counts.Item("03_expo_alpha_curves", "Table 1", judge_pairs=5, judge={"kind": "openai"}).row()])
    pd.DataFrame({"pairs": [2, 8], "steps": [1, 3]}).to_csv(tmp_path / "03_dpo_runs.csv", index=False)
    summary = pd.DataFrame([{"notebook": "03_expo_alpha_curves", "status": "ok", "judge_requests": 8,
                             "training_launches": 3}])
    table = check.compare(items, summary, tmp_path)
    assert table["ok"].all() and len(table) == 4
    summary["judge_distinct"] = 8
    summary.loc[0, ["judge_requests", "training_launches"]] = [14, 3]   # retries: more sent, none distinct
    assert check.compare(items, summary, tmp_path)["ok"].all()
    summary.loc[0, ["judge_distinct", "training_launches"]] = [11, 2]
    why = check.failures(check.compare(items, summary, tmp_path))["03_expo_alpha_curves"]
    assert why == ("estimate disagrees: training launches: estimated 3, rehearsal 2 (must be equal); judge requests "
                   "(distinct): estimated 10, rehearsal 11 (must be at most the estimate)")
    # Table 2: each pair's nonzero alphas extrapolated for the search, its chosen alpha again for the test
    items = pd.concat([items, pd.DataFrame([counts.Item("03_expo_alpha_curves", "Table 2 alpha search (a)",
                                                        extrapolations=2).row(),
                                            counts.Item("03_expo_alpha_curves", "Table 2 test responses (a)",
                                                        extrapolations=1).row()])], ignore_index=True)
    pd.DataFrame({"model": ["a", "a", "a"], "alpha": [0.0, 0.1, 0.5]}).to_csv(tmp_path / "03_table2_alpha_search.csv",
                                                                             index=False)
    summary.loc[0, ["judge_distinct", "training_launches"]] = [8, 3]
    row = check.compare(items, summary, tmp_path).set_index("quantity").loc["Table 2 extrapolations (folders written)"]
    assert (row["estimated"], row["measured"], row["ok"]) == (3, 3, True)


def test_estimate_command_prints_assumptions_items_and_totals(capsys):
    assert cli.main(["estimate", "--profile", "paper", "--judge-rate-limit", "500"]) == 0
    out = capsys.readouterr().out
    assert "# assumed: prompt_tokens = 256" in out and "# rate_limit = 500" in out
    assert "# throughput sampling = 2,000.0 tokens/s per GPU (assumed" in out  # no GPU measurement yet
    assert "# dataset size ultrafeedback.train_prefs = 61,135" in out
    assert "02 is scaled from the ledger in results/tiny/tables" in out
    lines = out.splitlines()
    totals = lines[lines.index(next(ln for ln in lines if ln.startswith("== totals"))) + 2:]
    assert [ln.split()[:2] for ln in totals[:4]] == [["01", "params"], ["02", "ledger"], ["03", "params"], ["04", "params"]]
    assert totals[4].split()[0] == "total" and len(totals) == 5
    assert cli.main(["estimate", "05"]) == 2
    assert "05_hoeffding_bounds has no cost to estimate" in capsys.readouterr().err
    assert cli.main(["estimate", "02", "--ledger", "/nowhere"]) == 2
    assert "/nowhere/02_ledger.csv not found" in capsys.readouterr().err
    assert cli.main(["estimate", "03", "--size", "bogus.rows=3"]) == 2
    assert "--size bogus.rows: unknown dataset" in capsys.readouterr().err
    assert cli.main(["estimate", "01", "03", "-p", "n_report", "5"]) == 2
    assert "-f and -p apply to one notebook" in capsys.readouterr().err


def test_the_rehearsal_endpoint_counts_a_repeated_request_once_among_distinct():
    import json
    import urllib.request

    from mfnb.rehearsal.endpoint import JudgeEndpoint, stub_answer

    with JudgeEndpoint(stub_answer, key="sk-k") as endpoint:
        for text in ("one", "two", "one"):  # "one" sent again, as a retry after a timeout would
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
            request = urllib.request.Request(f"{endpoint.url}/chat/completions", data=body,
                                             headers={"Content-Type": "application/json", "Authorization": "Bearer sk-k"})
            urllib.request.urlopen(request, timeout=10).read()
        assert endpoint.counts()["requests"] == 3 and endpoint.counts()["distinct"] == 2


def test_benchmarks_record_their_rates_replacing_their_own_rows(tmp_path):
    from mfnb.estimate.throughput import Measured, machine, record

    file = tmp_path / "throughput.csv"
    file.write_text("kind,tokens_per_second,source,profile\ntraining,7,by hand,smol\n")
    ours = Measured("sampling", 140.0, "bench_x.py", "ours, bf16", variant="ours", profile="smol", engine="hf")
    served = Measured("sampling", 300.0, "bench_x.py", "served vLLM", variant="vllm", profile="smol", engine="vllm")
    record([ours, served], file, date="2026-12-07", machine_text="CPU Z, 2 threads")
    got = throughputs("smol", file)
    # the smol profile samples with our decode loop: its row wins over the vLLM one; the hand-written row stays
    assert got["sampling"].tokens_per_second == 140.0
    assert got["sampling"].source == f"measured: {file} (bench_x.py: ours, bf16; 2026-12-07; CPU Z, 2 threads)"
    assert got["training"].tokens_per_second == 7
    record([Measured("sampling", 150.0, "bench_x.py", "ours, bf16", variant="ours", profile="smol", engine="hf")],
           file, date="2026-12-08", machine_text="CPU Y")
    rows = pd.read_csv(file)
    assert len(rows) == 3 and list(rows["tokens_per_second"]) == [7, 300, 150]   # replaced, not appended
    assert throughputs("smol", file)["sampling"].source.endswith("2026-12-08; CPU Y)")
    assert throughputs("paper", file)["sampling"].source.startswith("assumed")    # smol's rows only
    with pytest.raises(ThroughputError, match="kind 'decode'"):
        record([Measured("decode", 1.0, "b", "s")], file)
    assert "logical cores, 3 threads" in machine(threads=3)


def test_gpu_scale_records_its_sampling_and_fastest_dpo_rate(tmp_path, monkeypatch):
    import importlib.util
    import os
    import sys
    from types import SimpleNamespace

    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):  # the module sets them
        monkeypatch.setenv(name, os.environ.get(name, value))
    spec = importlib.util.spec_from_file_location("gpu_scale_under_test", paths.project_root() / "benchmarks" / "gpu_scale.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_scale_under_test", module)
    spec.loader.exec_module(module)
    Row = module.Row
    rows = [Row("build", "random weights"), Row("dpo", "checkpointing off", "oom"),
            Row("dpo", "checkpointing on", tokens_per_s=2500.0), Row("dpo", "checkpointing x", tokens_per_s=2400.0),
            Row("sample", "hf engine", tokens_per_s=900.0)]
    sizes = {"n_prompts": 64, "sample_prompt": 256, "new_tokens": 256, "dpo_batch": 8, "grad_accum": 8, "max_length": 1024}
    bench = SimpleNamespace(args=SimpleNamespace(shape="7b", throughputs=str(tmp_path / "t.csv")), rows=rows,
                            sizes=sizes, dtype=module.torch.bfloat16, cuda=False, device="cpu", out=tmp_path / "out")
    module.record_throughputs(bench)
    for file in (tmp_path / "t.csv", tmp_path / "out" / "throughput.csv"):
        got = throughputs("paper", file)
        assert (got["sampling"].tokens_per_second, got["training"].tokens_per_second) == (900.0, 2500.0)
        assert got["training"].source.startswith(f"measured: {file} (gpu_scale.py: Llama-2-7B shapes")
        assert "checkpointing on" in got["training"].source and "logical cores" in got["training"].source
    bench.args.shape = "tiny"   # the CPU test shape records nothing
    assert module.measured_rates(bench) == []


def test_a_benchmark_records_its_rates_in_one_call(tmp_path, capsys):
    from mfnb.estimate.throughput import record_rates

    file = tmp_path / "throughput.csv"
    got = record_rates("bench_y.py", "SmolLM2 + LoRA, 4 prompts x 8 tokens",
                       {"ours, bf16": (120.0, "hf"), "vLLM, bf16": (240.0, "vllm"), "failed": (0.0, "hf")},
                       profile="smol", threads=2, file=file)
    assert got == file and "2 measured rate(s) recorded" in capsys.readouterr().out
    rate = throughputs("smol", file)["sampling"]
    assert rate.tokens_per_second == 120.0 and "bench_y.py: SmolLM2 + LoRA, 4 prompts x 8 tokens, ours, bf16" in rate.source
    assert record_rates("bench_y.py", "x", {}, file=file) is None
