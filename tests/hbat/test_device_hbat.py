"""HbAT on a CUDA device (skipped without one): the EWC penalty built on the CPU follows its model to the GPU (as
in mfnb.training.launch's training processes, where DDP / DeepSpeed move the model after the penalty is built),
Eq. 7's change statistics stream a host-memory "before" copy to the GPU a tensor at a time, the Fisher's
accumulators live beside the parameters, and Algorithm 1 runs with the model on the GPU."""
from __future__ import annotations

import pytest
import torch

from mfnb import hbat

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("elementwise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_penalty_built_on_cpu_follows_the_model_to_cuda(elementwise, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    names = ["0.weight", "0.bias", "1.weight"]
    importance = ({n: torch.rand(p.shape) for n, p in model.named_parameters() if n in names} if elementwise
                  else {"0.weight": 2.0, "0.bias": 0.5, "1.weight": 1.0})
    ewc = hbat.EWCParams(lam=0.5, fmax=3.0, importance="fisher" if elementwise else "changes")
    penalty = hbat.EWCPenalty.from_model(model, importance, ewc)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.to("cuda", dtype)
    assert penalty().item() == 0.0
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(0.5)
    value = penalty()
    assert value.device.type == "cuda"
    value.backward()
    assert all(a.device.type == "cuda" and a.dtype == dtype for a in penalty.anchors)
    if elementwise:
        assert all(c.device.type == "cuda" and c.dtype == dtype for c in penalty.coefs)
    else:
        assert penalty.coef_tensor.device.type == "cuda"
    coef = {n: ewc.coefficient(importance[n]) for n in names}
    moved = {n: params[n].detach().cpu().double() - anchors[n].to(dtype).double() for n in names}
    expected = sum(0.5 * float((coef[n] * moved[n] ** 2).sum()) for n in names)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert value.item() == pytest.approx(expected, rel=tol)
    for n in names:
        grad = params[n].grad
        assert grad.device.type == "cuda" and grad.dtype == dtype
        torch.testing.assert_close(grad.cpu().double(), (coef[n] * moved[n]).double(), rtol=tol, atol=1e-3)


def test_change_sums_stream_a_host_copy_to_the_gpu():
    """The "before" copy in host memory, the model on the GPU: the same sums as on the CPU, and the GPU's peak
    above the model is one tensor's temporaries, not the ~3 float32 models of the former formula."""
    gen = torch.Generator().manual_seed(0)
    after_cpu = {f"layers.{i}.weight": torch.randn(2048, 2048, generator=gen).to(torch.bfloat16) for i in range(16)}
    before = hbat.snapshot(after_cpu, device="cpu")
    with torch.no_grad():
        for v in after_cpu.values():
            v.add_(torch.full_like(v, 1e-2))
    expected = hbat.squared_change_sums(before, after_cpu)
    after = {k: v.cuda() for k, v in after_cpu.items()}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    sums = hbat.squared_change_sums(before, after)
    extra = torch.cuda.max_memory_allocated() - start
    for k in expected:
        assert sums[k][1] == expected[k][1] and sums[k][0] == pytest.approx(expected[k][0], rel=1e-9)
    one_tensor_fp32 = 2048 * 2048 * 4
    assert extra <= 6 * one_tensor_fp32, extra / 2**20     # the whole-model formula: 48 such tensors
    assert all(v.device.type == "cpu" for v in before.values())


def _micro():
    from transformers import LlamaConfig, LlamaForCausalLM

    from mfnb.worlds.tiny.task import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config), tokenizer


def test_fisher_on_cuda_equals_the_cpu_estimate():
    from mfnb.hbat.fisher import empirical_fisher

    model, tokenizer = _micro()
    rows = [{"prompt": f"sort these words: w{i} . answer:", "completion": " x y" * (1 + i % 2)} for i in range(4)]
    on_cpu = empirical_fisher(model, tokenizer, rows, "sft", batch_size=1)
    model.cuda()
    for batch_size in (1, 3):
        on_gpu = empirical_fisher(model, tokenizer, rows, "sft", batch_size=batch_size)
        for name, value in on_cpu.items():
            assert on_gpu[name].device.type == "cuda"
            torch.testing.assert_close(on_gpu[name].cpu(), value, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("method", ["HbAT", "HbAT w/ original EWC"])
def test_algorithm_1_with_the_model_on_cuda(method):
    from mfnb.worlds.tiny.conflict import ConflictParams, ConflictWorld
    from mfnb.worlds.tiny.world import TinyWorldParams, split_prompts

    model, tokenizer = _micro()
    model.cuda()
    world = ConflictWorld(ConflictParams(n_sft=8, n_pref=8))
    prompts = split_prompts(TinyWorldParams(n_train=40, n_validation=2, n_test=2))["train"]
    sft_prompts, pref_prompts = world.split_prompts(prompts, 0)
    params = hbat.for_method(hbat.HbatParams.validate_mapping({
        "n_splits": 2, "sft": {"lr": 1e-2, "batch_size": 2, "epochs": 2.0, "warmup_ratio": 0.0},
        "dpo": {"lr": 1e-2, "batch_size": 2, "epochs": 2.0, "warmup_ratio": 0.0},
        "ewc": {"fmax": 10.0, "lam": 1.0, "fisher_batch": 1},
        "select_by": "last"}), method)
    run = hbat.run_hbat(model, tokenizer, world.sft_rows(sft_prompts), world.preference_rows(pref_prompts, 0),
                        params, seed=0)
    assert [s.constraint for s in run.stages] == ["none", "ewc", "ewc", "ewc"]
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(any(s > 0 for s, _ in stage.change_sums.values()) for stage in run.stages)   # every stage trained
