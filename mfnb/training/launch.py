"""Training steps (SFT, DPO) in this process or on several, through ``accelerate launch`` with DDP or DeepSpeed.

A notebook calls :func:`train` with a :class:`TrainSpec` (model folder, data, hyper-parameters, output
folder) and a :class:`LaunchParams`. One process with DDP runs the step right here; anything else writes
the spec and the data to disk and starts ``accelerate launch ... -m mfnb.training.launch <step> --spec
spec.json``, whose processes each run :func:`run_spec`. Either way the trained LoRA adapter (or the full
model) lands atomically in ``spec.output`` with ``mfnb_train.json`` (metrics, world size, seconds), which
:func:`train` reads back. The training itself is :mod:`mfnb.training.sft` and :mod:`mfnb.training.dpo` (TRL's trainers),
which run under DDP and DeepSpeed as they are; the Trainer's own ``save_model`` gathers ZeRO-3 shards.

Accelerate configs ship in ``configs/accelerate/`` (``ddp``, ``deepspeed_zero2``, ``deepspeed_zero3``,
the last two pointing at ``configs/deepspeed/*.json``). On a machine without GPUs the processes talk over
gloo: ``accelerate launch --cpu`` would start only one process, so the launch keeps ``--multi_gpu`` (or the
DeepSpeed launcher) and sets ``ACCELERATE_USE_CPU=true`` (DDP) or lets DeepSpeed pick its CPU accelerator.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator, Sequence

from mfnb.core import paths
from mfnb.core.atomic import write_json
from mfnb.core.imports import resolve
from mfnb.models import attach_lora, load_adapter, load_model, load_tokenizer, off_accelerator, torch_threads
from mfnb.training import dpo_trainer, sft_trainer
from mfnb.training.config import DistributedError, LaunchParams, TrainSpec, config_path, gpu_count, read_config
from mfnb.training.runtime import (free_accelerator, log_root, mixed_precision, new_run_name, quiet_datasets,
                                   reporting_off)

RESULT_FILE = "mfnb_train.json"
LAUNCH_RECORD = "launches.jsonl"  # one line per launched step, under <cache>/launch/: what ran where, how long


# --------------------------------------------------------------------------------------------- configs


# ---------------------------------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(spec_file: str | Path, step: str, launch: LaunchParams, *, processes: int, cpu: bool,
                   port: int) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and the environment additions for one step."""
    config = read_config(launch.config)
    deepspeed = config["distributed_type"] == "DEEPSPEED"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(launch.config)),
           "--num_processes", str(processes), "--num_machines", "1", "--main_process_port", str(port),
           "--dynamo_backend", "no"]
    env: dict[str, str] = {}
    if deepspeed:
        ds_file = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
        if ds_file:
            cmd += ["--deepspeed_config_file", ds_file]
    else:
        if processes > 1:
            cmd.append("--multi_gpu")
        if cpu:
            cmd += ["--mixed_precision", "no"]
            env["ACCELERATE_USE_CPU"] = "true"
    cmd += ["-m", "mfnb.training.launch", step, "--spec", str(spec_file)]
    return cmd, env


def _save_data(data: Any, folder: Path) -> str:
    """Rows (list of dicts), a ``datasets.Dataset`` or a path: what the worker processes read."""
    from datasets import Dataset


    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).expanduser().resolve())
    dataset = data if isinstance(data, Dataset) else Dataset.from_list(list(data))
    with quiet_datasets():
        dataset.save_to_disk(str(folder))
    return str(folder)


