"""The DPO step's speed levers (precomputed reference log-probs, completion-only LM head, length-grouped batches):
each reaches TRL's config, is left out of the params' dump when off, and the exact ones leave the update as it was."""
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


def test_levers_are_off_and_left_out_of_dumps_by_default():
    dump = DPOParams().model_dump()
    assert not any(name in dump for name in (*LEVERS, "precompute_ref_batch_size"))
    on = DPOParams(**dict.fromkeys(LEVERS, True), precompute_ref_batch_size=32)
    assert all(on.model_dump()[name] is True for name in LEVERS)
    # the launch carries them in the spec's DPO params
    spec = TrainSpec(step="dpo", model="m", output="o", dpo=on)
    assert TrainSpec.model_validate_json(spec.model_dump_json()).dpo == on


def test_levers_reach_trls_config(tmp_path):
    plain = dpo_config(str(tmp_path), DPOParams(), seed=0)
    assert not plain.precompute_ref_log_probs and plain.train_sampling_strategy == "random"
    config = dpo_config(str(tmp_path), DPOParams(precompute_ref_log_probs=True, precompute_ref_batch_size=32,
                                                 group_by_length=True), seed=0)
    assert config.precompute_ref_log_probs and config.precompute_ref_batch_size == 32
    assert config.train_sampling_strategy == "group_by_length" and not config.remove_unused_columns


def _train(tokenizer, data, adapter=None, **levers):
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    torch.manual_seed(0)
    policy = attach_lora(_new_model(TinyWorldParams(), tokenizer), LoraParams())
    if adapter is not None:
        set_peft_model_state_dict(policy, adapter)
    metrics = dpo_update(policy, tokenizer, data, DPOParams(lr=5e-3, batch_size=4, warmup_ratio=0.0, **levers))
    assert list(policy.peft_config) == ["default"]
    return metrics, {k: v.clone() for k, v in get_peft_model_state_dict(policy).items()}


@pytest.mark.parametrize("lever", ["precompute_ref_log_probs", "completion_only_logits"])
def test_exact_levers_leave_loss_and_adapter_unchanged(lever):
    """From a trained adapter (so the base-model reference differs from the adapter's own), the update with the
    lever on gives the loss and adapter of the plain update, within float rounding."""
    tokenizer = build_tokenizer()
    data = preference_dataset([PROMPT, PROMPT + " now"] * 4, ["cat fox owl", "cat fox owl owl"] * 4,
                              ["fox cat owl", "owl"] * 4)
    _, start = _train(tokenizer, data)
    plain, plain_adapter = _train(tokenizer, data, start)
    fast, fast_adapter = _train(tokenizer, data, start, **{lever: True})
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
