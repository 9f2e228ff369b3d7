"""Best-of-k experts: nested samples, choice by score, stored once, cost reported even when stored."""
from __future__ import annotations

import pytest
import torch

from mfnb.models import SamplingParams
from mfnb.models.engines.hf import HFEngine
from mfnb.worlds.shared.best_of_k import BestOfK
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

PROMPTS = ["sort these words: fox cat owl . answer:", "repeat twice: fig . answer:"]


class CountingEngine:
    """An engine wrapper that counts the rows it was asked for (and can fail on demand)."""

    def __init__(self, inner):
        self.inner, self.rows, self.fail_after = inner, 0, None
        self.name, self.dtype = inner.name, inner.dtype

    def generate(self, prompts, sampling, seed=0, *, seeds=None, show_progress=False):
        if self.fail_after is not None and self.rows >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.rows += len(prompts)
        return self.inner.generate(prompts, sampling, seed, seeds=seeds)


@pytest.fixture(scope="module")
def engine():
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = _new_model(TinyWorldParams(), tokenizer).eval()
    tokenizer.padding_side = "left"
    return HFEngine(model, tokenizer, dtype="float32", threads=1), tokenizer


def length_score(prompt, response):  # a stand-in checker: shorter is better, then fewer distinct words
    words = response.split()
    return (-len(words), -len(set(words)))


def make(engine, tmp_path, **kw):
    inner, tokenizer = engine
    counting = CountingEngine(inner)
    sampling = SamplingParams(temperature=1.5, top_p=1.0, max_new_tokens=6, batch_size=16)
    bok = BestOfK(counting, tokenizer, length_score, sampling, seed=0, model_id="tiny-random", use_chat_template=False,
                  cache_root=tmp_path, **kw)
    return bok, counting


def test_best_of_k_is_nested_chosen_by_score_and_stored_once(engine, tmp_path):
    bok, counting = make(engine, tmp_path)
    four = bok.candidates(PROMPTS, 4)
    assert counting.rows == 8 and [c.j for c in four[0]] == [0, 1, 2, 3]
    sixteen = bok.candidates(PROMPTS, 16)
    assert counting.rows == 8 + 24  # only the 12 new samples of each prompt
    assert [c.text for c in sixteen[0][:4]] == [c.text for c in four[0]]
    choices = bok.respond(PROMPTS, 16)
    assert counting.rows == 32  # answered from the store
    for prompt, choice, cands in zip(PROMPTS, choices, sixteen):
        best = max(length_score(prompt, c.text) for c in cands)
        assert choice.score == best and choice.text == cands[choice.index].text
        assert choice.index == min(c.j for c in cands if length_score(prompt, c.text) == best)  # ties: earliest
        assert choice.tokens == sum(c.tokens for c in cands) > 0 and choice.seconds > 0
    assert bok.respond(PROMPTS, 1)[0].text == sixteen[0][0].text
    again, counting2 = make(engine, tmp_path)  # a new process would see the same store
    assert [c.text for c in again.respond(PROMPTS, 16)] == [c.text for c in choices] and counting2.rows == 0


def test_a_killed_run_keeps_finished_chunks(engine, tmp_path):
    bok, counting = make(engine, tmp_path, chunk=4)
    counting.fail_after = 8
    with pytest.raises(KeyboardInterrupt):
        bok.candidates(PROMPTS, 8)
    assert len(bok.store) == 8
    counting.fail_after = None
    bok.candidates(PROMPTS, 8)
    assert counting.rows == 16 and len(bok.store) == 16


def test_store_refuses_another_configuration(engine, tmp_path):
    bok, _ = make(engine, tmp_path)
    from mfnb.worlds.shared.best_of_k import CandidateStore

    with pytest.raises(ValueError, match="was made with another configuration"):
        CandidateStore(bok.store.path, {**bok.config, "seed": 1})
