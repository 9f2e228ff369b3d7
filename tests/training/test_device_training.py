"""Training-side device checks that run where CUDA exists (make gpu-check) and skip elsewhere: the notebook's models
leave the GPU while launched workers train, and full fine-tuning keeps fp32 master weights on a bf16 model."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))


def test_off_accelerator_frees_the_gpu_while_training_processes_run():
    from mfnb.models import off_accelerator, resident

    model, scorer = _tiny_llama().to("cuda"), resident(_tiny_llama().to("cuda"))
    with off_accelerator(model):
        assert all(p.device.type == "cpu" for m in (model, scorer) for p in m.parameters())
    assert all(p.device.type == "cuda" for m in (model, scorer) for p in m.parameters())


def test_fp32_master_weights_on_a_bf16_model_on_the_gpu():
    from mfnb.training.runtime import fp32_master_weights, mixed_precision

    model = _tiny_llama().to("cuda", torch.bfloat16)
    first = next(model.parameters())
    with fp32_master_weights(model):
        assert first.dtype == torch.float32 and first.device.type == "cuda"
    assert first.dtype == torch.bfloat16 and first.device.type == "cuda"
    assert mixed_precision() == torch.cuda.is_bf16_supported()
