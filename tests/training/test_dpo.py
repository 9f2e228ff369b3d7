"""LoRA DPO with TRL: data building, the reference policy, and an update that moves the margin."""
from __future__ import annotations

import pytest
import torch

from mfnb.models import LoraParams, attach_lora
from mfnb.training.config import DPOParams
from mfnb.training.dpo import dpo_update, preference_dataset
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

PROMPT = "sort these words: fox cat owl . answer:"


def test_preference_dataset_shapes_and_identical_pairs():
    ds = preference_dataset([PROMPT, PROMPT], ["cat fox owl", "x"], ["fox cat owl", "x"])
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 2
    assert ds[0]["chosen"] == " cat fox owl"
    assert len(preference_dataset([PROMPT, PROMPT], ["a", "x"], ["b", "x"], drop_identical=True)) == 1
    assert len(preference_dataset([PROMPT], ["x"], ["x"], drop_identical=True)) == 0
    with pytest.raises(ValueError, match="differ in length: 2, 1, 1"):
        preference_dataset([PROMPT, PROMPT], ["a"], ["b"])


def test_dpo_params_defaults_are_the_papers():
    params = DPOParams()
    assert (params.lr, params.scheduler, params.warmup_ratio, params.loss_type) == (5e-6, "cosine", 0.1, ["sigmoid"])


def _logp(model, tokenizer, prompt, completion):
    ids = tokenizer(prompt + " " + completion, return_tensors="pt").input_ids
    n_prompt = len(tokenizer(prompt).input_ids)
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    return logits[torch.arange(len(targets)), targets][n_prompt - 1:].sum().item()


@pytest.mark.parametrize("reference", ["base", "previous"])
def test_dpo_update_prefers_chosen_and_cleans_up(reference):
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    policy = attach_lora(_new_model(TinyWorldParams(), tokenizer), LoraParams())
    data = preference_dataset([PROMPT] * 32, ["cat fox owl"] * 32, ["fox cat owl"] * 32)
    margin = lambda: _logp(policy, tokenizer, PROMPT, "cat fox owl") - _logp(policy, tokenizer, PROMPT, "fox cat owl")
    before = margin()
    params = DPOParams(lr=5e-3, batch_size=8, epochs=2, reference=reference)
    metrics = dpo_update(policy, tokenizer, data, params, seed=0)
    assert margin() > before + 1.0
    assert metrics["train_loss"] < 0.69
    assert list(policy.peft_config) == ["default"]  # TRL's temporary "ref" adapter is gone
    assert tokenizer.padding_side == "left"


def test_empty_dataset_is_a_no_op():
    tokenizer = build_tokenizer()
    policy = attach_lora(_new_model(TinyWorldParams(), tokenizer), LoraParams())
    assert dpo_update(policy, tokenizer, preference_dataset([], [], []), DPOParams()) == {"skipped": True}


@pytest.mark.parametrize("reference, expect_zero", [("previous", True), ("base", False)])
def test_reference_policy_is_base_or_previous_adapter(reference, expect_zero):
    """After a first update the adapter is non-zero. With lr ~ 0 a second update leaves the policy as it
    is, so its logged implicit rewards are ~0 exactly when the reference is the previous adapter, and
    non-zero when the reference is the adapter-disabled base model."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    policy = attach_lora(_new_model(TinyWorldParams(), tokenizer), LoraParams())
    data = preference_dataset([PROMPT] * 16, ["cat fox owl"] * 16, ["fox cat owl"] * 16)
    dpo_update(policy, tokenizer, data, DPOParams(lr=5e-3, batch_size=8, epochs=2), seed=0)
    metrics = dpo_update(policy, tokenizer, data, DPOParams(lr=1e-12, batch_size=8, reference=reference,
                                                             warmup_ratio=0.0), seed=1)
    assert (abs(metrics["rewards/chosen"]) < 1e-4) == expect_zero, metrics["rewards/chosen"]



def test_gradient_checkpointing_is_a_parameter_that_leaves_the_result_unchanged():
    """Recomputing activations in the backward changes memory, not the update (no dropout here); off, it is left out
    of the params' dump, so cache keys made before the field existed stay the same."""
    from peft import get_peft_model_state_dict

    tokenizer = build_tokenizer()
    data = preference_dataset([PROMPT] * 8, ["cat fox owl"] * 8, ["fox cat owl"] * 8)
    adapters = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        policy = attach_lora(_new_model(TinyWorldParams(), tokenizer), LoraParams())
        dpo_update(policy, tokenizer, data, DPOParams(lr=5e-3, batch_size=4, gradient_checkpointing=checkpointing))
        adapters.append(get_peft_model_state_dict(policy))
    assert all(torch.allclose(adapters[0][k], adapters[1][k], atol=1e-6) for k in adapters[0])
    assert "gradient_checkpointing" not in DPOParams().model_dump()
    assert DPOParams(gradient_checkpointing=True).model_dump()["gradient_checkpointing"] is True