def train(spec: TrainSpec | dict, launch: LaunchParams | dict | None = None, *, data: Any = None,
          stream: bool = True) -> dict:
    """Run one training step and return what it wrote to ``mfnb_train.json`` (metrics, world size, seconds).

    ``data``: rows, a ``datasets.Dataset`` or a path, replacing ``spec.data`` (saved to disk for the worker
    processes). One DDP process runs here; otherwise ``accelerate launch`` runs ``processes`` workers and
    their output is streamed (``stream``) and kept in ``<output>/launch.log``.
    """
    spec = spec if isinstance(spec, TrainSpec) else TrainSpec.validate_mapping(spec, source="spec")
    launch = launch if isinstance(launch, LaunchParams) else LaunchParams.validate_mapping(launch or {}, "launch")
    output = Path(spec.output).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    gpus = gpu_count()
    cpu = launch.cpu if launch.cpu is not None else gpus == 0
    processes = launch.processes if launch.processes != "all" else max(gpus, 1)
    config = read_config(launch.config)  # a config that does not parse fails here, before any work
    if data is None and not spec.data:
        raise DistributedError("spec.data: no training data (name a datasets folder or file, or pass data=rows)")
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.launch-", dir=output.parent))
    log = workdir / "launch.log"
    launched = False
    try:
        if data is not None:
            spec = spec.model_copy(update={"data": _save_data(data, workdir / "data")})
        spec = spec.model_copy(update={"output": str(output)})
        if processes == 1 and config["distributed_type"] != "DEEPSPEED":
            return run_spec(spec)
        spec = _carry_logs(spec)
        spec_file = workdir / "spec.json"
        write_json(spec_file, spec.model_dump())
        cmd, env = launch_command(spec_file, spec.step, launch, processes=processes, cpu=cpu,
                                  port=launch.main_process_port or _free_port())
        if spec.torch_threads:
            env["OMP_NUM_THREADS"] = str(spec.torch_threads)
        launched = True
        began = time.perf_counter()
        try:
            _run_retrying_a_signal(cmd, {**os.environ, **env}, log, stream)
        finally:
            _record_launch(spec, launch, processes, time.perf_counter() - began, ok=(output / RESULT_FILE).is_file())
        shutil.copy(log, output / "launch.log")
        launched = False
        return json.loads((output / RESULT_FILE).read_text())
    finally:
        # a failed launch keeps its folder (spec, data, log) for the error message to point at
        if not (launch.keep_workdir or launched):
            shutil.rmtree(workdir, ignore_errors=True)


def _carry_logs(spec: TrainSpec) -> TrainSpec:
    """The step's logging settings in the spec's own fields (the step params' dump, which the processes read, leaves
    them out), the run named here so that every process logs to the same folder."""
    logs = spec.logs()
    if reporting_off(logs["report_to"]):
        return spec.model_copy(update={"report_to": ["none"]})
    root = str(log_root(spec.step, logs["logging_dir"]))
    return spec.model_copy(update={"report_to": logs["report_to"], "logging_dir": root,
                                   "run_name": logs["run_name"] or new_run_name(spec.step, root)})


def _record_launch(spec: TrainSpec, launch: LaunchParams, processes: int, seconds: float, ok: bool) -> None:
    """Append the launch to ``<cache>/launch/launches.jsonl`` (a rehearsal's summary counts them)."""
    line = {"step": spec.step, "processes": processes, "config": launch.config, "seconds": round(seconds, 2),
            "ok": ok, "time": time.time()}
    with open(paths.cache_dir("launch") / LAUNCH_RECORD, "a") as f:
        f.write(json.dumps(line) + "\n")


_PYTHON_ERROR = re.compile(r"^(\[rank\d+\]: )?[\w.]*(Error|Exception)\b")
_WORKER_ERROR = re.compile(r"^(\[rank\d+\]: )?([\w.]*(Error|Exception)\b|terminate called|\s*what\(\):|"
                           r"Fatal Python error|Segmentation fault|Aborted).*")


_SIGNAL_DEATH = re.compile(r"exitcode\s*:\s*-(\d+)")


