"""mfnb.training.dpo / mfnb.training.sft dispatch to several processes (accelerate launch over gloo) when a launch is active, so
that the method packages only pass the setting through (or a `launching` block wraps them): the LoRA policy
trained in 2 processes with the same global batch equals the one trained in this process, loaded back in place."""
from __future__ import annotations

import random

import pytest
import torch

from mfnb.training import launch as D
from mfnb.training.config import DPOParams, SFTParams
from mfnb.training.dpo import dpo_update, preference_dataset


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from mfnb.worlds.tiny import task as tasks
    from mfnb.worlds.tiny.task import build_tokenizer
    from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

    root = tmp_path_factory.mktemp("launch")
    tokenizer = build_tokenizer()
    _new_model(TinyWorldParams(), tokenizer).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    rng = random.Random(0)
    examples = [tasks.sample_example(rng, min_words=3, max_words=5) for _ in range(16)]
    data = preference_dataset([e.prompt for e in examples], [e.answer() for e in examples],
                              [e.answer(habit=True) for e in examples])
    return root / "base", data


def _policy(folder):
    from transformers import set_seed

    from mfnb.models import LoraParams, attach_lora, load_model, load_tokenizer

    set_seed(0)
    return attach_lora(load_model(folder, show_progress=False), LoraParams()), load_tokenizer(folder)


def _lora(policy) -> torch.Tensor:
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(policy)
    return torch.cat([state[k].flatten() for k in sorted(state)])


def test_dpo_update_under_a_launch_equals_one_process(base, monkeypatch):
    monkeypatch.setenv("MFNB_CACHE", str(base[0].parent / "cache"))
    folder, data = base
    params = DPOParams(lr=5e-3, batch_size=8, epochs=1, max_length=64)
    here, tokenizer = _policy(folder)
    initial = _lora(here).clone()
    with torch.random.fork_rng():
        dpo_update(here, tokenizer, data, params, seed=0)
    there, tokenizer2 = _policy(folder)
    with D.launching({"processes": 2, "config": "ddp"}):
        metrics = dpo_update(there, tokenizer2, data, params, seed=0)
    assert metrics["world_size"] == 2
    a, b = _lora(here), _lora(there)
    update = (a - initial).norm()
    assert update > 0.1 and ((a - b).norm() / update).item() < 1e-4
    assert there.training is False and "ref" not in there.peft_config


def test_no_launch_or_one_process_stays_in_process_and_custom_trainers_refuse(base):
    assert D.active_launch() is None and D.active_launch({"processes": 1}) is None
    with D.launching({"processes": 2}):
        assert D.active_launch().processes == 2
        policy, tokenizer = _policy(base[0])
        with pytest.raises(D.DistributedError, match="own trainer class .* run it without a launch"):
            dpo_update(policy, tokenizer, base[1], DPOParams(), trainer_kwargs={"ewc": object()})
    assert D.active_launch() is None
    with pytest.raises(Exception, match="launch: parameter 'processes.*greater than or equal to 1"):
        D.as_launch({"processes": 0})


def test_hbat_stage_through_a_spec_keeps_the_ewc_penalty_and_frozen_tensors(base, monkeypatch):
    """What an HbAT stage sends to the training processes (the model, which tensors train, the EWC
    coefficients) rebuilds the same step: run through the spec in this process (the code each process of a
    launch runs), full fine-tuning with one frozen tensor and a strong penalty equals the in-process stage."""
    from mfnb.hbat.algorithm import _train_stage
    from mfnb.hbat.config import HbatParams
    from mfnb.hbat.ewc import EWCPenalty
    from mfnb.models import load_model, load_tokenizer
    from mfnb.training.config import SFTParams

    monkeypatch.setenv("MFNB_CACHE", str(base[0].parent / "cache"))
    folder, data = base
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in data]
    params = HbatParams.model_validate({"sft": {"lr": 5e-2, "batch_size": 8, "epochs": 2.0, "max_length": 64}})

    def stage(through_spec: bool, lam: float):
        model, tokenizer = load_model(folder, show_progress=False), load_tokenizer(folder)
        named = dict(model.named_parameters())
        frozen, weighted = sorted(named)[0], sorted(named)[1:4]
        named[frozen].requires_grad_(False)
        penalty = EWCPenalty([named[n] for n in weighted], [lam] * len(weighted), weighted)
        before = {n: p.detach().clone() for n, p in named.items()}
        if through_spec:
            s = params.sft
            hyper = SFTParams(lr=s.lr, batch_size=s.batch_size, epochs=s.epochs, warmup_ratio=s.warmup_ratio,
                              max_length=s.max_length)
            D.train_in_place(model, tokenizer, rows, "sft", hyper, D.LaunchParams(processes=1), seed=3, penalty=penalty)
        else:
            _train_stage(model, tokenizer, "sft", rows, params, 3, penalty, False)
        after = dict(model.named_parameters())
        moved = {n: (after[n].detach() - before[n]).norm().item() for n in before}
        return moved, frozen, weighted, torch.cat([p.detach().flatten() for p in after.values()])

    here, frozen, weighted, a = stage(False, lam=1e3)
    there, _, _, b = stage(True, lam=1e3)
    free, _, _, _ = stage(False, lam=0.0)
    assert here[frozen] == 0 and there[frozen] == 0
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    # the penalty held its tensors back (against the same stage without it)
    assert all(there[n] < 0.5 * free[n] for n in weighted) and free[weighted[0]] > 0


