"""The DPO step's speed and memory levers (precomputed reference log-probs, completion-only LM head, micro-batches,
length-grouped batches): each reaches TRL's config, is left out of the params' dump at its default, and the exact ones
leave the update as it was."""
from __future__ import annotations

import pytest
import torch

from mfnb.models import LoraParams, attach_lora
from mfnb.training.config import DPOParams, TrainSpec
from mfnb.training.dpo import dpo_update, preference_dataset
from mfnb.training.dpo_trainer import dpo_config
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

PROMPT = "sort these words: fox cat owl . answer:"
LEVERS = ("precompute_ref_log_probs", "completion_only_logits", "group_by_length")


def test_levers_are_left_out_of_dumps_at_their_defaults_and_only_the_exact_ones_are_on():
    params = DPOParams()
    dump = params.model_dump()
    assert not any(name in dump for name in (*LEVERS, "precompute_ref_batch_size", "micro_batch_size"))
    assert params.completion_only_logits and not params.precompute_ref_log_probs and not params.group_by_length
    changed = DPOParams(precompute_ref_log_probs=True, completion_only_logits=False, group_by_length=True,
                        precompute_ref_batch_size=32, batch_size=8, micro_batch_size=4)
    assert {k: changed.model_dump()[k] for k in (*LEVERS, "micro_batch_size")} == {
        "precompute_ref_log_probs": True, "completion_only_logits": False, "group_by_length": True,
        "micro_batch_size": 4}
    # the launch carries them in the spec's DPO params
    spec = TrainSpec(step="dpo", model="m", output="o", dpo=changed)
    assert TrainSpec.model_validate_json(spec.model_dump_json()).dpo == changed


def test_micro_batches_split_the_batch_and_a_micro_batch_that_does_not_divide_it_is_named():
    assert DPOParams(batch_size=8, micro_batch_size=2).micro_batches() == (2, 4)
    assert DPOParams(batch_size=8, micro_batch_size=16).micro_batches() == (8, 1)
    assert DPOParams(batch_size=8).micro_batches() == (8, 1)
    with pytest.raises(ValueError, match=r"micro_batch_size \(3\) must divide batch_size \(8\)"):
        DPOParams(batch_size=8, micro_batch_size=3)
    # a launch's per-process share (model_copy, unvalidated) takes the largest micro-batch that divides it
    assert DPOParams(batch_size=8, micro_batch_size=4).model_copy(update={"batch_size": 6}).micro_batches() == (3, 2)


def test_levers_reach_trls_config(tmp_path):
    plain = dpo_config(str(tmp_path), DPOParams(), seed=0)
    assert not plain.precompute_ref_log_probs and plain.train_sampling_strategy == "random"
    config = dpo_config(str(tmp_path), DPOParams(precompute_ref_log_probs=True, precompute_ref_batch_size=32,
                                                 group_by_length=True), seed=0)
    assert config.precompute_ref_log_probs and config.precompute_ref_batch_size == 32
    assert config.train_sampling_strategy == "group_by_length" and not config.remove_unused_columns
    micro = dpo_config(str(tmp_path), DPOParams(batch_size=8, grad_accum=2, micro_batch_size=2,
                                                precompute_ref_log_probs=True), seed=0)
    assert (micro.per_device_train_batch_size, micro.gradient_accumulation_steps) == (2, 8)
    assert micro.precompute_ref_batch_size == 2  # the precompute's batch is the micro-batch, not the update's


def _train(tokenizer, data, adapter=None, **levers):
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    torch.manual_seed(0)
    policy = attach_lora(_new_model(TinyWorldParams(), tokenizer), LoraParams())
    if adapter is not None:
        set_peft_model_state_dict(policy, adapter)
    metrics = dpo_update(policy, tokenizer, data, DPOParams(lr=5e-3, batch_size=4, warmup_ratio=0.0, **levers))
    assert list(policy.peft_config) == ["default"]
    return metrics, {k: v.clone() for k, v in get_peft_model_state_dict(policy).items()}


@pytest.mark.parametrize("lever", [{"precompute_ref_log_probs": True}, {"completion_only_logits": True},
                                   {"micro_batch_size": 2}], ids=lambda lever: next(iter(lever)))
def test_exact_levers_leave_loss_and_adapter_unchanged(lever):
    """From a trained adapter (so the base-model reference differs from the adapter's own), the update with the
    lever on gives the loss and adapter of the plain update (every lever off), within float rounding."""
    tokenizer = build_tokenizer()
    data = preference_dataset([PROMPT, PROMPT + " now"] * 4, ["cat fox owl", "cat fox owl owl"] * 4,
                              ["fox cat owl", "owl"] * 4)
    _, start = _train(tokenizer, data)
    plain, plain_adapter = _train(tokenizer, data, start, completion_only_logits=False)
    fast, fast_adapter = _train(tokenizer, data, start, **{"completion_only_logits": False, **lever})
    assert abs(plain["rewards/chosen"]) > 1e-3  # the reference is the base model, not the starting adapter
    for key in ("train_loss", "rewards/chosen", "rewards/rejected"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key
    assert all(torch.allclose(plain_adapter[k], fast_adapter[k], atol=1e-5) for k in plain_adapter)


def test_length_grouped_batches_train():
    tokenizer = build_tokenizer()
    data = preference_dataset([PROMPT, PROMPT + " now"] * 4, ["cat fox owl", "cat fox owl owl"] * 4,
                              ["fox cat owl", "owl"] * 4)
    metrics, _ = _train(tokenizer, data, group_by_length=True)
    assert metrics["train_loss"] < 0.7