def _run_retrying_a_signal(cmd: list[str], env: dict[str, str], log: Path, stream: bool) -> None:
    """:func:`_run_logged`, once more when the launch failed only because a worker was killed by a signal (an abort in
    a collective's connection setup, seen now and then with two CPU processes on one machine) and no worker raised a
    Python error: a step that fails for a reason of its own fails the same way twice, so is not retried."""
    try:
        _run_logged(cmd, env, log, stream)
    except DistributedError as err:
        text = log.read_text(errors="replace") if log.is_file() else ""
        signals = sorted(set(_SIGNAL_DEATH.findall(text)))
        if not signals or getattr(err, "worker_errors_in_python", True):
            raise
        first = log.with_name(log.stem + ".attempt1.log")
        log.replace(first)
        print(f"launch: a worker died by signal {', '.join(signals)} without a Python error; running the step once "
              f"more (the first attempt's log: {first})", file=sys.stderr, flush=True)
        _run_logged(cmd, env, log, stream)


def _run_logged(cmd: list[str], env: dict[str, str], log: Path, stream: bool) -> None:
    tail: deque[str] = deque(maxlen=25)
    errors: list[str] = []  # the workers' own exception lines (torchrun's summary comes after them)
    with open(log, "w") as out, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True, bufsize=1) as proc:
        out.write("$ " + " ".join(cmd) + "\n")
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            tail.append(line)
            if _WORKER_ERROR.match(line) and line not in errors and "ChildFailedError" not in line:
                errors.append(line)
            if stream:
                print(line, end="", flush=True)
        code = proc.wait()
    if code != 0:
        # the launch's folder may sit in a caller's temporary folder, gone once the error unwinds: keep the log
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = paths.cache_dir("launch") / "failed" / f"{stamp}-{log.parent.name.lstrip('.')}" / log.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, kept)
        failed = DistributedError(f"training processes failed (exit code {code}); full log: {kept}\n"
                                  f"workers' errors:\n{''.join(errors[-4:]) or '(none found)'}\n"
                                  f"command: {' '.join(cmd)}\nlast lines:\n{''.join(tail)}")
        failed.worker_errors_in_python = any(_PYTHON_ERROR.match(e) for e in errors)
        raise failed


# -------------------------------------------------------------------- dispatch from mfnb.training.dpo / mfnb.training.sft

_ACTIVE: ContextVar[LaunchParams | None] = ContextVar("mfnb_launch", default=None)


def as_launch(launch: LaunchParams | dict | None, source: str = "launch") -> LaunchParams | None:
    if launch is None or isinstance(launch, LaunchParams):
        return launch
    return LaunchParams.validate_mapping(dict(launch), source=source)


@contextmanager
def launching(launch: LaunchParams | dict | None) -> Iterator[LaunchParams | None]:
    """Within the block, every :func:`mfnb.training.dpo.dpo_update` and :func:`mfnb.training.sft.train` without an explicit
    ``launch`` runs under ``launch`` (e.g. ``{processes: all, config: deepspeed_zero3}``); None: in-process.
    A notebook or ``python -m mfnb steps`` wraps the method calls in it, so the method packages need no change."""
    token = _ACTIVE.set(as_launch(launch))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def active_launch(explicit: LaunchParams | dict | None = None) -> LaunchParams | None:
    """The launch a training step should use (the explicit one, else the active :func:`launching` block), or None
    when that is one process without DeepSpeed (the step then runs in the caller's process, on its model)."""
    launch = as_launch(explicit) if explicit is not None else _ACTIVE.get()
    if launch is None:
        return None
    processes = launch.processes if launch.processes != "all" else max(gpu_count(), 1)
    if processes == 1 and read_config(launch.config)["distributed_type"] != "DEEPSPEED":
        return None
    return launch


def _base_source(model) -> str:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if not name or not (Path(name).is_dir() or not Path(name).is_absolute()):
        raise DistributedError(f"launch: the policy's base model has no folder or hub name to load in the training "
                               f"processes (config._name_or_path = {name!r}); load it with mfnb.models.load_model")
    return name


