"""Model loading, LoRA adapters and seeded batched generation."""
from __future__ import annotations

import pytest
import torch

from mfnb.models import (LoraParams, ModelLoadError, SamplingParams, attach_lora, generate, load_adapter, load_model,
                         load_tokenizer, save_adapter)
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

PROMPTS = ["sort these words: fox cat owl . answer:", "repeat twice: fig . answer:",
           "count the animals in: fox red cat plum elk . answer:"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    model = _new_model(TinyWorldParams(), tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_missing_local_folder_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=f"model folder not found: {tmp_path}/absent"):
        load_model(tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="model folder not found: ./no/such/model"):
        load_tokenizer("./no/such/model")


def test_missing_gguf_file_is_named(model_dir):
    with pytest.raises(ModelLoadError, match="GGUF file not found: .*weights.Q4_1.gguf"):
        load_model(model_dir, gguf_file="weights.Q4_1.gguf")


def test_unreachable_hub_name_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import: else 46 s of retries
    with pytest.raises(ModelLoadError, match="cannot load model from hub name .nobody/no-such-model-xyz."):
        load_model("nobody/no-such-model-xyz")


def test_tokenizer_pads_left(model_dir):
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<pad>"


def test_generation_is_seeded_batch_independent_and_leaves_global_rng(model_dir):
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=2)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = generate(model, tokenizer, PROMPTS, sampling, seed=7, show_progress=False)
    assert torch.equal(torch.rand(1), expected_next)  # global RNG untouched
    assert first == generate(model, tokenizer, PROMPTS, sampling, seed=7, show_progress=False)
    assert len(first) == 3 and all(isinstance(r, str) for r in first)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6, batch_size=1)
    one_by_one = generate(model, tokenizer, PROMPTS, greedy, show_progress=False)
    batched = generate(model, tokenizer, PROMPTS, greedy.model_copy(update={"batch_size": 3}), show_progress=False)
    assert one_by_one == batched  # left padding does not change greedy answers


def test_generation_refuses_right_padding(model_dir):
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match="left-padding tokenizer"):
        generate(model, tokenizer, PROMPTS, SamplingParams(), show_progress=False)


def test_lora_adapter_round_trip(model_dir, tmp_path):
    tokenizer = load_tokenizer(model_dir)
    policy = attach_lora(load_model(model_dir), LoraParams(r=4, alpha=8))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    save_adapter(policy, tmp_path / "adapter")
    restored = load_adapter(load_model(model_dir), tmp_path / "adapter", trainable=False)
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(policy(ids).logits, restored(ids).logits, atol=1e-5)
        assert not torch.allclose(load_model(model_dir)(ids).logits, restored(ids).logits, atol=1e-3)
    with pytest.raises(ModelLoadError, match="no LoRA adapter at"):
        load_adapter(load_model(model_dir), tmp_path)


def test_sampling_params_validate():
    from mfnb.core.params import ParamsError

    with pytest.raises(ParamsError, match="'top_p'"):
        SamplingParams.validate_mapping({"top_p": 1.5})
