"""Trained LoRA models sampled through vLLM (mfnb.models.engines.adapters), against the fake "vLLM venv" of
tests/fake_vllm.py: what is served, which adapter each request names, adapters written once under their hash,
the shared server's lifetime, ``auto``'s choice, and the errors. The same path against real vLLM (greedy
responses equal to our engine's) is the opt-in test in tests/models/test_vllm_engine.py."""
from __future__ import annotations

import copy
import sys
import json

import httpx
import pytest
import torch
from fake_vllm import fake_vllm_python

from mfnb.models import LoraParams, ModelLoadError, SamplingParams, attach_lora, generate, load_adapter, load_model
from mfnb.models.config import EngineParams, VLLMServerParams
from mfnb.models.engines import adapters, close_all
from mfnb.models.loading import trained_engine_kind
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

PROMPTS = ["sort these words: fox cat owl . answer:", "repeat twice: fig . answer:", "repeat twice: fig . answer:"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama saved to a folder and loaded from it (as hub models are), and its tokenizer."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "tiny-llama"
    _new_model(TinyWorldParams(), tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tokenizer.padding_side = "left"
    return folder, tokenizer


def lora_model(folder, r: int = 4, seed: int = 1):
    torch.manual_seed(seed)
    model = attach_lora(load_model(folder, dtype="float32", show_progress=False), LoraParams(r=r, alpha=2 * r))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return model.eval()


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(tmp_path / "record.json"))
    yield fake_vllm_python(tmp_path / "fake-vllm")
    close_all()


def test_servable_names_what_vllm_cannot_apply(base):
    folder, _ = base
    model = lora_model(folder)
    assert adapters.servable(model) is None
    assert "not a LoRA-wrapped model" in adapters.servable(model.get_base_model())
    model.peft_config["default"].use_dora = True
    assert adapters.servable(model) == "a DoRA adapter (vLLM applies plain LoRA only)"
    assert [adapters.served_rank(r) for r in (1, 2, 8, 9, 64, 65, 320)] == [1, 8, 8, 16, 64, 128, 320]
    assert adapters.base_folder(lora_model(folder)) == str(folder)


def test_an_adapter_is_written_once_under_its_hash_and_round_trips(base, tmp_path):
    """The scaled adapter (ExPO's alpha, in place) is another file; the same adapter is not written twice."""
    from mfnb.expo.lora import lora_extrapolation

    folder, _ = base
    model = lora_model(folder)
    name, saved = adapters.save_for_serving(model, tmp_path)
    stamp = (saved / "adapter_model.safetensors").stat().st_mtime_ns
    assert adapters.save_for_serving(model, tmp_path) == (name, saved)
    assert (saved / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    with lora_extrapolation(model, 2.0):
        scaled, scaled_folder = adapters.save_for_serving(model, tmp_path)
        ids = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
        expected = model(**ids).logits
    assert scaled != name and adapters.save_for_serving(model, tmp_path)[0] == name  # back to alpha 0
    reloaded = load_adapter(load_model(folder, dtype="float32", show_progress=False), scaled_folder, trainable=False)
    assert torch.allclose(reloaded(**ids).logits, expected, atol=1e-5)


def test_vllm_serves_the_base_once_and_each_adapter_per_call(base, fake_python, tmp_path):
    from mfnb.expo.lora import lora_extrapolation

    folder, tokenizer = base
    model = lora_model(folder, r=4)
    params = VLLMServerParams(python=str(fake_python), env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    sampling = SamplingParams(temperature=0.7, max_new_tokens=4, engine=EngineParams(kind="vllm", vllm=params))
    texts = generate(model, tokenizer, PROMPTS, sampling, seed=3, show_progress=False)
    name = adapters.adapter_digest(model)
    assert all(t.endswith(f"adapter=adapter-{name}") for t in texts) and texts[1] != texts[2]  # own seeds
    record = json.loads((tmp_path / "record.json").read_text())
    argv = record["argv"]
    for flag, value in [("--model", str(folder)), ("--served-model-name", "base"), ("--max-lora-rank", "8"),
                        ("--max-loras", "1")]:
        assert argv[argv.index(flag) + 1] == value
    assert "--enable-lora" in argv and "--data-parallel-size" not in argv
    assert record["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert (tmp_path / "cache" / "served_adapters" / f"adapter-{name}" / "adapter_config.json").is_file()

    (server,) = [s for s in adapters._SERVERS.values() if not s.closed]
    pid = server.process.pid
    body = {"prompt": [5, 6], "max_tokens": 2, "seed": 0, "temperature": 0.0, "model": f"adapter-{name}"}
    assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 404  # unloaded after the call
    with lora_extrapolation(model, 1.0):  # ExPO's alpha = 1: the adapter doubled, another adapter served
        doubled = generate(model, tokenizer, PROMPTS[:1], sampling, seed=3, show_progress=False)
        scaled = adapters.adapter_digest(model)
    assert scaled != name and doubled[0].endswith(f"adapter=adapter-{scaled}")
    assert server.process.pid == pid and not server.closed  # one server for both adapters
    assert close_all(accelerator_only=True) >= 1 and server.closed  # a training step takes the GPU back
    generate(model, tokenizer, PROMPTS[:1], sampling, seed=3, show_progress=False)
    (again,) = [s for s in adapters._SERVERS.values() if not s.closed]
    assert again is not server


def test_auto_picks_vllm_on_gpus_and_full_weights_are_served_from_a_folder(base, fake_python, monkeypatch, tmp_path):
    folder, tokenizer = base
    model = lora_model(folder)
    params = VLLMServerParams(python=str(fake_python))
    auto = SamplingParams(temperature=0.0, max_new_tokens=4, engine=EngineParams(kind="auto", dtype="float32",
                                                                                 vllm=params))
    assert trained_engine_kind(model, auto.engine) == "hf"  # no GPU here
    hf = auto.model_copy(update={"engine": EngineParams(kind="hf", dtype="float32")})
    assert generate(model, tokenizer, PROMPTS, auto, show_progress=False) == \
        generate(model, tokenizer, PROMPTS, hf, show_progress=False)

    full = copy.deepcopy(model).merge_and_unload()  # fully fine-tuned weights (HbAT's stages without LoRA)
    vllm = auto.model_copy(update={"engine": EngineParams(kind="vllm", vllm=params)})
    texts = generate(full, tokenizer, PROMPTS, vllm, show_progress=False)
    assert len(texts) == 3 and all(t.startswith("len=") and "adapter=" not in t for t in texts)
    argv = json.loads((tmp_path / "record.json").read_text())["argv"]
    served = tmp_path / "cache" / "served_models"
    assert argv[argv.index("--model") + 1].startswith(str(served)) and "--enable-lora" not in argv
    assert not list(served.iterdir())  # the weights written for the server are gone

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trained_engine_kind(model, auto.engine) == "vllm"
    assert trained_engine_kind(full, auto.engine) == "vllm"
    model.peft_config["default"].use_dora = True
    assert trained_engine_kind(model, auto.engine) == "hf"  # vLLM cannot apply it: our loop
    with pytest.raises(ModelLoadError, match=r"kind 'vllm' cannot sample this model: a DoRA adapter .* use kind "
                                             r"'hf' or 'auto'"):
        adapters.generate_with_adapter(model, tokenizer, PROMPTS, vllm, params=params)


def test_data_parallel_all_counts_the_visible_gpus(monkeypatch):
    from mfnb.models.engines.vllm_server import data_parallel_size

    assert data_parallel_size(VLLMServerParams(data_parallel_size=3)) == 3
    assert data_parallel_size(VLLMServerParams(data_parallel_size="all")) == 1  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert data_parallel_size(VLLMServerParams(data_parallel_size="all", tensor_parallel_size=2)) == 4
    from mfnb.models.engines.vllm_server import VLLMServer

    command = VLLMServer("/m", VLLMServerParams(python=sys.executable, data_parallel_size="all",
                                                tensor_parallel_size=2)).command(8000)
    assert command[command.index("--data-parallel-size") + 1] == "4"  # 8 GPUs, 2 per replica


def test_a_model_folder_is_served_by_vllm_for_every_seed_then_stopped(base, fake_python, tmp_path):
    """ExPO's full-weight extrapolations are folders: sample_folder serves one with vLLM (one server, every seed)
    or, without vLLM and a GPU under auto, loads it and samples it here."""
    from mfnb.models import sample_folder
    from mfnb.models.engines import open_engines
    from mfnb.models.engines.hf import sample

    folder, tokenizer = base
    params = VLLMServerParams(python=str(fake_python))
    served = SamplingParams(temperature=0.7, max_new_tokens=4, engine=EngineParams(kind="vllm", vllm=params))
    out = sample_folder(folder, PROMPTS, served, seeds=[0, 5])
    assert sorted(out) == [0, 5] and out[0] != out[5] and all("adapter=" not in t for t in out[0])
    argv = json.loads((tmp_path / "record.json").read_text())["argv"]
    assert argv[argv.index("--model") + 1] == str(folder) and "--enable-lora" not in argv
    assert not open_engines()  # the server was stopped: its GPU memory is free for the next folder
    auto = served.model_copy(update={"temperature": 0.0, "engine": EngineParams(kind="auto", dtype="float32",
                                                                                vllm=params)})
    here = load_model(folder, dtype="float32", show_progress=False).eval()
    assert sample_folder(folder, PROMPTS, auto, seeds=[1]) == {1: sample(here, tokenizer, PROMPTS, auto).texts}
