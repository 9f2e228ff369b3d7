"""What every training step sets up around TRL: quiet logs, the GPU freed of sampling engines, mixed precision
with fp32 master weights."""
from __future__ import annotations

import os
from contextlib import contextmanager

import datasets
import torch

from mfnb.models.engines import close_all


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
