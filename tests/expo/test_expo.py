"""ExPO extrapolation: exact ends, dtypes, sharding, LoRA equivalence, every refusal, crash safety."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mfnb import expo
from mfnb.expo import (ExpoError, extrapolate, extrapolate_state_dict, extrapolation, lora_extrapolation,
                       scale_lora_adapter)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


# ------------------------------------------------------------------------------------------------ helpers


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval()


def save_model(model, folder: Path, shard: str | None = None) -> Path:
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def perturbed(model, seed: int, scale: float = 0.05):
    """An "aligned" copy: the SFT weights plus a small random update."""
    torch.manual_seed(seed)
    sd = {k: (v + scale * torch.randn_like(v)) if v.is_floating_point() else v.clone()
          for k, v in model.state_dict().items()}
    twin = type(model)(model.config).eval()
    twin.load_state_dict(sd)
    return twin


def logits(model) -> torch.Tensor:
    ids = torch.arange(12).reshape(2, 6) % model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=ids).logits


def folder_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def mixed_pair(tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    """Single-file weak/strong folders with fp32, fp16 and bf16 tensors, a scalar and an int buffer."""
    torch.manual_seed(1)
    weak = {"a.f32": torch.randn(5, 3), "b.f16": torch.randn(4, 2).half(), "c.bf16": torch.randn(7).bfloat16(),
            "d.scalar": torch.tensor(0.5), "e.int": torch.arange(6).reshape(2, 3)}
    strong = {k: (v.float() + torch.randn(v.shape)).to(v.dtype) if v.is_floating_point() else v * 10
              for k, v in weak.items()}
    for name, sd in (("weak", weak), ("strong", strong)):
        (tmp_path / name).mkdir()
        save_file(sd, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "toy", "architectures": ["Toy"]}))
    return tmp_path / "weak", tmp_path / "strong", weak, strong


# ------------------------------------------------------------------------------------------------ exactness


def test_hand_computed_2x2():
    weak = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    strong = {"w": torch.tensor([[2.0, 2.0], [5.0, 0.0]])}
    out = extrapolate_state_dict(weak, strong, 0.5)
    assert torch.equal(out["w"], torch.tensor([[2.5, 2.0], [6.0, -2.0]]))
    assert torch.equal(weak["w"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # inputs untouched


def test_ends_exact_and_dtypes_preserved(tmp_path):
    weak_dir, strong_dir, weak, strong = mixed_pair(tmp_path)
    at0 = load_file(extrapolate(weak_dir, strong_dir, 0.0, tmp_path / "a0", progress=False) / "model.safetensors")
    at_m1 = load_file(extrapolate(weak_dir, strong_dir, -1.0, tmp_path / "am1", progress=False) / "model.safetensors")
    at_half = load_file(extrapolate(weak_dir, strong_dir, 0.3, tmp_path / "a3", progress=False) / "model.safetensors")
    expected = extrapolate_state_dict(weak, strong, 0.3)
    for name in strong:
        # alpha 0: bit for bit the strong tensor, whatever its dtype.
        assert at0[name].dtype == strong[name].dtype
        assert at0[name].reshape(-1).view(torch.uint8).equal(strong[name].reshape(-1).view(torch.uint8)), name
        for result in (at_m1, at_half):
            assert result[name].dtype == strong[name].dtype and result[name].shape == strong[name].shape
        if strong[name].is_floating_point():
            assert torch.equal(at_m1[name], weak[name]), name  # exact in every dtype, bf16 included
            assert torch.equal(at_half[name], expected[name]), name  # file path == in-memory path
        else:
            assert torch.equal(at_m1[name], strong[name]) and torch.equal(at_half[name], strong[name])
    reference = (strong["c.bf16"].float() * 1.3 - 0.3 * weak["c.bf16"].float()).bfloat16()
    assert (at_half["c.bf16"].float() - reference.float()).abs().max() <= 0.0079  # one bf16 ulp at |x| < 4


def test_state_dict_ties_and_int_buffers():
    emb_w, emb_s = torch.randn(4, 3), torch.randn(4, 3)
    weak = {"emb": emb_w, "head": emb_w, "pos": torch.arange(4)}
    strong = {"emb": emb_s, "head": emb_s, "pos": torch.arange(4) + 1}
    out = extrapolate_state_dict(weak, strong, 1.0)
    assert out["head"] is out["emb"]  # still tied, extrapolated once
    assert torch.allclose(out["emb"], 2 * emb_s - emb_w)
    assert torch.equal(out["pos"], strong["pos"]) and out["pos"].data_ptr() != strong["pos"].data_ptr()


def test_large_tensor_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(extrapolation, "CHUNK_ELEMENTS", 16)  # force the chunked path on a tiny tensor
    weak_dir, strong_dir, weak, strong = mixed_pair(tmp_path)
    result = load_file(extrapolate(weak_dir, strong_dir, 0.7, tmp_path / "out", progress=False) / "model.safetensors")
    expected = extrapolate_state_dict(weak, strong, 0.7)
    for name in strong:
        assert torch.equal(result[name], expected[name]), name


# ------------------------------------------------------------------------------------------------ sharding


def test_sharded_llama_roundtrip(tmp_path):
    sft = tiny_llama()
    aligned = perturbed(sft, seed=1)
    weak_dir = save_model(sft, tmp_path / "sft", shard="60KB")  # a different sharding from strong's
    strong_dir = save_model(aligned, tmp_path / "aligned", shard="25KB")
    (strong_dir / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7}))
    out = extrapolate(weak_dir, strong_dir, 0.5, tmp_path / "expo", progress=False)

    index = json.loads((strong_dir / expo.INDEX_FILE).read_text())
    weak_index = json.loads((weak_dir / expo.INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > len(set(weak_index["weight_map"].values())) > 1
    assert json.loads((out / expo.INDEX_FILE).read_text()) == index
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in strong_dir.glob("*.safetensors"))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (strong_dir / name).read_bytes()

    model = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    reference = tiny_llama()
    reference.load_state_dict(extrapolate_state_dict(sft.state_dict(), aligned.state_dict(), 0.5))
    assert torch.equal(logits(model), logits(reference))


# ------------------------------------------------------------------------------------------------ LoRA


def test_lora_paths_equal_full_extrapolation(tmp_path):
    sft = tiny_llama()
    sft_dir = save_model(sft, tmp_path / "sft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(tiny_llama(), config)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # non-zero B: a real delta
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    merged = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter").merge_and_unload()
    aligned_dir = save_model(merged, tmp_path / "aligned")
    alpha = 0.6

    full = transformers.LlamaForCausalLM.from_pretrained(
        extrapolate(sft_dir, aligned_dir, alpha, tmp_path / "expo", progress=False)).eval()
    scaled_dir = scale_lora_adapter(tmp_path / "adapter", 1 + alpha, tmp_path / "adapter_x")
    via_adapter = peft.PeftModel.from_pretrained(tiny_llama(), scaled_dir).merge_and_unload().eval()
    for name, w in full.state_dict().items():
        assert torch.allclose(w, via_adapter.state_dict()[name], atol=1e-6, rtol=1e-5), name
    assert torch.allclose(logits(full), logits(via_adapter), atol=1e-5)

    base_logits = logits(model)
    with lora_extrapolation(model, alpha):
        assert torch.allclose(logits(model), logits(full), atol=1e-5)
    assert torch.equal(logits(model), base_logits)  # scaling restored exactly
    assert not torch.allclose(base_logits, logits(full), atol=1e-3)  # the comparison has teeth

    before = {n: p.clone() for n, p in model.named_parameters()}
    scale_lora_adapter(model, 1 + alpha, tmp_path / "adapter_y")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # model left as it was
    saved = load_file(tmp_path / "adapter_y" / "adapter_model.safetensors")
    assert saved.keys() == load_file(scaled_dir / "adapter_model.safetensors").keys()


def test_lora_refusals(tmp_path):
    dora = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ExpoError, match="DoRA"):
        with lora_extrapolation(dora, 0.5):
            pass
    plain = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ExpoError, match="alpha"):
        with lora_extrapolation(plain, float("nan")):
            pass
    plain.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ExpoError, match="needs an output folder"):
        scale_lora_adapter(tmp_path / "adapter", 2.0)


# ------------------------------------------------------------------------------------------------ refusals


def test_mismatches_name_the_first_offender(tmp_path):
    weak_dir, strong_dir, weak, strong = mixed_pair(tmp_path)

    def variant(name: str, sd: dict, config: dict | None = None) -> Path:
        (tmp_path / name).mkdir()
        save_file(sd, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
        (tmp_path / name / "config.json").write_text(json.dumps(config or {"model_type": "toy"}))
        return tmp_path / name

    other_arch = variant("arch", weak, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ExpoError, match="architectures|model_type"):
        extrapolate(other_arch, strong_dir, 0.5, tmp_path / "o1", progress=False)
    reshaped = variant("shape", {**weak, "b.f16": torch.zeros(2, 4).half()})
    with pytest.raises(ExpoError, match=r"'b\.f16' has shape \(2, 4\) in weak but \(4, 2\)"):
        extrapolate(reshaped, strong_dir, 0.5, tmp_path / "o2", progress=False)
    missing = variant("missing", {k: v for k, v in weak.items() if k != "c.bf16"})
    with pytest.raises(ExpoError, match=r"'c\.bf16' is in strong but not in weak"):
        extrapolate(missing, strong_dir, 0.5, tmp_path / "o3", progress=False)
    with pytest.raises(ExpoError, match="'b.f16' has shape"):
        extrapolate_state_dict({**weak, "b.f16": torch.zeros(8)}, strong, 0.5)
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_missing_shard(tmp_path):
    sft = tiny_llama()
    weak_dir = save_model(sft, tmp_path / "sft", shard="25KB")
    strong_dir = save_model(perturbed(sft, 1), tmp_path / "aligned", shard="25KB")
    shard = sorted(set(json.loads((weak_dir / expo.INDEX_FILE).read_text())["weight_map"].values()))[1]
    (weak_dir / shard).unlink()
    with pytest.raises(ExpoError, match=f"missing shard file '{shard}' of the weak model"):
        extrapolate(weak_dir, strong_dir, 0.5, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -math.inf, "big"])
def test_non_finite_alpha(tmp_path, alpha):
    weak_dir, strong_dir, weak, strong = mixed_pair(tmp_path)
    with pytest.raises(ExpoError, match="alpha must be a finite number"):
        extrapolate(weak_dir, strong_dir, alpha, tmp_path / "out", progress=False)
    with pytest.raises(ExpoError, match="alpha must be a finite number"):
        extrapolate_state_dict(weak, strong, alpha)


def test_output_paths_refused(tmp_path):
    weak_dir, strong_dir, _, _ = mixed_pair(tmp_path)
    before = folder_hash(tmp_path)
    for out, message in [(strong_dir, "is \\(inside\\) the input folder"), (weak_dir / "x", "is \\(inside\\)"),
                         (tmp_path, "contains the input folder")]:
        with pytest.raises(ExpoError, match=f"output folder '{out}' {message}"):
            extrapolate(weak_dir, strong_dir, 0.5, out, progress=False)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExpoError, match="already exists"):
        extrapolate(weak_dir, strong_dir, 0.5, tmp_path / "taken", progress=False)
    assert extrapolate(weak_dir, strong_dir, 0.5, tmp_path / "taken", overwrite=True, progress=False).is_dir()
    assert (tmp_path / "taken" / "model.safetensors").is_file()
    after = folder_hash(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("taken")} == before


# ------------------------------------------------------------------------------------------------ safety


def test_inputs_unchanged(tmp_path):
    sft = tiny_llama()
    weak_dir = save_model(sft, tmp_path / "sft", shard="25KB")
    strong_dir = save_model(perturbed(sft, 1), tmp_path / "aligned")
    before = folder_hash(weak_dir), folder_hash(strong_dir)
    extrapolate(weak_dir, strong_dir, 2.0, tmp_path / "out", progress=False)
    assert (folder_hash(weak_dir), folder_hash(strong_dir)) == before


def test_killed_run_leaves_no_output(tmp_path, monkeypatch):
    sft = tiny_llama()
    weak_dir = save_model(sft, tmp_path / "sft", shard="25KB")
    strong_dir = save_model(perturbed(sft, 1), tmp_path / "aligned", shard="25KB")
    calls = {"n": 0}
    real_write = extrapolation._ShardWriter.write

    def dying_write(self, chunk):
        calls["n"] += 1
        if calls["n"] == 15:  # mid-way through the second shard
            raise KeyboardInterrupt("killed")
        real_write(self, chunk)

    monkeypatch.setattr(extrapolation._ShardWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        extrapolate(weak_dir, strong_dir, 0.5, tmp_path / "out", progress=False)
    assert calls["n"] == 15
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned", "sft"]  # no leftovers either


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_lerp_is_float32_arithmetic(dtype):
    """The fast path relies on reduced-precision lerp computing in float32: check it on this platform."""
    torch.manual_seed(3)
    weak = torch.randn(4096).to(dtype)
    strong = (weak.float() + 0.01 * torch.randn(4096)).to(dtype)
    for alpha in (-1.0, -0.7, -0.2, 0.3, 1.0, 5.0):
        reference = torch.lerp(weak.float(), strong.float(), 1 + alpha).to(dtype)
        assert torch.equal(extrapolation._combine(strong, weak, alpha), reference), alpha
