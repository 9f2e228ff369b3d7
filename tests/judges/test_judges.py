"""Judges: oracle semantics, TRL signature, SQLite cache, OpenAI judge against a local fake server,
reward-model judge on a tiny random Llama."""
from __future__ import annotations

import json
import math
import re
import socket
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mfnb.judges import (CachedJudge, JudgeError, JudgeUnavailableError, OpenAIJudge, OracleJudge, Outcome,
                         PairwiseJudge, RewardModelJudge, make_judge, parse_verdict)

QUALITY = {"best": 0.95, "good": 0.8, "ok": 0.5, "ok+": 0.53, "bad": 0.1, "broken": math.nan}


def quality(prompt: str, response: str) -> float:
    return QUALITY[response]


def oracle(**kwargs) -> OracleJudge:
    return OracleJudge(quality, name="test-world", **kwargs)


# a fixed set of pairs: 8 distinct prompts so that shuffling swaps some and not others
PAIRS = [("best", "bad"), ("bad", "good"), ("ok", "ok+"), ("ok+", "ok"), ("good", "ok"), ("ok", "best"),
         ("bad", "ok"), ("good", "best")]
PROMPTS = [f"prompt {i}" for i in range(len(PAIRS))]
FIRST, SECOND = [a for a, _ in PAIRS], [b for _, b in PAIRS]
TRUE = ["win", "lose", "tie", "tie", "win", "lose", "lose", "lose"]  # by quality, margin 0.05


# -------------------------------------------------------------------------------------------- oracle


def test_outcome_is_a_string():
    assert Outcome.WIN == "win" and "tie" in {Outcome.TIE} and str(Outcome.LOSE) == "lose"
    assert Outcome.WIN.flipped() is Outcome.LOSE and Outcome.TIE.flipped() is Outcome.TIE
    assert Outcome.FAILED.flipped() is Outcome.FAILED


def test_oracle_margin_and_ties():
    j = oracle(tie_margin=0.05)
    assert j.compare(PROMPTS, FIRST, SECOND) == TRUE
    # exactly at the margin is a tie; just over it is not
    edge = OracleJudge(lambda p, r: {"x": 0.5, "y": 0.75}[r], tie_margin=0.25, name="edge")
    assert edge.compare(["p"], ["x"], ["y"]) == ["tie"]
    assert OracleJudge(lambda p, r: {"x": 0.5, "y": 0.75}[r], tie_margin=0.2499, name="e").compare(
        ["p"], ["x"], ["y"]) == ["lose"]
    assert oracle(tie_margin=0.0).compare(["p", "p"], ["ok", "ok"], ["ok+", "ok"]) == ["lose", "tie"]


def test_oracle_deterministic_and_seeded():
    kw = dict(label_noise=0.3, position_bias=0.2)
    prompts = [f"q{i}" for i in range(200)]
    a, b = ["good"] * 200, ["bad"] * 200
    runs = [oracle(seed=7, **kw).compare(prompts, a, b) for _ in range(2)]
    assert runs[0] == runs[1]  # same seed, fresh instances
    assert oracle(seed=8, **kw).compare(prompts, a, b) != runs[0]
    assert oracle(seed=7, **kw).judge(prompts, [[x, y] for x, y in zip(a, b)]) == \
        oracle(seed=7, **kw).judge(prompts, [[x, y] for x, y in zip(a, b)])
    # noise=0, bias=0: verdicts are the truth, whatever the seed
    assert oracle(seed=1).compare(PROMPTS, FIRST, SECOND) == oracle(seed=2).compare(PROMPTS, FIRST, SECOND) == TRUE


def test_oracle_noise_one_flips_every_non_tie():
    flipped = oracle(label_noise=1.0).compare(PROMPTS, FIRST, SECOND)
    assert flipped == [Outcome(t).flipped() for t in TRUE]
    # noise 0.5 flips roughly half
    n = 2000
    out = oracle(label_noise=0.5).compare([f"q{i}" for i in range(n)], ["good"] * n, ["bad"] * n)
    assert 0.44 < out.count("lose") / n < 0.56


