"""Training steps in one process and in two (accelerate launch over gloo: DDP, DeepSpeed ZeRO-2 and ZeRO-3).

With the same global batch (per-process batch halved) two processes see the same examples per step and
average the same gradients, so the LoRA adapters agree up to floating-point summation order. Measured on
this CPU: DDP and ZeRO-2 2.7e-6, ZeRO-3 8.5e-6, SFT under DDP 3.2e-6 of the norm of the update (trained
minus initial adapter), while a one-process run with half the batch lands 1.3 update norms away.
"""
from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from mfnb.core.params import ParamsError
from mfnb.training import launch as D
from mfnb.training.config import DistributedError, LaunchParams, TrainSpec, read_deepspeed_json

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (pip install mfnb[scaleout])")
REL_TOL = 1e-4  # of the update's norm; about 10x the largest difference measured (ZeRO-3)
GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama with the tiny world's tokenizer, saved to a folder, and 32 preference rows."""
    from mfnb.worlds.tiny import task as tasks
    from mfnb.worlds.tiny.task import build_tokenizer
    from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

    root = tmp_path_factory.mktemp("distributed")
    tokenizer = build_tokenizer()
    model = _new_model(TinyWorldParams(), tokenizer)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    rng = random.Random(0)
    rows = []
    for _ in range(32):
        example = tasks.sample_example(rng, min_words=3, max_words=5)
        rows.append({"prompt": example.prompt, "chosen": " " + example.answer(),
                     "rejected": " " + example.answer(habit=True)})
    return root, rows


def _spec(root, name: str, step: str = "dpo", **extra) -> dict:
    hyper = {"lr": 5e-3, "batch_size": 8, "epochs": 1, "max_length": 64}
    return {"step": step, "model": str(root / "base"), "output": str(root / name), step: hyper,
            "global_batch_size": GLOBAL_BATCH, "seed": 0, "torch_threads": 1, **extra}


def _train(setup, name: str, launch: dict, step: str = "dpo", **extra) -> tuple[dict, dict]:
    root, rows = setup
    data = rows if step == "dpo" else [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    result = D.train(_spec(root, name, step, **extra), launch, data=data, stream=False)
    return result, load_file(root / name / "adapter_model.safetensors")


def _initial_adapter(root) -> dict:
    from transformers import set_seed

    from mfnb.models import LoraParams, attach_lora, load_model

    set_seed(0)
    peft = attach_lora(load_model(root / "base", show_progress=False), LoraParams())
    return {k.replace(".default", ""): v for k, v in peft.state_dict().items() if "lora_" in k}


def _relative_difference(a: dict, b: dict, initial: dict) -> float:
    assert set(a) == set(b) and set(a) <= set(initial)
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    update = torch.cat([(a[k] - initial[k]).flatten() for k in a]).norm()
    assert update > 0.1  # the adapter did move: agreement is not the trivial one of two untrained adapters
    return (diff / update).item()


@pytest.fixture(scope="module")
def one_process(setup):
    return {step: _train(setup, f"one-{step}", {}, step) for step in ("dpo", "sft")}


# -------------------------------------------------------------------------------- configs and commands


def test_shipped_configs_parse_and_name_their_deepspeed_json():
    assert D.read_config("ddp")["distributed_type"] == "MULTI_GPU"
    for stage in (2, 3):
        config = D.read_config(f"deepspeed_zero{stage}")
        ds_file = config["deepspeed_config"]["deepspeed_config_file"]
        assert read_deepspeed_json(__import__("pathlib").Path(ds_file))["zero_optimization"]["stage"] == stage


def test_deepspeed_json_that_does_not_parse_names_the_file(tmp_path):
    bad = tmp_path / "zero2.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    config = tmp_path / "ds.yaml"
    config.write_text(f"distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: {bad}\n")
    with pytest.raises(DistributedError, match=rf"DeepSpeed config {bad} \(named in {config}\) does not parse: "
                                               r"Expecting property name"):
        D.read_config(str(config))
    # refused when the launch is read, before any work is started
    with pytest.raises(ParamsError, match=r"launch: parameter 'config': Value error, DeepSpeed config .*zero2.json"):
        D.train(TrainSpec(step="dpo", model="m", data="d", output=str(tmp_path / "out")), {"config": str(config)})


def test_accelerate_config_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("distributed_type: [DEEPSPEED\n")
    with pytest.raises(DistributedError, match=rf"{broken} is not valid YAML"):
        D.read_config(str(broken))
    plain = tmp_path / "plain.yaml"
    plain.write_text("num_processes: 2\n")
    with pytest.raises(DistributedError, match=rf"{plain} is not an accelerate config"):
        D.read_config(str(plain))
    with pytest.raises(DistributedError, match=r"nowhere.yaml not found \(shipped: \['ddp'"):
        D.read_config(str(tmp_path / "nowhere.yaml"))


def test_launch_commands_on_cpu():
    cmd, env = D.launch_command("s.json", "dpo", LaunchParams(processes=2), processes=2, cpu=True, port=1234)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--cpu" not in cmd  # --cpu starts ONE process
    assert "--multi_gpu" in cmd and cmd[cmd.index("--mixed_precision") + 1] == "no"
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "1234"
    assert cmd[-5:] == ["-m", "mfnb.training.launch", "dpo", "--spec", "s.json"] and env == {"ACCELERATE_USE_CPU": "true"}
    cmd, env = D.launch_command("s.json", "sft", LaunchParams(config="deepspeed_zero3"), processes=2, cpu=True, port=1)
    ds_file = cmd[cmd.index("--deepspeed_config_file") + 1]
    assert ds_file.endswith("configs/deepspeed/zero3.json") and "--multi_gpu" not in cmd and env == {}


def test_data_is_required_and_read_from_files(tmp_path):
    with pytest.raises(DistributedError, match="spec.data: no training data"):
        D.train(TrainSpec(step="dpo", model="m", output=str(tmp_path / "out")))
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert D.load_rows(str(tmp_path / "rows.jsonl")).to_list() == rows
    with pytest.raises(DistributedError, match="rows.txt is neither a datasets folder nor"):
        D.load_rows(str(tmp_path / "rows.txt"))


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    spec = TrainSpec(step="dpo", model="m", data="d", output="o", global_batch_size=8)
    with pytest.raises(DistributedError, match="global_batch_size: 8 is not a multiple of 3 processes x 1"):
        D._per_device(spec, 1, 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert D._per_device(spec, 2, 99) == 2


def test_worker_cli_checks_its_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        D.main(["dpo", "--spec", str(tmp_path / "missing.json")])
    assert "missing.json not found" in capsys.readouterr().err
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"step": "sft", "model": "m", "data": "d", "output": "o"}))
    with pytest.raises(SystemExit):
        D.main(["dpo", "--spec", str(spec)])
    assert "does not match the spec's step 'sft'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- real training runs