def train_in_place(model, tokenizer, data, step: str, hyper, launch: LaunchParams, *, seed: int = 0,
                   show_progress: bool = False, penalty=None) -> dict:
    """One SFT or DPO step of ``model`` through :func:`train` under ``launch``, loaded back into ``model``.

    A LoRA-wrapped model sends its adapter (its base is loaded from its folder or hub name in each process); a
    plain model is saved whole (full fine-tuning). ``hyper`` (:class:`SFTParams` / :class:`DPOParams`) describes
    the step as one process would run it: its ``batch_size x grad_accum`` is kept as the global batch, split over
    the processes, so the result does not depend on how many there are (up to summation order).

    HbAT's stages send what makes them differ from plain TRL steps: which parameters train (HbAT-Freeze
    freezes some) and ``penalty``, the EWC penalty (:class:`mfnb.hbat.ewc.EWCPenalty`) anchored at the
    parameters as they are now; the processes rebuild it on the parameters they load. ZeRO-3 shards the
    parameters, which the penalty needs whole: use ``deepspeed_zero2`` or ``ddp`` for HbAT."""
    import torch
    from safetensors.torch import load_file


    free_accelerator()  # a sampling engine still holding a GPU (vLLM, a bf16 copy) would starve the training processes
    is_peft = hasattr(model, "peft_config")
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    root = paths.cache_dir("launch")
    with tempfile.TemporaryDirectory(prefix=f"{step}-", dir=root) as tmp:
        tmp = Path(tmp)
        if is_peft:
            model.save_pretrained(tmp / "adapter", selected_adapters=["default"])
            source, adapter = _base_source(model.get_base_model()), str(tmp / "adapter")
        else:
            model.save_pretrained(tmp / "model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            source, adapter = str(tmp / "model"), None
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        if penalty is not None and len(penalty):
            if launch.deepspeed_stage == 3:
                raise DistributedError(f"launch.config: {launch.config} (ZeRO-3) shards the parameters, which HbAT's "
                                       "EWC penalty needs whole; use deepspeed_zero2 or ddp")
            penalty.save(tmp / "penalty.safetensors")
        spec = TrainSpec(step=step, model=source, adapter=adapter, lora=None, output=str(tmp / "out"), seed=seed,
                         dtype=dtype, global_batch_size=hyper.batch_size * hyper.grad_accum,
                         show_progress=show_progress, trainable=trainable,
                         penalty=str(tmp / "penalty.safetensors") if penalty is not None and len(penalty) else None,
                         penalty_plugin=penalty.launch_plugin if penalty is not None and len(penalty) else None,
                         report_to=list(hyper.report_to), logging_dir=hyper.logging_dir, **{step: hyper})
        with off_accelerator(model):  # the training processes need the GPUs this process's models occupy
            result = train(spec, launch, data=data, stream=show_progress)
        out = tmp / "out"
        if is_peft:
            read_back_adapter(model, out)
        else:
            state = {}
            for file in sorted(out.glob("*.safetensors")):
                state.update(load_file(str(file)))
            missing, unexpected = model.load_state_dict(state, strict=False)
            tied = {k for k in missing if "lm_head" in k} if getattr(model.config, "tie_word_embeddings", False) else set()
            if unexpected or set(missing) - tied:
                raise DistributedError(f"launch: the trained weights in {out} do not match the model (missing "
                                       f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
            if tied:
                model.tie_weights()
        with torch.no_grad():
            model.eval()
    return {**result.get("metrics", {}), "world_size": result.get("world_size"), "launch_seconds": result.get("seconds")}


def read_back_adapter(model, folder: Path) -> None:
    """Load the trained adapter the workers wrote into ``model``'s own adapter, refusing one whose tensors are not
    exactly the model's (a missing key would leave that tensor untrained without a word)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise DistributedError(f"launch: the training processes wrote no adapter ({file} missing)")
    state = load_file(str(file))
    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise DistributedError(f"launch: the adapter in {file} does not match the policy's: missing {len(missing)} "
                               f"{missing[:3]}, unexpected {len(unexpected)} {unexpected[:3]}")
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    wrong = [k for k in sorted(state) if tuple(state[k].shape) != shapes[k]]
    if wrong:
        raise DistributedError(f"launch: the adapter in {file} has other shapes than the policy's: {wrong[:3]}")
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise DistributedError(f"launch: peft did not place {len(unexpected)} adapter tensors: {unexpected[:3]}")


# ------------------------------------------------------------------------------------------- worker


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_rows(data: str | None):
    """The training rows the spec names: a ``save_to_disk`` folder or a json/jsonl/parquet file."""
    import datasets

    if not data:
        raise DistributedError("spec.data: no training data given")
    path = Path(data).expanduser()
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix)
    if builder is None or not path.is_file():
        raise DistributedError(f"spec.data: {path} is neither a datasets folder nor a .json/.jsonl/.parquet file")
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def _per_device(spec: TrainSpec, grad_accum: int, batch_size: int) -> int:
    if spec.global_batch_size is None:
        return batch_size
    world = _world_size()
    per_device, rest = divmod(spec.global_batch_size, world * grad_accum)
    if rest or per_device == 0:
        raise DistributedError(f"spec.global_batch_size: {spec.global_batch_size} is not a multiple of "
                               f"{world} processes x {grad_accum} accumulation steps")
    return per_device


def _saving(trainer_cls, folder: Path):
    """The trainer, saving its model at the end of ``train`` through ``save_model``, which every process must
    call (it gathers ZeRO-3 shards) and the main process writes."""

    class SavingTrainer(trainer_cls):
        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            self.save_model(str(folder))
            return result

    SavingTrainer.__name__ = f"Saving{trainer_cls.__name__}"
    return SavingTrainer


def _backend_overrides() -> dict:
    """DeepSpeed without GPUs: accelerate finds no process-group backend for a CPU device unless one is named,
    and then counts a single process (the trainer would size DeepSpeed's batch for one). Naming gloo in the
    trainer's arguments makes it count every process; DeepSpeed's CPU accelerator does the rest."""
    import torch

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and not torch.cuda.is_available():
        return {"ddp_backend": "gloo"}
    return {}


def _training_dtype(spec: TrainSpec) -> str:
    """The dtype the worker loads in. Full fine-tuning under DeepSpeed with bf16 loads in bf16 (DeepSpeed's bf16
    optimizer keeps fp32 master weights); without DeepSpeed's bf16 it loads in fp32, so that the optimizer updates
    fp32 weights (bf16 autocast on GPUs, :func:`mfnb.training.runtime.mixed_precision`). LoRA keeps the base as given (frozen;
    peft keeps the adapter in fp32)."""

    if spec.lora is not None or spec.adapter or spec.dtype not in ("bfloat16", "float16"):
        return spec.dtype
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    return spec.dtype if deepspeed and mixed_precision() else "float32"


def _set_trainable(model, names: list[str] | None) -> None:
    """Only ``names`` train (the caller's model had exactly these trainable); None leaves the model as loaded."""
    if names is None:
        return
    params = dict(model.named_parameters())
    unknown = sorted(set(names) - set(params))
    if unknown:
        raise DistributedError(f"spec.trainable: the loaded model has no parameters {unknown[:3]} (the caller's and the "
                               "training processes' models differ)")
    keep = set(names)
    for name, p in params.items():
        p.requires_grad_(name in keep)


def run_spec(spec: TrainSpec) -> dict:
    """Train as the spec says and write the result to ``spec.output`` (main process). Runs in each process of
    a launch, and directly for a single process."""

    start = time.perf_counter()
    output = Path(spec.output)
    partial = output.with_name(f".{output.name}.partial")
    if _rank() == 0 and partial.exists():
        shutil.rmtree(partial)
    with torch_threads(spec.torch_threads):
        model = load_model(spec.model, dtype=_training_dtype(spec), trust_remote_code=spec.trust_remote_code,
                           show_progress=False)
        tokenizer = load_tokenizer(spec.model, trust_remote_code=spec.trust_remote_code)
        if spec.adapter:
            model = load_adapter(model, spec.adapter, trainable=True)
        elif spec.lora is not None:
            from transformers import set_seed

            set_seed(spec.seed)  # the adapter's random init must not depend on what this process did before
            model = attach_lora(model, spec.lora)
        _set_trainable(model, spec.trainable)
        # a custom trainer (HbAT's EWC) comes from the plugin the spec names, so this layer imports no method package
        plugin = resolve(spec.penalty_plugin, "spec.penalty_plugin") if spec.penalty else None
        trainer_cls, trainer_kwargs = plugin(model, spec.penalty, spec.step) if plugin else (None, None)
        rows = load_rows(spec.data)
        logs = spec.logs()
        if spec.step == "dpo":
            from trl import DPOTrainer

            base = trainer_cls or DPOTrainer
            per_device = _per_device(spec, spec.dpo.grad_accum, spec.dpo.batch_size)
            params = spec.dpo.model_copy(update={"batch_size": per_device, "report_to": logs["report_to"],
                                                 "logging_dir": logs["logging_dir"]})
            metrics = dpo_trainer.fit(model, tokenizer, rows, params, seed=spec.seed, trainer_kwargs=trainer_kwargs,
                                 trainer_cls=_saving(base, partial), show_progress=spec.show_progress,
                                 config_overrides=_backend_overrides(), run_name=logs["run_name"])
        else:
            from trl import SFTTrainer

            base = trainer_cls or SFTTrainer
            p = spec.sft
            metrics = sft_trainer.fit(model, tokenizer, rows, lr=p.lr, seed=spec.seed, steps=p.steps, epochs=p.epochs,
                                batch_size=_per_device(spec, p.grad_accum, p.batch_size), trainer_kwargs=trainer_kwargs,
                                trainer_cls=_saving(base, partial), warmup_ratio=p.warmup_ratio,
                                scheduler=p.scheduler, max_length=p.max_length, show_progress=spec.show_progress,
                                gradient_accumulation_steps=p.grad_accum, gradient_checkpointing=p.gradient_checkpointing,
                                **logs, **_backend_overrides())
    import torch

    if torch.cuda.is_available():  # this process's GPU peak (Table 7 compares it across EWC variants)
        metrics = {**metrics, "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    result = {"metrics": metrics, "world_size": _world_size(), "seconds": time.perf_counter() - start,
              "spec": spec.model_dump()}
    if _rank() == 0:
        if metrics.get("skipped"):  # nothing to train (an empty DPO set): the output is the model as loaded
            model.save_pretrained(str(partial))
        shutil.rmtree(partial / "ref", ignore_errors=True)  # TRL's frozen reference adapter is not the result
        write_json(partial / RESULT_FILE, result)
        _replace_dir(partial, output)
    return result


def _replace_dir(new: Path, target: Path) -> None:
    """``new`` takes ``target``'s place; a kill in between leaves the old folder at ``.<name>.old``."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfnb.training.launch",
                                     description="Run one training step (usually under accelerate launch).")
    parser.add_argument("step", choices=["sft", "dpo"])
    parser.add_argument("--spec", required=True, help="TrainSpec as JSON (written by mfnb.training.launch.train)")
    args = parser.parse_args(argv)
    path = Path(args.spec)
    if not path.is_file():
        parser.error(f"--spec: {path} not found")
    spec = TrainSpec.validate_mapping(json.loads(path.read_text()), source=str(path))
    if spec.step != args.step:
        parser.error(f"step {args.step!r} does not match the spec's step {spec.step!r} ({path})")
    run_spec(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
