"""What every training step sets up around TRL: quiet logs, the GPU freed of sampling engines, mixed precision
with fp32 master weights, and where its training curves go."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import datasets
import torch

from mfnb.core import paths
from mfnb.models.engines import close_all
from mfnb.training.config import TrainingLogs


@contextmanager
def quiet_datasets():
    """Hide the per-call dataset-preparation bars (map/filter) that TRL prints for every trainer."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


@contextmanager
def quiet_transformers():
    """Hide transformers' per-load progress bars and load reports (tiny models load in milliseconds)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def free_accelerator() -> None:
    """Close every sampling engine (a vLLM server, a bf16 sampling copy) and return this process's cached GPU
    memory, so that the training step about to start, here or in launched processes, has the GPU."""
    close_all(accelerator_only=True)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def mixed_precision() -> bool:
    """bf16 autocast where a GPU supports it; fp32 on CPU (the trainers' own default on CPU)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@contextmanager
def fp32_master_weights(model):
    """Within the block the trainable parameters are fp32 (the optimizer's master weights, with bf16 autocast
    on a GPU: the papers' mixed precision); afterwards they are cast back to the model's dtype. AdamW on bf16
    weights loses most updates at lr 1e-5..1e-6: a bf16 weight near 1 moves in steps of 2^-8. LoRA adapters are
    fp32 already (peft keeps them so), so only full fine-tuning casts anything."""
    low = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)}
    if not low or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":  # DeepSpeed keeps its own
        yield model
        return
    (dtype,) = low if len(low) == 1 else (torch.bfloat16,)
    model.float()
    try:
        yield model
    finally:
        model.to(dtype)


# ------------------------------------------------------------------------------------------ training curves


def reporting_off(report_to) -> bool:
    """No integration asked for (``none``, or nothing)."""
    return not report_to or report_to == "none" or list(report_to) == ["none"]


def log_root(step: str, logging_dir: str | None = None) -> Path:
    """Where a step's runs log: ``logging_dir``, else ``$MFNB_CACHE/logs/<step>`` (outlives the step's output)."""
    return Path(logging_dir).expanduser().resolve() if logging_dir else paths.cache_dir("logs", step)


def new_run_name(step: str, logging_dir: str | None = None) -> str:
    """A fresh run's name, ``<step>-<date>-<time>`` (``-2``, ``-3``, ... when taken), its folder under
    :func:`log_root` created: concurrent runs never share one, and a launch names its run once for all processes."""
    root = log_root(step, logging_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = stamp, 1
    while True:
        try:
            (root / name).mkdir()  # atomic: two runs starting in the same second get different names
            return name
        except FileExistsError:
            n += 1
            name = f"{stamp}-{n}"


@contextmanager
def reporting(step: str, report_to, logging_dir: str | None = None, run_name: str | None = None):
    """Around a trainer's construction and ``train``: yields the config's ``report_to``, ``run_name`` and
    ``project`` and points transformers' own integrations at the run's folder ``<log_root>/<run_name>`` (a new
    run when ``run_name`` is None): TensorBoard's event files (``TENSORBOARD_LOGGING_DIR``, read when the trainer
    is built) and wandb's local files (``WANDB_DIR``, unless set); wandb's project is ``mfnb`` unless
    ``WANDB_PROJECT`` is set, trackio's the config's ``project``. ``none`` sets nothing and creates no folder."""
    report_to = TrainingLogs.validate_mapping({"report_to": report_to}, source=f"{step} step").report_to
    if reporting_off(report_to):
        yield {"report_to": "none"}
        return
    run_name = run_name or new_run_name(step, logging_dir)
    folder = log_root(step, logging_dir) / run_name
    folder.mkdir(parents=True, exist_ok=True)
    env = {"TENSORBOARD_LOGGING_DIR": str(folder), "WANDB_DIR": os.environ.get("WANDB_DIR") or str(folder),
           "WANDB_PROJECT": os.environ.get("WANDB_PROJECT") or "mfnb"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield {"report_to": list(report_to), "run_name": run_name, "project": "mfnb"}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def completion_only_lm_head(on: bool):
    """Within the block, TRL's fused LM head (DPO's and SFT's) projects and scores only the positions with a label
    (the completions), on every device. TRL 1.16 takes that path only where Triton runs
    (``trl.trainer.utils._use_triton``) and scores every position elsewhere, so that a compiling backend (Neuron)
    sees one tile shape; on CPU that is wasted work (about a fifth of a SmolLM2 DPO step), and its only switch is
    that function, so it is replaced here. The masked positions' outputs are zeroed either way: the loss and the
    gradients are the same up to float rounding."""
    if not on:
        yield
        return
    from trl.trainer import utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original