@pytest.mark.slow
def test_one_process_writes_adapter_and_result(setup, one_process):
    root, _ = setup
    result, adapter = one_process["dpo"]
    assert result["world_size"] == 1 and result["metrics"]["train_loss"] < 0.7
    assert json.loads((root / "one-dpo" / D.RESULT_FILE).read_text())["spec"]["output"] == str(root / "one-dpo")
    assert all(k.startswith("base_model.") for k in adapter)


@pytest.mark.slow
def test_half_the_batch_is_far_away(setup, one_process):
    """The negative control: a different batch composition moves the adapter by about its whole update."""
    _, half = _train(setup, "one-dpo-half", {}, global_batch_size=GLOBAL_BATCH // 2)
    assert _relative_difference(one_process["dpo"][1], half, _initial_adapter(setup[0])) > 0.3


@pytest.mark.slow
@pytest.mark.parametrize("config, step", [("ddp", "dpo"), ("ddp", "sft"),
                                          pytest.param("deepspeed_zero2", "dpo", marks=needs_deepspeed),
                                          pytest.param("deepspeed_zero3", "dpo", marks=needs_deepspeed)])
def test_two_processes_match_one(setup, one_process, config, step):
    result, adapter = _train(setup, f"two-{config}-{step}", {"processes": 2, "config": config}, step)
    assert result["world_size"] == 2
    assert _relative_difference(one_process[step][1], adapter, _initial_adapter(setup[0])) < REL_TOL
    assert (setup[0] / f"two-{config}-{step}" / "launch.log").is_file()


@pytest.mark.slow
def test_failed_workers_raise_with_the_log(setup):
    root, rows = setup
    spec = {**_spec(root, "never"), "model": str(root / "no-such-model")}
    with pytest.raises(DistributedError) as err:
        D.train(spec, {"processes": 2}, data=rows, stream=False)
    message = str(err.value)
    assert "training processes failed" in message and "launch.log" in message
    assert "no-such-model" in message  # the workers' own error, from the log's last lines
    assert not (root / "never").exists()


def _tiny_lora(r: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mfnb.models import LoraParams, attach_lora

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    return attach_lora(LlamaForCausalLM(config), LoraParams(r=r, alpha=2 * r))


def test_adapter_read_back_refuses_missing_unexpected_or_reshaped_tensors(tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    model = _tiny_lora()
    state = {k: torch.full_like(v, 0.5) for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    D.read_back_adapter(model, tmp_path)
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in get_peft_model_state_dict(model).values())
    first = sorted(state)[0]
    for bad, message in (({k: v for k, v in state.items() if k != first}, r"missing 1 \['" + first.replace(".", r"\.")),
                         ({**state, "extra.lora_A.weight": torch.zeros(2, 2)}, r"unexpected 1 \['extra"),
                         ({**state, first: torch.zeros(3, 3)}, r"other shapes than the policy's")):
        save_file(bad, str(tmp_path / "adapter_model.safetensors"))
        with pytest.raises(DistributedError, match=message):
            D.read_back_adapter(model, tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(DistributedError, match="wrote no adapter"):
        D.read_back_adapter(model, tmp_path)


def test_full_fine_tuning_loads_fp32_master_weights_unless_deepspeed_bf16(monkeypatch):
    full = TrainSpec(step="sft", model="m", output="o", lora=None, dtype="bfloat16")
    assert D._training_dtype(full) == "float32"  # no DeepSpeed: fp32 weights, bf16 autocast on a GPU
    assert D._training_dtype(full.model_copy(update={"lora": {"r": 2}})) == "bfloat16"  # LoRA: base frozen as given
    assert D._training_dtype(full.model_copy(update={"dtype": "float32"})) == "float32"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert D._training_dtype(full) == "bfloat16"  # DeepSpeed's bf16 optimizer keeps the fp32 master copy
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D._training_dtype(full) == "float32"   # DeepSpeed on CPU: no bf16 mixed precision


def test_off_accelerator_leaves_a_cpu_model_where_it_is():
    model = _tiny_lora()
    param = next(model.parameters())
    with D.off_accelerator(model):
        assert next(model.parameters()) is param and param.device.type == "cpu"