def test_oracle_position_bias_one_picks_first_shown():
    j = oracle(position_bias=1.0)
    shown = j.compare(PROMPTS, FIRST, SECOND, shuffle_order=False)
    assert shown == ["tie" if t == "tie" else "win" for t in TRUE]
    idx = j.judge(PROMPTS, [list(p) for p in PAIRS], shuffle_order=False)
    assert [x for x, t in zip(idx, TRUE) if t != "tie"] == [0] * 6
    # with shuffling, the biased judge prefers whichever side it was shown first: the swapped half loses
    n = 400
    prompts = [f"q{i}" for i in range(n)]
    out = j.compare(prompts, ["bad"] * n, ["good"] * n, shuffle_order=True)
    swapped = [j._swap(p, "bad", "good") for p in prompts]
    assert out == ["lose" if s else "win" for s in swapped]
    assert 0.4 < sum(swapped) / n < 0.6


def test_shuffle_does_not_change_unbiased_oracle():
    j = oracle()
    assert j.compare(PROMPTS, FIRST, SECOND, shuffle_order=True) == j.compare(PROMPTS, FIRST, SECOND, shuffle_order=False)
    assert any(j._swap(p, a, b) for p, a, b in zip(PROMPTS, FIRST, SECOND))  # the test exercises a swap
    pairs = [list(p) for p in PAIRS]
    assert j.judge(PROMPTS, pairs, shuffle_order=True) == j.judge(PROMPTS, pairs, shuffle_order=False)


def test_trl_signature_ties_and_failures():
    j = oracle()
    pairs = [list(p) for p in PAIRS] + [["broken", "good"]]
    out = j.judge(PROMPTS + ["p"], pairs)
    assert isinstance(out, list) and len(out) == len(pairs) and all(isinstance(x, int) for x in out)
    assert out[:2] == [0, 1] and out[4:8] == [0, 1, 1, 1]
    assert out[2] in (0, 1) and out[3] in (0, 1)  # ties: seeded coin
    assert out[-1] == -1
    assert j.compare(["p"], ["broken"], ["good"]) == ["failed"]
    assert j.stats.failures == 2
    # tie coin is deterministic per (seed, prompt, a, b), and over many ties roughly fair
    n = 400
    ties = oracle().judge([f"q{i}" for i in range(n)], [["ok", "ok+"]] * n)
    assert ties == oracle().judge([f"q{i}" for i in range(n)], [["ok", "ok+"]] * n)
    assert 0.4 < sum(ties) / n < 0.6
    with pytest.raises(ValueError, match="pair"):
        j.judge(["p"], [["a", "b", "c"]])
    with pytest.raises(ValueError, match="length"):
        j.compare(["p"], ["a"], [])


def test_stats_and_cost():
    j = oracle(cost_per_call=0.5)
    j.compare(PROMPTS, FIRST, SECOND)
    assert j.stats.pairs == j.stats.calls == 8 and j.stats.cost == 4.0 and j.stats.cache_hits == 0
    assert isinstance(j, PairwiseJudge)


def test_oracle_validation():
    with pytest.raises(ValueError, match="label_noise"):
        oracle(label_noise=1.5)
    with pytest.raises(ValueError, match="position_bias"):
        oracle(position_bias=-0.1)


# --------------------------------------------------------------------------------------------- cache


def test_cache_rerun_makes_zero_calls(tmp_path):
    path = tmp_path / "v.sqlite"
    pairs = [list(p) for p in PAIRS]
    first = CachedJudge(oracle(label_noise=0.2), path)
    out1 = first.judge(PROMPTS, pairs)
    assert first.stats.calls == 8 and first.stats.cache_hits == 0 and len(first) == 8
    out2 = first.judge(PROMPTS, pairs)
    assert out2 == out1 and first.stats.calls == 8 and first.stats.cache_hits == 8
    first.close()
    # survives reopening, in a new judge instance
    again = CachedJudge(oracle(label_noise=0.2), path)
    assert again.judge(PROMPTS, pairs) == out1 and again.stats.calls == 0 and again.stats.cache_hits == 8
    assert again.compare(PROMPTS, FIRST, SECOND) == oracle(label_noise=0.2).compare(PROMPTS, FIRST, SECOND)
    assert again.stats.calls == 0
    # identity separation: another margin is another judge
    other = CachedJudge(oracle(label_noise=0.2, tie_margin=0.5), path)
    other.judge(PROMPTS, pairs)
    assert other.stats.calls == 8 and other.stats.cache_hits == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 16
        assert conn.execute("SELECT COUNT(DISTINCT judge_id) FROM verdicts").fetchone()[0] == 2
        identities = [json.loads(r[0]) for r in conn.execute("SELECT identity FROM judges")]
    assert sorted(i["tie_margin"] for i in identities) == [0.05, 0.5]


