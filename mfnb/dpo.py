"""LoRA DPO updates with TRL's DPOTrainer, on (prompt, chosen, rejected) rows built from responses.

In the multi-fidelity paper the expert's response is always *chosen* and the student's *rejected*.
The reference policy is the adapter-disabled model by default (``reference="base"``); with
``reference="previous"`` TRL's own behaviour is kept: a frozen copy of the adapter as it was when the
update started (the previous round's policy).

A plain (non-peft) model is trained by full fine-tuning; its reference is then a frozen copy of the
policy as it is when the update starts (TRL would otherwise reload the checkpoint named in the config,
which is not the in-memory model after earlier training), unless ``trainer_kwargs`` passes a ``ref_model``.
"""
from __future__ import annotations

import tempfile
from typing import Literal

import torch
from datasets import Dataset
from pydantic import Field
from transformers import PrinterCallback

from mfnb.params import Params
from mfnb.sft import quiet_datasets


class DPOParams(Params):
    """One DPO update. Paper defaults where the paper gives them (cosine schedule, 10% warm-up)."""

    lr: float = Field(default=5e-6, gt=0)
    beta: float = Field(default=0.1, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    scheduler: str = "cosine"
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    max_length: int = Field(default=512, ge=8)
    reference: Literal["base", "previous"] = "base"
    drop_identical: bool = False
    # recompute activations in the backward: less memory, ~30% more time; left out of dumps when off, so the
    # cache keys made before it existed stay the same
    gradient_checkpointing: bool = Field(default=False, exclude_if=lambda v: not v)


def preference_dataset(prompts: list[str], chosen: list[str], rejected: list[str],
                       drop_identical: bool = False) -> Dataset:
    """A TRL preference dataset. Identical pairs carry no DPO gradient; ``drop_identical`` skips them."""
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise ValueError(f"prompts, chosen and rejected differ in length: {len(prompts)}, {len(chosen)}, "
                         f"{len(rejected)}")
    rows = [{"prompt": p, "chosen": " " + c.strip(), "rejected": " " + r.strip()}
            for p, c, r in zip(prompts, chosen, rejected) if not (drop_identical and c.strip() == r.strip())]
    return Dataset.from_list(rows) if rows else Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})


def dpo_config(output_dir: str, params: DPOParams, seed: int, show_progress: bool = False, **overrides):
    """A DPOConfig that runs on CPU (fp32) and GPU (bf16 mixed precision where supported) alike."""
    from trl import DPOConfig

    from mfnb.sft import mixed_precision

    gpu = torch.cuda.is_available()
    kwargs = dict(output_dir=output_dir, learning_rate=params.lr, beta=params.beta,
                  num_train_epochs=params.epochs, per_device_train_batch_size=params.batch_size,
                  gradient_accumulation_steps=params.grad_accum, warmup_steps=params.warmup_ratio,
                  lr_scheduler_type=params.scheduler, loss_type=list(params.loss_type),
                  loss_weights=params.loss_weights, max_length=params.max_length, seed=seed, data_seed=seed,
                  bf16=mixed_precision(), activation_checkpointing=params.gradient_checkpointing,
                  report_to="none", save_strategy="no", logging_steps=10, disable_tqdm=not show_progress,
                  dataloader_pin_memory=gpu)
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def dpo_update(policy, tokenizer, dataset: Dataset, params: DPOParams, *, seed: int = 0,
               trainer_cls=None, trainer_kwargs: dict | None = None, show_progress: bool = False,
               config_overrides: dict | None = None, launch=None) -> dict:
    """Train ``policy`` in place on ``dataset``; returns the final metrics.

    A peft model trains its LoRA adapter; a plain model is fully fine-tuned against a frozen copy of
    itself (see the module docstring). An empty dataset is a no-op (every pair was identical, say) and
    returns ``{"skipped": True}``. ``config_overrides`` go to the ``DPOConfig`` (e.g. ``ddp_backend``).
    ``launch`` (:class:`mfnb.distributed.LaunchParams`, or the active :func:`mfnb.distributed.launching`
    block): several processes through ``accelerate launch`` (DDP, DeepSpeed ZeRO-2/3) with the same global
    batch, the result loaded back into ``policy``.
    """
    from trl import DPOTrainer

    if len(dataset) == 0:
        return {"skipped": True}
    from mfnb import distributed
    from mfnb.sft import free_accelerator

    free_accelerator()
    launch = distributed.active_launch(launch)
    if launch is not None:
        if trainer_cls is not None or trainer_kwargs or config_overrides:
            raise distributed.DistributedError(
                "launch: this DPO step uses its own trainer class or arguments (e.g. HbAT's EWC penalty), which run "
                "in one process only; run it without a launch (launch: null)")
        return distributed.train_in_place(policy, tokenizer, dataset, "dpo", params, launch, seed=seed,
                                          show_progress=show_progress)
    from mfnb.sft import fp32_master_weights

    is_peft = hasattr(policy, "peft_config")
    trainer_kwargs = dict(trainer_kwargs or {})
    if not is_peft and trainer_kwargs.get("ref_model") is None:
        trainer_kwargs["ref_model"] = _frozen_copy(policy)
    pad_side = tokenizer.padding_side
    with tempfile.TemporaryDirectory(prefix="mfnb-dpo-") as out, quiet_datasets(), fp32_master_weights(policy):
        config = dpo_config(out, params, seed, show_progress=show_progress, **(config_overrides or {}))
        trainer = (trainer_cls or DPOTrainer)(model=policy, args=config, train_dataset=dataset,
                                              processing_class=tokenizer, **trainer_kwargs)
        trainer.remove_callback(PrinterCallback)
        if is_peft and params.reference == "base" and "ref" in policy.peft_config:
            # TRL copied the adapter into a frozen "ref" adapter; without it the reference log-probs are
            # computed with adapters disabled, i.e. by the base model.
            policy.delete_adapter("ref")
        try:
            result = trainer.train()
        finally:
            if is_peft:
                if "ref" in policy.peft_config:
                    policy.delete_adapter("ref")
                policy.set_adapter("default")
            tokenizer.padding_side = pad_side
    policy.eval()
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = dict(result.metrics)
    if history:
        metrics.update({k: v for k, v in history[-1].items() if k.startswith(("rewards/", "logps/", "loss"))})
    return metrics


def _frozen_copy(model):
    """An eval-mode, gradient-free deep copy (the full fine-tuning reference policy)."""
    import copy

    ref = copy.deepcopy(model)
    for module in ref.modules():
        # an earlier trainer may have patched ``forward`` on the instance (TRL's fused LM head); the copied
        # patch would still call the original model's forward, so drop it and let TRL patch the copy itself
        module.__dict__.pop("forward", None)
    ref.requires_grad_(False)
    return ref.eval()
