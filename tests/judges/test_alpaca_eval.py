"""AlpacaEval 2.0 through the alpaca_eval package: mfnb's own length-controlled win rate against alpaca_eval's
minimal GLM on the same annotations, the local instruction-difficulty file (never fetched), the weighted annotator
against the rehearsal's stub endpoint (cache, key handling) and the model-output files."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from mfnb.expo.report import length_controlled_win_rate
from mfnb.judges.alpaca_eval import (DIFFICULTY_FILE, AlpacaEvalError, AlpacaEvalJudge, AlpacaEvalSpec,
                                     annotation_frame, difficulty_path, length_controlled, local_hub_files,
                                     require_alpaca_eval, write_model_outputs)
from mfnb.rehearsal.endpoint import JudgeEndpoint, stub_answer

try:
    require_alpaca_eval()
except AlpacaEvalError as missing:  # the test extra installs it (make venv)
    pytest.skip(str(missing), allow_module_level=True)
KEY_ENV = "MFNB_TEST_ALPACA_EVAL_KEY"
KEY = "sk-test-alpaca-eval-0123456789abcdef"


@pytest.fixture
def difficulty(tmp_path):
    """A stand-in df_gamed.csv (its columns; a difficulty of 0 for each of the 805 instructions)."""
    file = tmp_path / DIFFICULTY_FILE
    pd.DataFrame({"model": "stand-in", "index": range(805), "instruction_difficulty": 0.0}).to_csv(file, index=False)
    return file


def _annotations(n: int = 300, seed: int = 1):
    """Fractional preferences that depend on the length difference (through tanh of its z-score), lengths in
    characters."""
    rng = np.random.default_rng(seed)
    base_len, cand_len = rng.integers(50, 400, n), rng.integers(20, 900, n)
    diff = cand_len - base_len
    p = 1 / (1 + np.exp(-(-0.8 + 1.5 * np.tanh(diff / diff.std()))))
    prefs = np.clip(p + rng.normal(0, 0.1, n), 0, 1)
    return [f"instruction {i}" for i in range(n)], ["x" * int(c) for c in cand_len], ["y" * int(b) for b in base_len], prefs


def test_our_lc_win_rate_matches_alpaca_evals_minimal_glm_on_the_same_annotations(difficulty):
    instructions, outputs, baselines, prefs = _annotations()
    theirs = length_controlled(instructions, outputs, baselines, prefs, difficulty_file=difficulty,
                               glm="length_controlled_minimal")
    ours = length_controlled_win_rate(prefs, [len(o) for o in outputs], [len(b) for b in baselines])
    assert theirs["n"] == ours["n"] == 300
    assert theirs["win_rate"] == pytest.approx(ours["win_rate"], abs=1e-12)
    # same model (a logistic fit on tanh of the standardised length difference, predicted at 0); they differ in
    # the standard deviation's ddof and in the penalty (their cross-validated L1, our 1e-3 ridge)
    assert theirs["lc_win_rate"] == pytest.approx(ours["lc_win_rate"], abs=5e-4)
    assert ours["lc_win_rate"] < ours["win_rate"] - 0.1  # the longer answers' advantage is removed by both


def test_the_difficulty_file_is_local_or_an_error_saying_how_to_get_it(tmp_path, difficulty):
    with pytest.raises(AlpacaEvalError, match=r"^alpaca_eval.difficulty_file: not set\. .*tatsu-lab/alpaca_eval's "
                                              r"df_gamed.csv.*hf download tatsu-lab/alpaca_eval df_gamed.csv "
                                              r"--repo-type dataset"):
        difficulty_path(None)
    with pytest.raises(AlpacaEvalError, match=r"^x.difficulty_file: '.*nowhere' does not exist"):
        difficulty_path(tmp_path / "nowhere", "x.difficulty_file")
    assert difficulty_path(difficulty.parent) == difficulty
    from alpaca_eval.metrics import glm_winrate

    with local_hub_files(difficulty):  # any other hub file alpaca_eval asks for is refused, never downloaded
        with pytest.raises(AlpacaEvalError, match=r"tatsu-lab/alpaca_eval/instruction_difficulty.csv, which mfnb "
                                                  r"has no local copy"):
            glm_winrate._get_instructions_difficulty()
    assert glm_winrate.hf_hub_download.__module__.startswith("huggingface_hub")  # restored after the block


def test_pkg_resources_stand_in_is_not_left_behind():
    import sys

    require_alpaca_eval()
    module = sys.modules.get("pkg_resources")
    assert module is None or "mfnb" not in (module.__doc__ or "")


def test_the_weighted_annotator_through_the_stub_endpoint_caches_and_keeps_the_key_out(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with JudgeEndpoint(stub_answer, key=KEY) as endpoint:
        judge = AlpacaEvalJudge(AlpacaEvalSpec(base_url=endpoint.url, api_key_env=KEY_ENV), cache_dir=tmp_path)
        judge.check_access()
        prompts = [f"Write {i} words." for i in range(6)]
        first, second = [("w " * (i + 1)).strip() for i in range(6)], ["baseline answer"] * 6
        p = judge.compare(prompts, first, second)
        assert endpoint.counts()["requests"] == 6 and all(0 < x < 1 for x in p)
        # the stub's letter is the first or second identifier at random, so the preferences fall on both sides
        assert min(p) < 0.5 < max(p)
        assert judge.compare(prompts, first, second) == p and endpoint.counts()["requests"] == 6  # from the cache
        assert (judge.stats.pairs, judge.stats.calls, judge.stats.cache_hits) == (12, 6, 6)
        cached = json.loads(judge.cache_path.read_text())
        assert {r["output_2"] for r in cached} == set(first) and {r["output_1"] for r in cached} == {"baseline answer"}
        assert KEY not in judge.cache_path.read_text()
        monkeypatch.setenv(KEY_ENV, "sk-wrong-0123456789abcdefghij")
        with pytest.raises(AlpacaEvalError, match=r"^alpaca_eval: http://127.0.0.1:\d+/v1 refused the key in "
                                                  rf"\${KEY_ENV} \(HTTP 401\)") as err:
            judge.check_access()
        assert "sk-wrong" not in str(err.value)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(AlpacaEvalError, match=rf"^alpaca_eval.api_key_env: \${KEY_ENV} is not set"):
        judge.compare(["new prompt"], ["a"], ["b"])


def test_annotations_and_model_outputs_in_alpaca_evals_format(tmp_path):
    frame = annotation_frame(["i0", "i1"], ["a", "b"], ["x", "y"], [0.25, math.nan], generator="DPO")
    assert frame["preference"].iloc[0] == 1.25 and math.isnan(frame["preference"].iloc[1])
    assert list(frame["generator_2"]) == ["DPO", "DPO"] and list(frame["output_1"]) == ["x", "y"]
    path = write_model_outputs(tmp_path / "DPO.json", ["i0", "i1"], ["a", "b"], "DPO")
    rows = json.loads(path.read_text())
    assert rows == [{"instruction": "i0", "output": "a", "generator": "DPO", "dataset": "alpaca_eval"},
                    {"instruction": "i1", "output": "b", "generator": "DPO", "dataset": "alpaca_eval"}]
    from alpaca_eval import utils

    assert list(utils.load_or_convert_to_dataframe(path)["output"]) == ["a", "b"]  # alpaca_eval reads it back


def test_stub_answers_alpaca_evals_letters_only_for_its_prompts():
    body = {"messages": [{"role": "user", "content": '{"model_identifier": "m", "output": "x"}'}], "logprobs": True}
    top = stub_answer(body)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert {t["token"] for t in top} == {"m", "M"}
    plain = stub_answer({"messages": [{"role": "user", "content": "which?"}], "logprobs": True})
    assert {t["token"] for t in plain["choices"][0]["logprobs"]["content"][0]["top_logprobs"]} == {"A", "B"}
    assert os.environ.get(KEY_ENV) is None