def test_cache_failures_not_cached_and_dedup(tmp_path):
    j = CachedJudge(oracle(), tmp_path / "v.sqlite")
    assert j.judge(["p", "p", "p"], [["broken", "good"], ["good", "bad"], ["good", "bad"]]) == [-1, 0, 0]
    assert j.stats.calls == 2 and j.stats.failures == 1  # the duplicate pair was judged once
    j.judge(["p"], [["broken", "good"]])
    assert j.stats.calls == 3  # a failure is asked again


def test_cache_order_symmetry(tmp_path):
    path = tmp_path / "v.sqlite"
    sym = CachedJudge(oracle(), path)
    assert sym.order_symmetric
    assert sym.compare(PROMPTS, FIRST, SECOND, shuffle_order=False) == TRUE
    reverse = sym.compare(PROMPTS, SECOND, FIRST, shuffle_order=False)
    assert reverse == [Outcome(t).flipped() for t in TRUE] and sym.stats.calls == 8
    biased = CachedJudge(oracle(position_bias=1.0), path)
    assert not biased.order_symmetric
    biased.compare(PROMPTS, FIRST, SECOND, shuffle_order=False)
    assert biased.compare(PROMPTS, SECOND, FIRST, shuffle_order=False) == ["tie" if t == "tie" else "win" for t in TRUE]
    assert biased.stats.calls == 16  # the reversed order is a new question for an order-sensitive judge


def test_cache_keeps_completed_batches_on_crash(tmp_path):
    calls = []

    def flaky(prompt, response):
        calls.append(prompt)
        if prompt == "boom":
            raise RuntimeError("backend died")
        return QUALITY[response]

    path = tmp_path / "v.sqlite"
    j = CachedJudge(OracleJudge(flaky, name="flaky", batch_size=2), path)
    with pytest.raises(RuntimeError):
        j.compare(["a", "b", "c", "boom"], ["good"] * 4, ["bad"] * 4)
    assert len(j) == 2  # the first batch of two was committed
    j2 = CachedJudge(OracleJudge(flaky, name="flaky", batch_size=2), path)
    assert j2.compare(["a", "b"], ["good"] * 2, ["bad"] * 2) == ["win", "win"] and j2.stats.calls == 0


# ------------------------------------------------------------------------------------------ factory


def test_make_judge(tmp_path):
    j = make_judge({"kind": "oracle", "tie_margin": 0.1, "label_noise": 0.0, "name": "w"}, quality_fn=quality)
    assert isinstance(j, OracleJudge) and j.tie_margin == 0.1
    cached = make_judge({"kind": "oracle", "cache": str(tmp_path / "c.sqlite")}, quality_fn=quality)
    assert isinstance(cached, CachedJudge) and cached.tie_margin == 0.05
    with pytest.raises(ValueError, match="'kind'"):
        make_judge({"kind": "gpt"})
    with pytest.raises(ValueError, match="'tie_margn'"):
        make_judge({"kind": "oracle", "tie_margn": 0.1}, quality_fn=quality)
    with pytest.raises(ValueError, match="quality_fn"):
        make_judge({"kind": "oracle"})
    with pytest.raises(ValueError, match="'model'"):
        make_judge({"kind": "openai"})
    with pytest.raises(ValueError, match="label_noise"):
        make_judge({"kind": "oracle", "label_noise": 2.0}, quality_fn=quality)

    from pydantic import BaseModel

    class Spec(BaseModel):
        kind: str
        tie_margin: float | None = None
        model: str | None = None  # a field of another judge kind, left empty

    j = make_judge(Spec(kind="oracle", tie_margin=0.2), quality_fn=quality)
    assert isinstance(j, OracleJudge) and j.tie_margin == 0.2


# ------------------------------------------------------------------- OpenAI judge, fake local server

SECRET = "sk-test-NEVER-STORE-ME-0123456789"
_PAIR = re.compile(r"Response A:\n(.*?)\n\nResponse B:\n(.*?)\n\nFIRST", re.S)


