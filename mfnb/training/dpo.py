"""DPO updates on (prompt, chosen, rejected) rows built from responses: in this process (:mod:`.dpo_trainer`)
or, under a launch, on several (:mod:`.launch`).

In the multi-fidelity paper the expert's response is always *chosen* and the student's *rejected*.
"""
from __future__ import annotations

from datasets import Dataset

from mfnb.training import dpo_trainer
from mfnb.training import launch as launcher
from mfnb.training.config import DistributedError, DPOParams
from mfnb.training.runtime import free_accelerator


def preference_dataset(prompts: list[str], chosen: list[str], rejected: list[str],
                       drop_identical: bool = False) -> Dataset:
    """A TRL preference dataset. Identical pairs carry no DPO gradient; ``drop_identical`` skips them."""
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise ValueError(f"prompts, chosen and rejected differ in length: {len(prompts)}, {len(chosen)}, "
                         f"{len(rejected)}")
    rows = [{"prompt": p, "chosen": " " + c.strip(), "rejected": " " + r.strip()}
            for p, c, r in zip(prompts, chosen, rejected) if not (drop_identical and c.strip() == r.strip())]
    return Dataset.from_list(rows) if rows else Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})


def dpo_update(policy, tokenizer, dataset: Dataset, params: DPOParams, *, seed: int = 0,
               trainer_cls=None, trainer_kwargs: dict | None = None, show_progress: bool = False,
               config_overrides: dict | None = None, launch=None) -> dict:
    """Train ``policy`` in place on ``dataset``; returns the final metrics.

    A peft model trains its LoRA adapter; a plain model is fully fine-tuned against a frozen copy of
    itself (see :mod:`.dpo_trainer`). An empty dataset is a no-op (every pair was identical, say) and
    returns ``{"skipped": True}``. ``config_overrides`` go to the ``DPOConfig`` (e.g. ``ddp_backend``).
    ``launch`` (:class:`mfnb.training.config.LaunchParams`, or the active :func:`mfnb.training.launch.launching`
    block): several processes through ``accelerate launch`` (DDP, DeepSpeed ZeRO-2/3) with the same global
    batch, the result loaded back into ``policy``.
    """
    if len(dataset) == 0:
        return {"skipped": True}
    free_accelerator()
    launch = launcher.active_launch(launch)
    if launch is None:
        return dpo_trainer.fit(policy, tokenizer, dataset, params, seed=seed, trainer_cls=trainer_cls,
                               trainer_kwargs=trainer_kwargs, show_progress=show_progress,
                               config_overrides=config_overrides)
    if trainer_cls is not None or trainer_kwargs or config_overrides:
        raise DistributedError(
            "launch: this DPO step uses its own trainer class or arguments (e.g. HbAT's EWC penalty), which run "
            "in one process only; run it without a launch (launch: null)")
    return launcher.train_in_place(policy, tokenizer, dataset, "dpo", params, launch, seed=seed,
                                   show_progress=show_progress)
