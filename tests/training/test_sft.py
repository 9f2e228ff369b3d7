"""The precision every training step shares (mfnb.training.runtime)."""
from __future__ import annotations

import pytest
import torch


def test_full_fine_tuning_updates_fp32_master_weights_and_keeps_the_model_dtype():
    """A bf16 model is trained with fp32 weights in the optimizer (AdamW on bf16 weights rounds away updates below
    2^-8 of a weight), then cast back; the parameters stay the same objects (an EWC penalty holds them)."""
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from mfnb.training import sft
    from mfnb.training.runtime import fp32_master_weights

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).to(torch.bfloat16)
    params = list(model.parameters())
    with fp32_master_weights(model):
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(a is b for a, b in zip(params, model.parameters()))
        before = params[0].detach().clone()
        params[0].data.add_(1e-4)   # an update a bf16 weight of about 1 cannot hold
        assert not torch.equal(params[0], before)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())

    seen = []

    class Dtypes(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append({p.dtype for p in model.parameters() if p.requires_grad})

    from mfnb.worlds.tiny.task import build_tokenizer

    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id)).to(torch.bfloat16)
    rows = [{"prompt": "sort these words: fox cat", "completion": " cat fox"}] * 4
    sft.train(model, tokenizer, rows, lr=1e-3, batch_size=2, seed=0, steps=2, trainer_kwargs={"callbacks": [Dtypes()]},
              max_length=32)
    assert seen and all(s == {torch.float32} for s in seen)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_the_completion_only_lm_head_leaves_an_sft_step_as_it_was():
    """SFT's loss is over completion tokens; scoring only those positions (on by default) trains the same weights
    as TRL's CPU path, which scores every position and zeroes the rest."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mfnb.training import sft_trainer
    from mfnb.worlds.tiny.task import build_tokenizer

    tokenizer = build_tokenizer()
    rows = [{"prompt": "sort these words: fox cat owl . answer:", "completion": " cat fox owl"},
            {"prompt": "sort these words: owl fox . answer:", "completion": " fox owl"}] * 3
    from datasets import Dataset

    trained, losses = [], []
    for completion_only in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             pad_token_id=tokenizer.pad_token_id))
        metrics = sft_trainer.fit(model, tokenizer, Dataset.from_list(rows), lr=1e-2, batch_size=3, seed=0, steps=3,
                                  max_length=32, completion_only_logits=completion_only)
        trained.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        losses.append(metrics["train_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert all(torch.allclose(trained[0][k], trained[1][k], atol=1e-6) for k in trained[0])
    torch.manual_seed(0)
    initial = LlamaForCausalLM(model.config).state_dict()
    assert max(float((trained[1][k] - initial[k]).abs().max()) for k in initial) > 1e-3  # the steps trained
