"""DPO in this process with TRL's DPOTrainer (what :func:`mfnb.training.dpo.dpo_update` runs here and each
launched process runs), on (prompt, chosen, rejected) rows built from responses.

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

import torch
from datasets import Dataset
from transformers import PrinterCallback

from mfnb.training.config import DPOParams
from mfnb.training.runtime import (completion_only_lm_head, fp32_master_weights, mixed_precision, quiet_datasets,
                                   reporting)


def dpo_config(output_dir: str, params: DPOParams, seed: int, show_progress: bool = False, **overrides):
    """A DPOConfig that runs on CPU (fp32) and GPU (bf16 mixed precision where supported) alike."""
    from trl import DPOConfig

    gpu = torch.cuda.is_available()
    micro, accumulate = params.micro_batches()
    kwargs = dict(output_dir=output_dir, learning_rate=params.lr, beta=params.beta,
                  num_train_epochs=params.epochs, per_device_train_batch_size=micro,
                  gradient_accumulation_steps=params.grad_accum * accumulate, warmup_steps=params.warmup_ratio,
                  lr_scheduler_type=params.scheduler, loss_type=list(params.loss_type),
                  loss_weights=params.loss_weights, max_length=params.max_length, seed=seed, data_seed=seed,
                  bf16=mixed_precision(), activation_checkpointing=params.gradient_checkpointing,
                  report_to="none", save_strategy="no", logging_steps=10, disable_tqdm=not show_progress,
                  dataloader_pin_memory=gpu)
    # the levers that change the update are off by default (TRL's and transformers' defaults); see DPOParams
    if params.precompute_ref_log_probs:
        kwargs.update(precompute_ref_log_probs=True,
                      precompute_ref_batch_size=params.precompute_ref_batch_size or micro)
    if params.group_by_length:
        # the sampler reads the "length" column :func:`fit` adds to TRL's tokenised rows; the collator reads only
        # its own columns, so the rows may keep theirs
        kwargs.update(train_sampling_strategy="group_by_length", remove_unused_columns=False)
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def fit(policy, tokenizer, dataset: Dataset, params: DPOParams, *, seed: int = 0, trainer_cls=None,
        trainer_kwargs: dict | None = None, show_progress: bool = False, config_overrides: dict | None = None,
        run_name: str | None = None) -> dict:
    """Train ``policy`` in place in this process; returns the final metrics. ``trainer_cls``: DPOTrainer or a
    subclass (HbAT's EWC penalty). An empty dataset is a no-op: ``{"skipped": True}``. The training curves go
    where ``params.report_to`` / ``params.logging_dir`` say, as run ``run_name`` (None: a new one; see
    :func:`mfnb.training.runtime.reporting`)."""
    from trl import DPOTrainer  # TRL takes seconds to import: only when a step runs

    if len(dataset) == 0:
        return {"skipped": True}
    is_peft = hasattr(policy, "peft_config")
    trainer_kwargs = dict(trainer_kwargs or {})
    if not is_peft and trainer_kwargs.get("ref_model") is None:
        trainer_kwargs["ref_model"] = _frozen_copy(policy)
    pad_side = tokenizer.padding_side
    # TRL precomputes the reference's log-probs while the trainer is built, with its "ref" adapter (a copy of the
    # adapter as it is) where the reference is to be the base model: then they are computed here once that adapter
    # is gone (below)
    late_precompute = params.precompute_ref_log_probs and is_peft and params.reference == "base"
    overrides = {**(config_overrides or {})}
    if late_precompute:
        overrides.setdefault("precompute_ref_log_probs", False)
    with (tempfile.TemporaryDirectory(prefix="mfnb-dpo-") as out, quiet_datasets(), fp32_master_weights(policy),
          reporting("dpo", params.report_to, params.logging_dir, run_name) as logs,
          completion_only_lm_head(params.completion_only_logits)):
        config = dpo_config(out, params, seed, show_progress=show_progress, **{**logs, **overrides})
        trainer = (trainer_cls or DPOTrainer)(model=policy, args=config, train_dataset=dataset,
                                              processing_class=tokenizer, **trainer_kwargs)
        trainer.remove_callback(PrinterCallback)
        if is_peft and params.reference == "base" and "ref" in policy.peft_config:
            # TRL copied the adapter into a frozen "ref" adapter; without it the reference log-probs are
            # computed with adapters disabled, i.e. by the base model.
            policy.delete_adapter("ref")
        if late_precompute and not config.precompute_ref_log_probs:
            _precompute_reference(trainer, config, params)
        if params.group_by_length:
            trainer.train_dataset = trainer.train_dataset.map(
                lambda row: {"length": len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))})
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


def _precompute_reference(trainer, config, params: DPOParams) -> None:
    """The reference's log-probs of every row, computed once by the adapter-disabled model, as TRL's
    ``precompute_ref_log_probs`` computes them while the trainer is built (its ``_precompute_ref_logps``; called
    here because TRL computes them before its "ref" adapter can be removed)."""
    from trl.trainer.utils import hash_module

    config.precompute_ref_log_probs = True
    trainer.precompute_ref_logps = True
    trainer._precompute_model_hash = hash_module(trainer.model)
    trainer.train_dataset = trainer._precompute_ref_logps(
        trainer.train_dataset, "train", params.precompute_ref_batch_size or params.micro_batches()[0])


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
