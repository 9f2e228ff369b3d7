"""The cluster-job entry points: ``python -m mfnb NOTEBOOK -f params.yaml [--processes N --launch-config C]``
(the notebook's training steps under accelerate launch), ``python -m mfnb train`` (one step from a spec) and
``scale_counts`` (notebook 02's ledger scaled to the paper's sizes; the command is tested in tests/estimate)."""
from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest
import yaml

from mfnb import cli
from mfnb.core import paths
from mfnb.multifidelity import TracesParams, estimate


def test_notebook_as_the_command_with_a_launch_from_the_flags(capsys):
    assert cli.main(["02", "--profile", "tiny", "--check", "--processes", "2", "--launch-config", "deepspeed_zero2"]) == 0
    out, err = capsys.readouterr()
    assert "02_multifidelity_traces" in err and "valid" in err
    assert yaml.safe_load(out)["launch"] == {"processes": 2, "config": "deepspeed_zero2"}
    # the paper params carry their own launch; -f is --params
    paper = paths.project_root() / "params" / "paper" / "04_hbat_ablations.yaml"
    assert cli.main(["04_hbat_ablations", "-f", str(paper), "--check"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["launch"] == {"processes": "all", "config": "deepspeed_zero2"}


def test_bad_scale_out_input_gets_one_message_and_nothing_runs(tmp_path, capsys):
    def error(argv):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "nothing was run" in err
        return err

    assert "unknown notebook '07_nothing'" in error(["07_nothing", "-f", "x.yaml"])
    assert "notebook 01_fidelity_winrates trains nothing" in error(["01", "--check", "--processes", "2"])
    assert str(tmp_path / "missing.yaml") in error(["02", "-f", str(tmp_path / "missing.yaml"), "--check"])
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2,}}')   # a trailing comma
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump({"distributed_type": "DEEPSPEED",
                                                       "deepspeed_config": {"deepspeed_config_file": "ds.json"}}))
    err = error(["03", "--check", "--processes", "2", "--launch-config", str(tmp_path / "acc.yaml")])
    assert f"DeepSpeed config {tmp_path / 'ds.json'}" in err and "does not parse" in err and "launch" in err
    err = error(["04", "--check", "-p", "launch", "{config: deepspeed_zero4}"])
    assert "deepspeed_zero4" in err and "not found" in err and "launch" in err


def test_train_runs_a_spec_in_this_process(tmp_path, capsys):
    from mfnb.worlds.tiny import task as tasks
    from mfnb.worlds.tiny.task import build_tokenizer
    from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

    tokenizer = build_tokenizer()
    _new_model(TinyWorldParams(), tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    rng = random.Random(0)
    rows = [{"prompt": e.prompt, "chosen": " " + e.answer(), "rejected": " " + e.answer(habit=True)}
            for e in (tasks.sample_example(rng, min_words=3, max_words=5) for _ in range(8))]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"model": str(tmp_path / "base"), "data": str(tmp_path / "rows.jsonl"), "output": str(tmp_path / "out"),
            "dpo": {"lr": 1e-3, "batch_size": 4, "max_length": 64}, "torch_threads": 1}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert cli.main(["train", "dpo", "--spec", str(tmp_path / "spec.json"), "--quiet"]) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    out = capsys.readouterr().out  # DeepSpeed, when installed, prints a line of its own on import
    assert json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)["world_size"] == 1
    assert cli.main(["train", "dpo", "--spec", str(tmp_path / "nowhere.json")]) == 2
    assert "nowhere.json not found" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "dpo": {"lr": -1}}))
    assert cli.main(["train", "dpo", "--spec", str(tmp_path / "bad.json")]) == 2
    assert "dpo.lr" in capsys.readouterr().err


def _params(**changes) -> TracesParams:
    base = {"profile": "tiny", "world": {"kind": "tiny"}, "batch_sizes": [10], "trace_seeds": [0, 1],
            "fidelities": [{"role": "g1", "cost": 1.0}, {"role": "g2", "cost": 4.0}], "baselines": ["vanilla-m2"],
            "monitor": False, "judge_train_pairs": False, "max_iters_per_fidelity": 4}
    return TracesParams.validate_mapping({**base, **changes}, "test")


def test_scale_counts_keeps_the_target_runs_and_traces():
    row = lambda run, phase, payer, n, trace: {"run": run, "phase": phase, "payer": payer, "n": n, "batch_size": 10,
                                               "trace": trace}
    ledger = pd.DataFrame([row("mf", "train", "student", 10, 1), row("mf", "train", "expert", 10, 1),
                           row("mf", "train", "judge", 10, 1), row("mf", "evaluation", "judge", 4, 1),
                           row("vanilla-m2", "train", "expert", 30, 1), row("sft", "train", "expert", 99, 1),
                           row("analysis", "analysis", "judge", 50, 1), row("test", "test", "judge", 60, 1),
                           row("mf", "train", "expert", 20, 2), row("test", "test", "judge", 60, 2)])
    iterations = pd.DataFrame([{"run": "mf", "batch_size": 10, "D_size": 10}, {"run": "sft", "batch_size": 10, "D_size": 7},
                               {"run": "vanilla-m2", "batch_size": 10, "D_size": 30}])
    measured = _params(baselines=["vanilla-m2", "sft"], monitor=True, judge_train_pairs=True)
    target = _params(trace_seeds=[0, 1, 2], dpo={"epochs": 2.0, "batch_size": 4})
    got = estimate.scale_counts(ledger, iterations, measured, target).iloc[0]
    # per measured trace (two): experts (10 + 30 + 20) / 2, judgements 4 / 2 + the analysis 50 / 2 (run in every
    # trace) + test 120 / 2 * (2 runs / 3 runs); the mf and vanilla iterations (not the sft run's) at 2 epochs
    assert got["expert_responses"] == pytest.approx(3 * 60 / 2) and got["student_responses"] == pytest.approx(3 * 5)
    assert got["judgements"] == pytest.approx(3 * (2 + 25 + 60 * 2 / 3)) and got["dpo_pairs_trained"] == pytest.approx(3 * 40)
    assert got["training_runs"] == pytest.approx(3 * 2 / 2)
    assert got["optimizer_steps"] == pytest.approx(3 * (math.ceil(2 * math.ceil(10 / 4)) + 2 * math.ceil(30 / 4)) / 2)
    with pytest.raises(estimate.EstimateError, match=r"baselines \['fixed_ladder'\] at B=10 were not run"):
        estimate.scale_counts(ledger, iterations, measured, _params(baselines=["fixed_ladder"]))
    with pytest.raises(estimate.EstimateError, match="no trace at B=20"):
        estimate.scale_counts(ledger, iterations, measured, _params(batch_sizes=[20]))