def test_zero3_refuses_an_ewc_penalty(base, monkeypatch):
    from mfnb.hbat.ewc import EWCPenalty
    from mfnb.models import load_model, load_tokenizer
    from mfnb.training.config import SFTParams

    monkeypatch.setenv("MFNB_CACHE", str(base[0].parent / "cache"))
    model, tokenizer = load_model(base[0], show_progress=False), load_tokenizer(base[0])
    p = next(model.parameters())
    with pytest.raises(D.DistributedError, match="ZeRO-3.*EWC penalty needs whole.*deepspeed_zero2 or ddp"):
        D.train_in_place(model, tokenizer, [{"prompt": "a", "completion": "b"}], "sft", SFTParams(),
                         D.LaunchParams(processes=2, config="deepspeed_zero3"), penalty=EWCPenalty([p], [1.0], ["x"]))


def test_the_method_packages_pass_their_launch_to_the_training_steps(base, tiny_world, monkeypatch, tmp_path):
    """Notebook 02's policy backend, notebook 03's ExPO adapters and notebook 04's HbAT stages hand the params'
    ``launch`` to the step (recorded here instead of starting processes)."""
    from mfnb import expo
    from mfnb import multifidelity as mf
    from mfnb.hbat.algorithm import _train_stage
    from mfnb.hbat.config import HbatParams
    from mfnb.models import LoraParams

    calls = []
    monkeypatch.setattr(D, "train_in_place", lambda model, tok, data, step, hyper, launch, **kw:
                        calls.append((step, hyper, launch, kw.get("penalty"))) or {"world_size": 2})
    launch = D.LaunchParams(processes=2, config="ddp")
    backend = mf.PolicyBackend(tiny_world, "student", launch=launch)
    backend.reset_policy(0, LoraParams())
    backend.update(["p1", "p2"], [" a", " b"], [" c", " d"], 0, DPOParams())
    backend.sft_update(["p1"], ["a"], 0, SFTParams())
    assert [(c[0], c[2]) for c in calls] == [("dpo", launch), ("sft", launch)]

    values = {**yaml_params("03_expo_alpha_curves"), "launch": {"processes": 2}}
    P = expo.ExpoParams.validate_mapping(values)
    expo.train_dpo_adapter(tiny_world, P, 0.05, cache_root=tmp_path, rows=[{"prompt": "p", "chosen": " a",
                                                                             "rejected": " b"}] * 4)
    assert calls[-1][0] == "dpo" and calls[-1][2] == P.launch

    policy, tokenizer = _policy(base[0])
    penalty = object.__new__(__import__("mfnb.hbat.ewc", fromlist=["EWCPenalty"]).EWCPenalty)
    _train_stage(policy, tokenizer, "dpo", [{"prompt": "p", "chosen": " a", "rejected": " b"}], HbatParams(), 0,
                 penalty, False, {"processes": 2})
    assert calls[-1][0] == "dpo" and calls[-1][1] == HbatParams().dpo and calls[-1][3] is penalty


def yaml_params(notebook):
    import yaml

    from mfnb.core import paths

    return yaml.safe_load((paths.project_root() / "params" / "tiny" / f"{notebook}.yaml").read_text())


def test_a_failed_launch_names_the_workers_abort_and_keeps_its_log_after_its_folder_is_gone(tmp_path, monkeypatch):
    """A worker killed by an abort (a C++ exception in a collective) prints no Python error; its lines are named, and
    the log outlives the launch's folder, which a caller's temporary folder may take with it."""
    import shutil
    import sys

    monkeypatch.setenv("MFNB_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "out.launch-x"
    workdir.mkdir()
    script = ("import sys; print('step 1'); print(\"terminate called after throwing an instance of "
              "'gloo::IoException'\"); print('  what():  Connection reset by peer'); sys.exit(134)")
    with pytest.raises(D.DistributedError) as failed:
        D._run_logged([sys.executable, "-c", script], {}, workdir / "launch.log", stream=False)
    message = str(failed.value)
    assert "exit code 134" in message and "gloo::IoException" in message and "Connection reset by peer" in message
    kept = message.split("full log: ")[1].split("\n")[0]
    assert kept.startswith(str(tmp_path / "cache" / "launch" / "failed"))
    shutil.rmtree(workdir)
    with open(kept) as f:
        assert "terminate called" in f.read()


@pytest.mark.parametrize("first_failure, retried", [
    ("print('  exitcode  : -6 (pid: 1)'); print('  traceback : Signal 6 (SIGABRT) received by PID 1')", True),
    ("print('[rank1]: ValueError: the data has no rows'); print('  exitcode  : 1 (pid: 1)')", False),
    ("print('[rank1]: ValueError: bad'); print('  exitcode  : -6 (pid: 1)')", False),
])
def test_a_launch_killed_by_a_signal_alone_runs_once_more_and_a_python_error_does_not(tmp_path, monkeypatch,
                                                                                     first_failure, retried):
    import sys

    monkeypatch.setenv("MFNB_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "ran-once"
    script = (f"import pathlib, sys; m = pathlib.Path({str(marker)!r})\n"
              f"if not m.exists():\n    m.touch(); {first_failure}; sys.exit(1)\nprint('trained')")
    log = tmp_path / "launch.log"
    if retried:
        D._run_retrying_a_signal([sys.executable, "-c", script], {}, log, stream=False)
        assert "trained" in log.read_text() and "SIGABRT" in (tmp_path / "launch.attempt1.log").read_text()
    else:
        with pytest.raises(D.DistributedError, match="ValueError"):
            D._run_retrying_a_signal([sys.executable, "-c", script], {}, log, stream=False)
        assert not (tmp_path / "launch.attempt1.log").exists()
