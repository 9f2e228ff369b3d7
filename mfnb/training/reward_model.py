"""Training a Bradley-Terry reward model with TRL's RewardTrainer, and saving it with what it was trained on:
the worlds build their ExPO reward models with it."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

from mfnb.core.atomic import atomic_dir, write_json
from mfnb.training.runtime import quiet_datasets, quiet_transformers, reporting


def fit_reward_model(model, tokenizer, rows: Sequence[dict], ids: Callable[[str, str], list[int]], params, *,
                     scheduler: str, warmup: float, logging_steps: int, show_progress: bool, report_to="none",
                     logging_dir: str | None = None) -> dict:
    """TRL's RewardTrainer (Bradley-Terry) on ranked (prompt, chosen, rejected) rows, tokenized by ``ids`` (the
    text the judge will score); ``params`` gives lr, epochs, batch_size, seed and center_rewards.  Returns the
    training loss and the last logged line; the model is left in eval mode. ``report_to`` / ``logging_dir``: the
    training curves, as for SFT and DPO (:func:`mfnb.training.runtime.reporting`; the runs are named ``reward-...``)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    dataset = Dataset.from_list([{"chosen_ids": ids(r["prompt"], r["chosen"]),
                                  "rejected_ids": ids(r["prompt"], r["rejected"])} for r in rows])
    gpu = torch.cuda.is_available()
    with (tempfile.TemporaryDirectory(prefix="mfnb-rm-") as out, quiet_datasets(),
          reporting("reward", report_to, logging_dir) as logs):
        config = RewardConfig(output_dir=out, learning_rate=params.lr, num_train_epochs=params.epochs,
                              per_device_train_batch_size=params.batch_size, warmup_steps=warmup,
                              lr_scheduler_type=scheduler, seed=params.seed, data_seed=params.seed,
                              center_rewards_coefficient=params.center_rewards or None,
                              bf16=gpu and torch.cuda.is_bf16_supported(), activation_checkpointing=False,
                              save_strategy="no", logging_steps=logging_steps, disable_tqdm=not show_progress,
                              dataloader_pin_memory=gpu, max_length=None, **logs)
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    model.eval()
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {"train_loss": result.metrics.get("train_loss"), "last_logged": history[-1] if history else {}}


def save_reward_model(target: Path, model, tokenizer, info: dict) -> Path:
    """Model, tokenizer and ``reward.json`` (what was trained, how) into ``target``, all or nothing."""
    with atomic_dir(target) as tmp, quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "reward.json", info)
    return target
