"""Supervised fine-tuning on (prompt, completion) rows with TRL's SFTTrainer (loss on completions only).

Used to build the tiny world's models, the SFT stages of HbAT and the SFT model of ExPO.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager

import datasets
import torch
from datasets import Dataset
from pydantic import Field
from transformers import PrinterCallback

from mfnb.params import Params


class SFTParams(Params):
    """One SFT stage (HbAT's paper setting: lr 1e-5, batch 64, 3 epochs)."""

    lr: float = Field(default=1e-5, gt=0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    epochs: float = Field(default=3.0, gt=0)
    steps: int | None = Field(default=None, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    scheduler: str = "cosine"
    max_length: int = Field(default=512, ge=8)
    # recompute activations in the backward: less memory, ~30% more time; left out of dumps when off, so the
    # cache keys made before it existed stay the same
    gradient_checkpointing: bool = Field(default=False, exclude_if=lambda v: not v)


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
    from mfnb.engines import close_all

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
    import os

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


def sft_config(output_dir: str, *, lr: float, batch_size: int, seed: int, steps: int | None = None,
               epochs: float = 1.0, warmup_ratio: float = 0.1, scheduler: str = "cosine", max_length: int = 256,
               show_progress: bool = False, gradient_checkpointing: bool = False, **overrides):
    """An SFTConfig that works on CPU (fp32) and GPU (bf16 mixed precision where supported) alike."""
    from trl import SFTConfig

    gpu = torch.cuda.is_available()
    kwargs = dict(output_dir=output_dir, learning_rate=lr, per_device_train_batch_size=batch_size,
                  num_train_epochs=epochs, max_steps=steps or -1, warmup_steps=warmup_ratio,
                  lr_scheduler_type=scheduler, seed=seed, data_seed=seed, max_length=max_length,
                  bf16=mixed_precision(), activation_checkpointing=gradient_checkpointing,
                  report_to="none", save_strategy="no", logging_steps=50, disable_tqdm=not show_progress,
                  dataloader_pin_memory=gpu, completion_only_loss=True)
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


_LAUNCH_FIELDS = {"warmup_ratio": "warmup_ratio", "scheduler": "scheduler", "max_length": "max_length",
                  "gradient_accumulation_steps": "grad_accum", "gradient_checkpointing": "gradient_checkpointing"}


def train(model, tokenizer, rows: list[dict] | Dataset, *, lr: float, batch_size: int, seed: int,
          steps: int | None = None, epochs: float = 1.0, trainer_cls=None, trainer_kwargs: dict | None = None,
          desc: str = "sft", launch=None, **config_overrides) -> dict:
    """Fine-tune ``model`` in place; returns the trainer's final metrics.

    ``launch`` (:class:`mfnb.distributed.LaunchParams`, or the active :func:`mfnb.distributed.launching` block):
    several processes through ``accelerate launch`` (DDP, DeepSpeed ZeRO-2/3) with the same global batch, the
    result loaded back into ``model``."""
    from trl import SFTTrainer

    from mfnb import distributed

    dataset = rows if isinstance(rows, Dataset) else Dataset.from_list(rows)
    free_accelerator()
    active = distributed.active_launch(launch)
    if active is not None:
        show = bool(config_overrides.pop("show_progress", False))
        unknown = sorted(set(config_overrides) - set(_LAUNCH_FIELDS))
        if trainer_cls is not None or trainer_kwargs or unknown:
            raise distributed.DistributedError(
                f"launch: this SFT step uses its own trainer class or arguments ({unknown or 'e.g. HbAT EWC penalty'}), "
                "which run in one process only; run it without a launch (launch: null)")
        values = {"max_length": 256, **{_LAUNCH_FIELDS[k]: v for k, v in config_overrides.items()}}  # sft_config's
        hyper = SFTParams(lr=lr, batch_size=batch_size, epochs=epochs, steps=steps, **values)
        return distributed.train_in_place(model, tokenizer, dataset, "sft", hyper, active, seed=seed, show_progress=show)
    with tempfile.TemporaryDirectory(prefix="mfnb-sft-") as out, quiet_datasets(), fp32_master_weights(model):
        config = sft_config(out, lr=lr, batch_size=batch_size, seed=seed, steps=steps, epochs=epochs,
                            **config_overrides)
        trainer = (trainer_cls or SFTTrainer)(model=model, args=config, train_dataset=dataset,
                                              processing_class=tokenizer, **(trainer_kwargs or {}))
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    model.eval()
    return dict(result.metrics)
