"""Sampling and the LoRA policy vector on a CUDA device; skipped where there is none.

Written to run on a GPU node whose environment has torch, transformers and peft but neither TRL nor datasets:
nothing here imports them (the last test, which runs everywhere, checks it). The model is a tiny random Llama
with the tiny world's tokenizer, in fp32: on CUDA its samples need not equal the CPU's (other kernels, other
rounding), but they repeat per seed, and greedy decoding picks the same tokens as on the CPU.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
PROMPTS = ["sort these words: fox cat owl . answer:", "repeat twice: fig . answer:",
           "count the animals in: fox red cat plum elk . answer:", "reverse these words: owl elk . answer:",
           "sort these words: fox cat owl . answer:"]


def tiny_model():
    """A random 2-layer Llama (wide initialisation: clear argmax margins) and the tiny world's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mfnb.worlds.tiny.task import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


def load_backend():
    """``mfnb/multifidelity/backend.py`` alone: the package's ``__init__`` imports the trainers (TRL, datasets)."""
    name = "mfnb_policy_backend_alone"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "mfnb" / "multifidelity" / "backend.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def lora_policy_vector(model, dtype: torch.dtype = torch.float32):
    """PolicyBackend.policy_vector of ``model`` wrapped with a LoRA adapter of seeded random weights (B non-zero),
    in ``dtype`` (peft would keep them in fp32 on a bf16 model; numpy has no bf16)."""
    from mfnb.models import LoraParams, attach_lora

    backend = load_backend()
    policy = attach_lora(model, LoraParams(r=4, alpha=8))
    cpu_draws = torch.Generator().manual_seed(1)  # the same adapter values on every device
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.data = (torch.randn(p.shape, generator=cpu_draws) * 0.1).to(p.device, dtype)
    bare = backend.PolicyBackend.__new__(backend.PolicyBackend)  # the vector needs only the policy
    bare.policy = policy
    return bare.policy_vector(), policy


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@needs_cuda
def test_sampling_on_cuda_repeats_per_seed_with_top_k_and_top_p(tiny):
    from mfnb.models import SamplingParams
    from mfnb.models.engines.hf import HFEngine, sample

    model, tokenizer = tiny
    cuda = __import__("copy").deepcopy(model).to("cuda")
    seen = []
    hook = cuda.register_forward_pre_hook(lambda m, args, kwargs: seen.extend(
        v.device.type for v in kwargs.values() if isinstance(v, torch.Tensor)), with_kwargs=True)
    for sampling in (SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=8, batch_size=3),
                     SamplingParams(temperature=1.5, top_k=0, top_p=0.999, max_new_tokens=8, batch_size=5),
                     SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8, batch_size=2)):
        a = sample(cuda, tokenizer, PROMPTS, sampling, seed=3)
        assert len(a.texts) == len(PROMPTS) and all(1 <= n <= 8 for n in a.new_tokens)
        assert sample(cuda, tokenizer, PROMPTS, sampling, seed=3).texts == a.texts
        assert sample(cuda, tokenizer, PROMPTS, sampling, seed=4).texts != a.texts
    hook.remove()
    assert seen and set(seen) == {"cuda"}  # ids, mask and positions were all on the GPU
    engine = HFEngine(cuda, tokenizer, dtype="bfloat16")  # a bf16 copy, on the model's device
    assert engine.copied and next(engine.model.parameters()).device.type == "cuda"
    assert len(engine.generate(PROMPTS, SamplingParams(temperature=0.7, max_new_tokens=4), seed=1).texts) == 5
    engine.close()
    assert engine.closed


@needs_cuda
def test_greedy_on_cuda_equals_greedy_on_cpu_in_fp32(tiny):
    from mfnb.models import SamplingParams
    from mfnb.models.engines.hf import sample

    model, tokenizer = tiny
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10, batch_size=4)
    on_cpu = sample(model, tokenizer, PROMPTS, greedy)
    on_cuda = sample(__import__("copy").deepcopy(model).to("cuda"), tokenizer, PROMPTS, greedy)
    assert on_cuda.texts == on_cpu.texts and on_cuda.new_tokens == on_cpu.new_tokens
    assert len(set(on_cpu.texts)) > 1


@needs_cuda
def test_policy_vector_of_a_lora_model_on_cuda(tiny):
    import copy

    model, _ = tiny
    for dtype in (torch.float32, torch.bfloat16):
        vector, policy = lora_policy_vector(copy.deepcopy(model).to("cuda", dtype), dtype)
        lora = [p for n, p in policy.named_parameters() if "lora_" in n]
        assert all(p.is_cuda and p.dtype == dtype for p in lora)
        assert vector.dtype.name == "float32" and vector.size == sum(p.numel() for p in lora)
        on_cpu, _ = lora_policy_vector(copy.deepcopy(model).to("cpu", dtype), dtype)
        assert (vector == on_cpu).all()  # the same seeded adapter, read back from the GPU exactly


def test_this_file_runs_without_trl_and_datasets():
    """What the GPU node lacks, blocked: this file, the backend and a CPU policy vector still import and run."""
    script = f"""
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("trl", "datasets"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("device_tests", {str(Path(__file__).resolve())!r})
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
model, tokenizer = tests.tiny_model()
vector, _ = tests.lora_policy_vector(model)
assert vector.size > 0 and not any(m.split(".")[0] in ("trl", "datasets") for m in sys.modules)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
