"""vLLM against our samplers: greedy responses identical (float32), seeded sampling repeatable.

Two opt-in parts, each skipped unless its vLLM is there:

* the served engine (what the ``paper`` world uses): vLLM's server from a venv of its own, named by
  ``MFNB_VLLM_PYTHON``, driven from the project's venv::

      MFNB_VLLM_PYTHON=/path/vllm/bin/python .venv/bin/python -m pytest tests/models/test_vllm_engine.py

* the in-process engine (``mfnb.models.engines.vllm.VLLMEngine``, LoRA adapters per call), run from the vLLM venv::

      VLLM_CPU_KVCACHE_SPACE=1 /path/vllm/bin/python -m pytest tests/models/test_vllm_engine.py

``MFNB_VLLM_TEST_MODEL`` names a model folder to test on (SmolLM2-135M-Instruct was); by default a small
random Llama with the tiny world's tokenizer is built in a temporary folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mfnb.models import (LoraParams, ModelLoadError, SamplingParams, attach_lora, generate, load_adapter, load_model,
                         load_tokenizer)
from mfnb.models.engines import vllm as vllm_engine

needs_vllm_here = pytest.mark.skipif(not vllm_engine.available(), reason="vLLM is not importable here (opt-in: run "
                                     "this file from a venv with vllm or vllm-cpu)")
needs_vllm_python = pytest.mark.skipif(not os.environ.get("MFNB_VLLM_PYTHON"), reason="opt-in: MFNB_VLLM_PYTHON "
                                       "names the python of a venv with vLLM")

PROMPTS = ["sort these words: fox cat owl . answer:", "reverse these words: red blue green . answer:",
           "count the animals in: fox red cat . answer:", "repeat twice: owl . answer:",
           "sort these words: green red blue . answer:", "count the words in: cat owl . answer:"]
CHAT_PROMPTS = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in
                ["Write a haiku about the sea.", "Name three colors.", "What is 2 + 2?", "Say hello in French.",
                 "Give a synonym of happy.", "List two fruits."]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    if os.environ.get("MFNB_VLLM_TEST_MODEL"):
        return Path(os.environ["MFNB_VLLM_TEST_MODEL"])
    from transformers import LlamaConfig, LlamaForCausalLM

    from mfnb.worlds.tiny.task import build_tokenizer

    folder = tmp_path_factory.mktemp("vllm") / "tiny-llama"
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompts(model_dir) -> list[str]:
    return PROMPTS if not os.environ.get("MFNB_VLLM_TEST_MODEL") else CHAT_PROMPTS


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with random (non-zero) B, so that it changes the model's outputs."""
    torch.manual_seed(1)
    peft = attach_lora(load_model(model_dir, dtype="float32", show_progress=False), LoraParams(r=8, alpha=16))
    with torch.no_grad():
        for name, tensor in peft.named_parameters():
            if "lora_B" in name:
                tensor.normal_(0, 0.5 if not os.environ.get("MFNB_VLLM_TEST_MODEL") else 0.02)
    folder = tmp_path_factory.mktemp("adapter") / "lora"
    peft.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(model_dir):
    params = vllm_engine.VLLMParams(dtype="float32", max_model_len=128, lora=True, max_lora_rank=8,
                                    enforce_eager=True)
    with vllm_engine.VLLMEngine(model_dir, params) as engine:
        yield engine


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=12)


@needs_vllm_here
def test_greedy_matches_transformers(engine, model_dir, prompts):
    model, tokenizer = load_model(model_dir, dtype="float32", show_progress=False), load_tokenizer(model_dir)
    expected = generate(model, tokenizer, prompts, GREEDY, show_progress=False)
    assert engine.generate(prompts, GREEDY, show_progress=False) == expected
    assert len(set(expected)) > 1  # the prompts are answered differently: the comparison is not vacuous


@needs_vllm_here
def test_seeded_sampling_repeats_and_does_not_depend_on_the_rest_of_the_call(engine, prompts):
    first = engine.generate(prompts, SAMPLED, seed=3, show_progress=False)
    assert engine.generate(prompts, SAMPLED, seed=3, show_progress=False) == first
    assert engine.generate(prompts[:2], SAMPLED, seed=3, show_progress=False) == first[:2]
    assert engine.generate(prompts, SAMPLED, seed=4, show_progress=False) != first
    assert engine.generate([], SAMPLED) == []


