"""Supervised fine-tuning on (prompt, completion) rows: in this process (:mod:`.sft_trainer`) or, under a
launch, on several (:mod:`.launch`), with the same global batch either way.

Used to build the tiny world's models, the SFT stages of HbAT and the SFT model of ExPO.
"""
from __future__ import annotations

from datasets import Dataset

from mfnb.training import launch as launcher
from mfnb.training import sft_trainer
from mfnb.training.config import DistributedError, SFTParams
from mfnb.training.runtime import free_accelerator

# sft_config's keyword -> SFTParams field, for what a launched step can carry
_LAUNCH_FIELDS = {"warmup_ratio": "warmup_ratio", "scheduler": "scheduler", "max_length": "max_length",
                  "gradient_accumulation_steps": "grad_accum", "gradient_checkpointing": "gradient_checkpointing",
                  "report_to": "report_to", "logging_dir": "logging_dir"}


def train(model, tokenizer, rows: list[dict] | Dataset, *, lr: float, batch_size: int, seed: int,
          steps: int | None = None, epochs: float = 1.0, trainer_cls=None, trainer_kwargs: dict | None = None,
          launch=None, **config_overrides) -> dict:
    """Fine-tune ``model`` in place; returns the trainer's final metrics.

    ``report_to`` / ``logging_dir`` (as in :class:`mfnb.training.config.SFTParams`): where the training curves go.
    ``launch`` (:class:`mfnb.training.config.LaunchParams`, or the active :func:`mfnb.training.launch.launching`
    block): several processes through ``accelerate launch`` (DDP, DeepSpeed ZeRO-2/3) with the same global batch,
    the result loaded back into ``model``."""
    dataset = rows if isinstance(rows, Dataset) else Dataset.from_list(rows)
    free_accelerator()
    active = launcher.active_launch(launch)
    if active is None:
        return sft_trainer.fit(model, tokenizer, dataset, lr=lr, batch_size=batch_size, seed=seed, steps=steps,
                               epochs=epochs, trainer_cls=trainer_cls, trainer_kwargs=trainer_kwargs, **config_overrides)
    show = bool(config_overrides.pop("show_progress", False))
    unknown = sorted(set(config_overrides) - set(_LAUNCH_FIELDS))
    if trainer_cls is not None or trainer_kwargs or unknown:
        raise DistributedError(
            f"launch: this SFT step uses its own trainer class or arguments ({unknown or 'e.g. HbAT EWC penalty'}), "
            "which run in one process only; run it without a launch (launch: null)")
    values = {"max_length": 256, **{_LAUNCH_FIELDS[k]: v for k, v in config_overrides.items()}}  # sft_config's
    hyper = SFTParams(lr=lr, batch_size=batch_size, epochs=epochs, steps=steps, **values)
    return launcher.train_in_place(model, tokenizer, dataset, "sft", hyper, active, seed=seed, show_progress=show)
