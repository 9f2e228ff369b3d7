"""The LLM judge against a real OpenAI-compatible server: llama.cpp (xllamacpp) serving SmolLM2-135M-Instruct's
GGUF on 127.0.0.1. Verdicts with the papers' prompts in both orders (text and log-probability modes), token and
dollar accounting from the server's usage, a bounded pool under a rate limit, the server stopped mid-run and
restarted (retries; nothing lost, nothing invented), a longer outage (a clear error; finished pairs kept;
the rerun resumes from the cache and a full rerun makes no call), and the key in no output, log or file.
SmolLM2 is a weak judge: these tests check the machinery, not the verdicts' quality (that is measured by
benchmarks/judge_server.py)."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from mfnb.judges import CachedJudge, JudgeUnavailableError, OpenAIJudge, Outcome

xllamacpp = pytest.importorskip("xllamacpp")
SECRET = "sk-test-judge-key-0123456789abcdefghij"
PAIRS = [("Write one sentence about rain.", "Rain falls softly on the quiet town.", "Cheese."),
         ("Name a color.", "Blue.", "The weather is nice today and I went for a walk."),
         ("Say hello politely.", "Hello, it is a pleasure to meet you.", "go away"),
         ("What is 2 + 2?", "2 + 2 = 4.", "Five, probably."),
         ("Write a title for a story about a cat.", "The Cat Who Sailed the Sea", "story"),
         ("Give one tip for sleeping well.", "Keep a regular bedtime.", "Eat a lot of sugar at midnight.")]


SERVE = """
import sys, time
from mfnb.models.engines.llamacpp import LlamaCppServer
server = LlamaCppServer(sys.argv[1], parallel=2, threads=2, ctx_per_sequence=1024, port=int(sys.argv[2]))
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


class Server:
    """llama.cpp's server in a process of its own on a fixed port: stopping it kills the process (an outage the
    client really sees), starting it again serves the same URL."""

    def __init__(self):
        from mfnb.worlds.smol.smollm2 import find_gguf

        self.gguf = find_gguf()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SERVE, str(self.gguf), str(self.port)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the llama.cpp server process exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the llama.cpp server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture(scope="module")
def server():
    from mfnb.worlds.smol.smollm2 import SmolLM2Error

    try:
        srv = Server()
    except SmolLM2Error as err:
        pytest.skip(str(err))
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("MFNB_JUDGE_TEST_KEY", SECRET)


def judge(server, **kwargs) -> OpenAIJudge:
    values = dict(model="smollm2", base_url=server.url, api_key_env="MFNB_JUDGE_TEST_KEY", prompt_template="dpo",
                  temperature=0.0, concurrency=2, max_retries=3, backoff=0.2, max_wait_s=60.0,
                  timeout=30.0, input_price=2.5, output_price=10.0, progress=False)
    values.update(kwargs)
    return OpenAIJudge(**values)


def columns(pairs):
    return [p for p, _, _ in pairs], [a for _, a, _ in pairs], [b for _, _, b in pairs]


def test_both_orders_both_modes_and_usage(server):
    prompts, first, second = columns(PAIRS[:1])
    for mode, extra in (("text", {"max_tokens": 16}), ("logprobs", {"top_logprobs": 20, "max_tokens": None})):
        j = judge(server, verdict=mode, **extra)
        rows = j.examine(prompts, first, second)
        assert j.stats.calls == 2 and len(rows) == 1  # both orders of the pair
        for row in rows:
            assert row["verdict"] in ("win", "lose", "tie", "failed")
            if mode == "logprobs":
                assert row["source_ab"] in ("logprobs", "text", None)
        # the verdict follows the two letters: agreeing orders win/lose, disagreeing ones tie
        for row in rows:
            if row["letter_ab"] and row["letter_ba"]:
                expect = {("A", "B"): "win", ("B", "A"): "lose"}.get((row["letter_ab"], row["letter_ba"]), "tie")
                assert row["verdict"] == expect
        # tokens from the server's usage, priced by the params
        assert j.stats.prompt_tokens > 60 * 2 and j.stats.completion_tokens >= 2
        assert j.stats.dollars == pytest.approx((j.stats.prompt_tokens * 2.5 + j.stats.completion_tokens * 10.0) / 1e6)
        # the same request sent by hand is billed the same prompt tokens
        import openai

        direct = openai.OpenAI(api_key=SECRET, base_url=server.url, max_retries=0).chat.completions.create(
            **j._request(j.render(prompts[0], first[0], second[0])))
        single = judge(server, verdict=mode, **extra)
        single._ask(single.render(prompts[0], first[0], second[0]))
        assert single.stats.prompt_tokens == direct.usage.prompt_tokens
        assert j.max_tokens == (16 if mode == "text" else 1)


