"""Training curves: ``report_to`` / ``logging_dir`` of every training step reach transformers' own integrations
(TensorBoard's event files here, offline), land outside the step's temporary output folder, and never enter a
dump, so no cache key changes whatever their values."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mfnb.core.params import ParamsError
from mfnb.training.config import DPOParams, SFTParams, TrainSpec, dump_with_logs

pytest.importorskip("tensorboard")

LOGGED = {"report_to": "tensorboard", "logging_dir": "/somewhere/else"}


def _scalars(run: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(run.glob("events.out.tfevents.*")), f"no TensorBoard events file in {run}"
    events = EventAccumulator(str(run))
    events.Reload()
    return set(events.Tags()["scalars"])


def _only_run(root: Path, step: str) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1 and runs[0].name.startswith(f"{step}-"), runs
    return runs[0]


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from mfnb.worlds.tiny.task import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id))
    return model, tokenizer


def _sft(**logs) -> dict:
    from mfnb.training import sft

    model, tokenizer = _tiny_llama()
    rows = [{"prompt": "sort these words: fox cat", "completion": " cat fox"}] * 4
    return sft.train(model, tokenizer, rows, lr=1e-3, batch_size=2, seed=0, steps=2, max_length=32, logging_steps=1,
                     **logs)


def _dpo(params: DPOParams) -> dict:
    from mfnb.models import LoraParams, attach_lora
    from mfnb.training.dpo import dpo_update, preference_dataset

    model, tokenizer = _tiny_llama()
    policy = attach_lora(model, LoraParams())
    prompt = "sort these words: fox cat owl . answer:"
    data = preference_dataset([prompt] * 4, ["cat fox owl"] * 4, ["fox cat owl"] * 4)  # batch 2: 2 steps
    return dpo_update(policy, tokenizer, data, params, seed=0, config_overrides={"logging_steps": 1})


# --------------------------------------------------------------------------------------- params and keys


@pytest.mark.parametrize("schema", [SFTParams, DPOParams])
def test_logging_fields_stay_out_of_every_dump(schema):
    plain, logged = schema(), schema.validate_mapping(LOGGED)
    assert logged.report_to == ["tensorboard"] and logged.logging_dir == "/somewhere/else"
    assert plain.model_dump() == logged.model_dump() and "report_to" not in logged.model_dump()
    assert plain.model_dump_json() == logged.model_dump_json()
    step = "sft" if schema is SFTParams else "dpo"
    spec = TrainSpec(step=step, model="m", output="o", **{step: logged})
    assert spec.model_dump()[step] == plain.model_dump()
    assert spec.logs() == {"report_to": ["tensorboard"], "logging_dir": "/somewhere/else", "run_name": None}


def test_hbat_stage_keys_ignore_the_logging_fields_and_its_methods_keep_them():
    from mfnb.hbat.config import HbatParams, for_method
    from mfnb.hbat.store import stage_key

    plain = HbatParams()
    values = plain.model_dump()
    logged = HbatParams.validate_mapping({**values, "sft": {**values["sft"], **LOGGED}, "dpo": {**values["dpo"], **LOGGED}})
    assert plain.model_dump() == logged.model_dump()
    for kind in ("sft", "dpo"):
        assert stage_key("", kind, 0, [{"a": 1}], plain, 0, "ewc") == stage_key("", kind, 0, [{"a": 1}], logged, 0, "ewc")
    sft_only = for_method(logged, "SFT")  # rebuilt from a dump: the logging fields are put back
    assert sft_only.sft.report_to == ["tensorboard"] and sft_only.dpo.logging_dir == "/somewhere/else"
    assert dump_with_logs(logged)["sft"]["report_to"] == ["tensorboard"]


def test_unknown_or_mixed_integrations_are_refused_naming_the_field():
    with pytest.raises(ParamsError, match=r"dpo.yaml: parameter 'report_to.0': Input should be 'none', "
                                          r"'tensorboard', 'trackio' or 'wandb' \(got 'tensorbord'\)"):
        DPOParams.validate_mapping({"report_to": "tensorbord"}, source="dpo.yaml")
    with pytest.raises(ParamsError, match="parameter 'sft.report_to': .*'none' cannot be combined"):
        TrainSpec.validate_mapping({"step": "sft", "model": "m", "output": "o",
                                    "sft": {"report_to": ["none", "tensorboard"]}}, source="spec")
    with pytest.raises(ParamsError, match="parameter 'report_to': Input should be a valid list"):
        SFTParams.validate_mapping({"report_to": 1})
    assert SFTParams.validate_mapping({"report_to": []}).report_to == ["none"]


def test_runs_get_folders_of_their_own(tmp_path, monkeypatch):
    from mfnb.training.runtime import new_run_name

    monkeypatch.setenv("MFNB_CACHE", str(tmp_path))
    first, second = new_run_name("dpo"), new_run_name("dpo")
    assert first != second and first.startswith("dpo-") and second.startswith(first)
    assert (tmp_path / "logs" / "dpo" / first).is_dir() and (tmp_path / "logs" / "dpo" / second).is_dir()


# ------------------------------------------------------------------------------------- training runs


def test_sft_writes_tensorboard_curves_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path))
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    _sft(report_to=["tensorboard"])
    run = _only_run(tmp_path / "logs" / "sft", "sft")
    assert "train/loss" in _scalars(run)
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # set only while the step runs


def test_dpo_writes_tensorboard_curves_where_logging_dir_says(tmp_path, monkeypatch):
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path / "cache"))
    _dpo(DPOParams(lr=1e-3, batch_size=2, epochs=1.0, max_length=32, report_to=["tensorboard"],
                   logging_dir=str(tmp_path / "curves")))
    run = _only_run(tmp_path / "curves", "dpo")
    assert {"train/loss", "train/rewards/margins"} <= _scalars(run)
    assert not (tmp_path / "cache" / "logs").exists()


def test_none_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # transformers' own default would be ./runs or <output_dir>/runs
    _sft()
    _dpo(DPOParams(lr=1e-3, batch_size=2, epochs=1.0, max_length=32))
    assert not list(tmp_path.rglob("events.out.tfevents.*")) and not (tmp_path / "logs").exists()


def test_a_spec_run_in_this_process_logs_its_step_params_curves(tmp_path, monkeypatch):
    """``launch.train`` with one process runs the spec here (what each launched process runs)."""
    from mfnb.training import launch as D

    monkeypatch.setenv("MFNB_CACHE", str(tmp_path / "cache"))
    model, tokenizer = _tiny_llama()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    rows = [{"prompt": "sort these words: fox cat", "completion": " cat fox"}] * 4
    spec = {"step": "sft", "model": str(tmp_path / "base"), "output": str(tmp_path / "out"), "torch_threads": 1,
            "sft": {"lr": 1e-3, "batch_size": 2, "steps": 2, "max_length": 32, "report_to": "tensorboard"}}
    D.train(spec, {}, data=rows, stream=False)
    run = _only_run(tmp_path / "cache" / "logs" / "sft", "sft")
    assert "train/train_loss" in _scalars(run)  # the step's summary (SFT logs every 50 steps)


def test_a_launch_names_one_run_for_all_processes(tmp_path):
    from mfnb.training.launch import _carry_logs

    spec = TrainSpec(step="dpo", model="m", output="o", dpo=DPOParams(report_to="tensorboard",
                                                                      logging_dir=str(tmp_path)))
    carried = _carry_logs(spec).model_dump()
    assert carried["report_to"] == ["tensorboard"] and carried["logging_dir"] == str(tmp_path)
    assert carried["run_name"].startswith("dpo-") and (tmp_path / carried["run_name"]).is_dir()
    assert TrainSpec.validate_mapping(carried).logs() == {k: carried[k] for k in ("report_to", "logging_dir", "run_name")}
    assert "run_name" not in _carry_logs(TrainSpec(step="dpo", model="m", output="o")).model_dump()


@pytest.mark.slow
def test_two_launched_processes_log_to_one_run(tmp_path, monkeypatch):
    from mfnb.models import LoraParams
    from mfnb.training import launch as D

    monkeypatch.setenv("MFNB_CACHE", str(tmp_path / "cache"))
    model, tokenizer = _tiny_llama()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    prompt = "sort these words: fox cat owl . answer:"
    rows = [{"prompt": prompt, "chosen": " cat fox owl", "rejected": " fox cat owl"}] * 8
    spec = TrainSpec(step="dpo", model=str(tmp_path / "base"), output=str(tmp_path / "out"), lora=LoraParams(),
                     global_batch_size=4, torch_threads=1,
                     dpo=DPOParams(lr=1e-3, batch_size=4, max_length=32, report_to="tensorboard",
                                   logging_dir=str(tmp_path / "curves")))
    result = D.train(spec, {"processes": 2}, data=rows, stream=False)
    assert result["world_size"] == 2
    run = _only_run(tmp_path / "curves", "dpo")
    assert "train/train_loss" in _scalars(run)
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # the main process writes, the other does not
