"""Supervised fine-tuning in this process with TRL's SFTTrainer (loss on completions only): what
:func:`mfnb.training.sft.train` runs here and what each launched process runs."""
from __future__ import annotations

import tempfile

import torch
from datasets import Dataset
from transformers import PrinterCallback

from mfnb.training.runtime import (completion_only_lm_head, fp32_master_weights, mixed_precision, quiet_datasets,
                                   reporting)


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


def fit(model, tokenizer, dataset: Dataset, *, lr: float, batch_size: int, seed: int, steps: int | None = None,
        epochs: float = 1.0, trainer_cls=None, trainer_kwargs: dict | None = None, report_to="none",
        logging_dir: str | None = None, run_name: str | None = None, completion_only_logits: bool = True,
        **config_overrides) -> dict:
    """Fine-tune ``model`` in place in this process; returns the trainer's final metrics. ``trainer_cls``:
    SFTTrainer or a subclass (HbAT's EWC penalty). ``report_to``: the training curves' integrations, logging to
    ``<logging_dir>/<run_name>`` (see :func:`mfnb.training.runtime.reporting`), which outlives the temporary
    output folder. ``completion_only_logits``: the LM head over completion tokens only (exact; see
    :func:`mfnb.training.runtime.completion_only_lm_head`)."""
    from trl import SFTTrainer

    with (tempfile.TemporaryDirectory(prefix="mfnb-sft-") as out, quiet_datasets(), fp32_master_weights(model),
          reporting("sft", report_to, logging_dir, run_name) as logs, completion_only_lm_head(completion_only_logits)):
        config = sft_config(out, lr=lr, batch_size=batch_size, seed=seed, steps=steps, epochs=epochs,
                            **{**logs, **config_overrides})
        trainer = (trainer_cls or SFTTrainer)(model=model, args=config, train_dataset=dataset,
                                              processing_class=tokenizer, **(trainer_kwargs or {}))
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    model.eval()
    return dict(result.metrics)