def fake_answer(text: str) -> str:
    """A scripted judge: prefers the response mentioning "good"; position-biased when both or neither do."""
    a, b = _PAIR.search(text).groups()
    if "weird" in a or "weird" in b:
        return "Both are fine, hard to say."
    pick = "A" if ("good" in a or "good" not in b) else "B"
    if "bare" in a or "bare" in b:
        return pick
    return f"Comparison: Response {pick} is more useful.\nMore helpful: {pick}"


class FakeOpenAI:
    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.prompts: list[str] = []
        self.auth: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.auth.append(self.headers.get("Authorization", ""))
                if fake.fail_first > 0:
                    fake.fail_first -= 1
                    self._send(500, {"error": {"message": "overloaded", "type": "server_error"}})
                    return
                text = body["messages"][-1]["content"]
                fake.prompts.append(text)
                self._send(200, {
                    "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": fake_answer(text)}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server(monkeypatch):
    monkeypatch.setenv("MFNB_TEST_KEY", SECRET)
    server = FakeOpenAI()
    yield server
    server.close()


def llm(url, **kwargs):
    kwargs = {"max_retries": 0, "backoff": 0.0, "progress": False, **kwargs}
    return OpenAIJudge("judge-model", base_url=url, api_key_env="MFNB_TEST_KEY", **kwargs)


def test_parse_verdict():
    assert parse_verdict("Comparison: B rambles.\nMore helpful: A") == "A"
    assert parse_verdict('Comparison: x\nPreferred: "B"') == "B"
    assert parse_verdict("B") == "B" and parse_verdict("**A**") == "A"
    for bad in (None, "", "both are good", "More helpful: both", "a"):
        assert parse_verdict(bad) is None


def test_openai_both_orders_and_parsing(fake_server):
    j = llm(fake_server.url, cost_per_call=0.01)
    prompts = ["q1", "q2", "q3", "q4"]
    first = ["a good answer", "meh", "good one", "bare good"]
    second = ["meh", "a good answer", "good two", "meh bare"]
    out = j.compare(prompts, first, second, shuffle_order=False)
    # both orders agree -> win / lose; a purely positional answer disagrees across orders -> tie
    assert out == ["win", "lose", "tie", "win"]
    assert len(fake_server.prompts) == 8 and j.stats.calls == 8 and j.stats.pairs == 4
    assert abs(j.stats.cost - 0.08) < 1e-9 and j.stats.prompt_tokens == 80
    asked = {_PAIR.search(t).groups() for t in fake_server.prompts}
    assert ("a good answer", "meh") in asked and ("meh", "a good answer") in asked
    assert "which response is more helpful?" in fake_server.prompts[0]
    assert all(a == f"Bearer {SECRET}" for a in fake_server.auth)
    assert j.judge(prompts[:2], [[first[0], second[0]], [first[1], second[1]]]) == [0, 1]


def test_openai_unparseable_is_failure(fake_server):
    j = llm(fake_server.url)
    assert j.compare(["q"], ["weird"], ["good"]) == ["failed"]
    assert j.judge(["q"], [["weird", "good"]]) == [-1]
    assert j.stats.failures == 2


def test_openai_retries_then_success(fake_server):
    fake_server.fail_first = 2
    j = llm(fake_server.url, max_retries=3, backoff=0.001, concurrency=1)
    assert j.compare(["q"], ["good"], ["meh"]) == ["win"]
    assert j.stats.retries == 2 and j.stats.calls == 2 and len(fake_server.auth) == 4
    fake_server.fail_first = 10
    with pytest.raises(JudgeUnavailableError, match=re.escape(fake_server.url)):
        llm(fake_server.url, max_retries=1, backoff=0.0).compare(["q"], ["good"], ["meh"])


def test_openai_unreachable_names_endpoint_and_keeps_cache(fake_server, tmp_path):
    path = tmp_path / "llm.sqlite"
    cached = CachedJudge(llm(fake_server.url), path)
    assert cached.compare(["q1"], ["good"], ["meh"]) == ["win"]
    cached.close()
    fake_server.close()  # the endpoint goes away
    with socket.socket() as s:  # a localhost port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeUnavailableError) as err:
        llm(dead, max_retries=2, backoff=0.001).compare(["q"], ["good"], ["meh"])
    assert dead in str(err.value) and "judge-model" in str(err.value)
    # the old endpoint is down too: cached verdicts still answer, new ones raise
    again = CachedJudge(llm(fake_server.url, max_retries=1, backoff=0.0), path)
    with pytest.raises(JudgeUnavailableError, match="judge-model"):
        again.compare(["q1", "q2"], ["good", "good"], ["meh", "meh"])
    assert again.compare(["q1"], ["good"], ["meh"]) == ["win"] and again.stats.calls == 0
    assert again.compare(["q1"], ["meh"], ["good"]) == ["lose"]  # order-symmetric judge: reversed row reused
    assert len(again) == 1


def test_openai_key_never_stored(fake_server, tmp_path):
    path = tmp_path / "llm.sqlite"
    j = CachedJudge(llm(fake_server.url), path)
    j.judge(["q1", "q2"], [["good", "meh"], ["meh", "good"]])
    assert SECRET not in repr(j) and SECRET not in repr(j.inner) and SECRET not in json.dumps(j.identity())
    j.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert blob and SECRET.encode() not in blob
    import pickle

    assert SECRET.encode() not in pickle.dumps(llm(fake_server.url))


def test_openai_missing_key(monkeypatch, fake_server):
    monkeypatch.delenv("MFNB_TEST_KEY")
    with pytest.raises(JudgeError, match="MFNB_TEST_KEY"):
        llm(fake_server.url).compare(["q"], ["a"], ["b"])


# ------------------------------------------------------------------------- reward-model judge

WORDS = "the a cat dog sat ran on mat fast slow good bad answer question is what".split()


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                  bos_token="[BOS]", eos_token="[EOS]")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         num_labels=1, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm") / "tiny-rm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_model_judge(tiny_rm, tmp_path):
    j = RewardModelJudge(tiny_rm, batch_size=2, device="cpu", progress=False)
    prompts = ["what is the cat", "what is the dog", "the question"]
    responses = ["the cat sat on the mat", "dog ran fast", "good answer"]
    scores = j.score(prompts, responses)
    assert len(scores) == 3 and all(isinstance(s, float) and math.isfinite(s) for s in scores)
    # same weights -> same scores, whatever the batch size (padding must not change a score)
    again = RewardModelJudge(str(tiny_rm), batch_size=1, device="cpu", progress=False)
    assert again.score(prompts, responses) == pytest.approx(scores, abs=1e-5)
    assert again.judge_id == j.judge_id
    assert j.format_text("the cat", "sat") == ("the cat sat", False)  # no chat template: concatenation
    pairs = [[r, "bad answer"] for r in responses]
    out = j.judge(prompts, pairs)
    assert len(out) == 3 and set(out) <= {0, 1}
    outcomes = j.compare(prompts, responses, ["bad answer"] * 3, shuffle_order=False)
    bad = j.score(prompts, ["bad answer"] * 3)
    assert outcomes == ["win" if s > t else "lose" for s, t in zip(scores, bad)]
    assert [0 if o == "win" else 1 for o in outcomes] == out
    assert RewardModelJudge(tiny_rm, tie_margin=1e9, device="cpu", progress=False).compare(
        prompts, responses, ["bad answer"] * 3) == ["tie"] * 3
    assert j.stats.calls == 6 and j.stats.pairs == 6
    cached = CachedJudge(RewardModelJudge(tiny_rm, device="cpu", progress=False), tmp_path / "rm.sqlite")
    assert cached.judge(prompts, pairs) == out and cached.score(prompts, responses) == pytest.approx(scores, abs=1e-5)
    assert cached.judge(prompts, pairs) == out and cached.stats.cache_hits == 3 and cached.stats.calls == 3


def test_reward_model_chat_template(tiny_rm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_rm)
    tok.chat_template = "[BOS]{% for m in messages %} {{ m['content'] }}{% endfor %} [EOS]"
    j = RewardModelJudge(tiny_rm, tokenizer=tok, device="cpu", progress=False)
    assert j.format_text("what is the cat", "the cat") == ("[BOS] what is the cat the cat [EOS]", True)
    assert j.format_text("[BOS] what is the cat", "the cat")[1] is False  # already formatted: concatenate
    assert len(j.score(["what is the cat"], ["the cat"])) == 1
    plain = RewardModelJudge(tiny_rm, device="cpu", progress=False)
    assert plain.judge_id != j.judge_id


def test_reward_model_missing_path(tmp_path):
    missing = tmp_path / "no-such-rm"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        RewardModelJudge(missing)
    with pytest.raises(FileNotFoundError, match="no-such-rm"):
        make_judge({"kind": "reward_model", "model_or_path": str(missing)})