def test_bounded_pool_under_a_rate_limit(server):
    prompts, first, second = columns(PAIRS[:3])
    j = judge(server, verdict="logprobs", concurrency=2, rate_limit=300.0)  # one request start per 0.2 s
    client = j.client()
    create = client.chat.completions.create
    lock, state, starts = threading.Lock(), {"now": 0, "max": 0}, []

    def counting(**kwargs):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            starts.append(time.monotonic())
        try:
            # hold each request longer than the 0.2 s start spacing, so a second worker must overlap it
            # whatever the server's speed (a fast server once answered every request alone in CI)
            time.sleep(0.5)
            return create(**kwargs)
        finally:
            with lock:
                state["now"] -= 1

    client.chat.completions.create = counting
    outcomes = j.compare(prompts, first, second)
    assert len(outcomes) == 3 and j.stats.calls == 6
    assert state["max"] == 2  # the pool was used, and bounded
    gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:])]
    assert min(gaps) >= 0.2 - 0.02


def test_outage_mid_run_retries_then_a_long_one_keeps_what_finished(server, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "verdicts.sqlite"
    prompts, first, second = columns(PAIRS[:3])
    j = CachedJudge(judge(server, verdict="logprobs", top_logprobs=20, batch_size=1, max_retries=30, backoff=0.5,
                          max_wait_s=90.0), cache)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcomes", j.compare(prompts, first, second)))
    worker.start()
    deadline = time.monotonic() + 60
    while len(j) < 1 and time.monotonic() < deadline:  # the first pair is judged and stored
        time.sleep(0.05)
    server.stop()  # mid-run: requests now fail to connect and are retried
    time.sleep(1.0)
    server.start()
    worker.join(timeout=120)
    outcomes = result["outcomes"]
    assert j.stats.retries >= 1, "the outage was not noticed"
    assert len(outcomes) == 3 and len(j) == sum(o is not Outcome.FAILED for o in outcomes)
    assert j.stats.failures == sum(o is Outcome.FAILED for o in outcomes)  # failures are failures, never losses

    # a longer outage: the requests give up within max_wait_s; nothing is invented
    more_prompts, more_first, more_second = columns(PAIRS[3:4])
    server.stop()
    short = CachedJudge(judge(server, verdict="logprobs", top_logprobs=20, batch_size=1, max_retries=2, backoff=0.1,
                              max_wait_s=2.0), cache)
    with pytest.raises(JudgeUnavailableError) as err:
        short.compare(more_prompts, more_first, more_second)
    message = str(err.value)
    assert server.url.removesuffix("/v1") in message and "none was counted as a loss" in message
    assert len(short) == len(j)  # nothing new stored
    server.start()
    again = CachedJudge(judge(server, verdict="logprobs", top_logprobs=20, batch_size=1), cache)
    resumed = again.compare(prompts + more_prompts, first + more_first, second + more_second)
    assert resumed[:3] == outcomes and again.stats.calls == 2 * sum(o is Outcome.FAILED for o in outcomes) + 2
    rerun = CachedJudge(judge(server, verdict="logprobs", top_logprobs=20, batch_size=1), cache)
    stored = sum(o is not Outcome.FAILED for o in resumed)
    rerun.compare(prompts + more_prompts, first + more_first, second + more_second)
    assert rerun.stats.cache_hits >= stored and rerun.stats.calls == 2 * (len(resumed) - stored)

    # the key: in no output, log record, cache file or result file
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"stats": [x.stats.as_dict() for x in (j, short, again, rerun)],
                                   "identity": again.identity(), "error": message, "repr": repr(again)}))
    out, errors = capsys.readouterr()
    for text in (out, errors, caplog.text, message, results.read_text()):
        assert SECRET not in text
    for file in tmp_path.iterdir():
        assert SECRET.encode() not in file.read_bytes()