@needs_vllm_here
def test_lora_adapter_per_call_matches_peft(engine, model_dir, adapter_dir, prompts):
    base = engine.generate(prompts, GREEDY, show_progress=False)
    peft = load_adapter(load_model(model_dir, dtype="float32", show_progress=False), adapter_dir, trainable=False)
    expected = generate(peft, load_tokenizer(model_dir), prompts, GREEDY, show_progress=False)
    assert expected != base
    assert engine.generate(prompts, GREEDY, adapter=adapter_dir, show_progress=False) == expected
    assert engine.generate(prompts, GREEDY, show_progress=False) == base  # the base model is untouched


@needs_vllm_here
def test_adapter_errors(tmp_path, adapter_dir):
    bare = vllm_engine.VLLMEngine.__new__(vllm_engine.VLLMEngine)  # the checks run before any engine work
    bare.params, bare._adapter_ids = vllm_engine.VLLMParams(lora=False), {}
    with pytest.raises(ModelLoadError, match="no LoRA adapter at .*adapter_config.json missing"):
        bare._lora_request(tmp_path)
    with pytest.raises(vllm_engine.VLLMError, match="without LoRA support: set engine params lora: true"):
        bare._lora_request(adapter_dir)
    bare.params = vllm_engine.VLLMParams(lora=True, max_lora_rank=4)
    with pytest.raises(vllm_engine.VLLMError, match="rank 8 > engine params max_lora_rank 4"):
        bare._lora_request(adapter_dir)


@pytest.fixture(scope="module")
def served(model_dir):
    """The served engine: vLLM's server from MFNB_VLLM_PYTHON's venv, float32, on the GPU when there is one."""
    from mfnb.models.engines.served import ServedEngine
    from mfnb.models.engines.vllm_server import VLLMServer, VLLMServerParams

    params = VLLMServerParams(python=os.environ["MFNB_VLLM_PYTHON"], dtype="float32",
                              enforce_eager=True, concurrency=8, start_timeout=900,
                              env={} if torch.cuda.is_available() else {"VLLM_CPU_KVCACHE_SPACE": "1"})
    with ServedEngine(load_tokenizer(model_dir), server=VLLMServer(model_dir, params, name="test")) as engine:
        yield engine


@needs_vllm_python
def test_served_greedy_equals_our_decode_loop(served, model_dir, prompts):
    from mfnb.models.engines.hf import sample

    expected = sample(load_model(model_dir, dtype="float32", show_progress=False), load_tokenizer(model_dir), prompts,
                      GREEDY)
    got = served.generate(prompts, GREEDY)
    assert got.texts == expected.texts and got.new_tokens == expected.new_tokens
    assert len(set(expected.texts)) > 1


@needs_vllm_python
def test_served_seeded_sampling_repeats_per_seed(served, prompts):
    first = served.generate(prompts, SAMPLED, seed=3)
    assert served.generate(prompts[::-1], SAMPLED, seed=3).texts == first.texts[::-1]
    assert served.generate(prompts[:2], SAMPLED, seed=3).texts == first.texts[:2]
    assert served.generate(prompts, SAMPLED, seed=4).texts != first.texts
    process = served.server.process
    served.close()
    assert process.poll() is not None  # stopped: its memory is free


@needs_vllm_python
def test_served_lora_student_greedy_equals_our_decode_loop(model_dir, adapter_dir, prompts, tmp_path, monkeypatch):
    """A trained model through sampling.engine kind vllm (the base served once, the adapter per request), ExPO's
    in-place scaling included, against our decode loop on a merged copy, both float32."""
    from mfnb.expo.lora import lora_extrapolation
    from mfnb.models.config import EngineParams, VLLMServerParams
    from mfnb.models.engines import close_all

    monkeypatch.setenv("MFNB_CACHE", str(tmp_path))
    tokenizer = load_tokenizer(model_dir)
    student = load_adapter(load_model(model_dir, dtype="float32", show_progress=False), adapter_dir, trainable=False)
    params = VLLMServerParams(python=os.environ["MFNB_VLLM_PYTHON"], dtype="float32", enforce_eager=True,
                              start_timeout=900, env={} if torch.cuda.is_available() else {"VLLM_CPU_KVCACHE_SPACE": "1"})
    ours = GREEDY.model_copy(update={"engine": EngineParams(kind="hf", dtype="float32")})
    served = GREEDY.model_copy(update={"engine": EngineParams(kind="vllm", vllm=params)})
    try:
        expected = generate(student, tokenizer, prompts, ours, show_progress=False)
        assert generate(student, tokenizer, prompts, served, show_progress=False) == expected
        with lora_extrapolation(student, 1.0):
            doubled = generate(student, tokenizer, prompts, ours, show_progress=False)
            assert generate(student, tokenizer, prompts, served, show_progress=False) == doubled
        assert doubled != expected and len(set(expected)) > 1
    finally:
        close_all()
