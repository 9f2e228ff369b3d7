"""The LLM judge's stream of requests against local stub endpoints: no batch barrier and never more than
``concurrency`` in flight, Retry-After honoured, the tokens-per-minute limiter's exact waits on a fake clock,
verdicts in input order, an outage that keeps the finished pairs, progress figures, and cache keys unchanged."""
from __future__ import annotations

import json
import math
import pickle
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mfnb.judges import CachedJudge, JudgeUnavailableError, OpenAIJudge, make_judge
from mfnb.judges import llm as llm_module
from mfnb.judges.llm import _RateLimiter, retry_after_seconds

KEY = "sk-test-stream-key-0123456789abcdef"
_PAIR = re.compile(r"Response A:\n(.*?)\n\nResponse B:\n(.*?)\n\nFIRST", re.S)


def completion(text: str) -> dict:
    """Prefers the response with "good" in it, so both orders agree (win/lose); usage from the text's length."""
    shown_first = _PAIR.search(text).group(1)
    pick = "A" if "good" in shown_first else "B"
    content = f"Comparison: {pick} is better.\nMore helpful: {pick}"
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": 7, "total_tokens": len(text) // 4 + 7}}


class Stub:
    """A chat-completions endpoint on 127.0.0.1.  ``plan(k, text)`` gives the k-th request's (status, headers,
    latency); a 200 answers :func:`completion`.  Records each request's arrival and end, and the most in flight."""

    def __init__(self, plan=lambda k, text: (200, {}, 0.0), port: int = 0):
        self.plan, self.log, self.in_flight, self.most = plan, [], 0, 0
        self.killed = threading.Event()
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][0]["content"]
                with stub.lock:
                    k = len(stub.log)
                    entry = {"k": k, "text": text, "start": time.monotonic(), "end": None, "status": None}
                    stub.log.append(entry)
                    stub.in_flight += 1
                    stub.most = max(stub.most, stub.in_flight)
                status, headers, latency = stub.plan(k, text)
                time.sleep(latency)
                with stub.lock:
                    stub.in_flight -= 1
                    entry["end"] = time.monotonic()
                if stub.killed.is_set():
                    self.close_connection = True  # no answer, as from a crashed server
                    return
                entry["status"] = status
                body = completion(text) if status == 200 else {"error": {"message": f"HTTP {status}"}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def answered(self) -> list[dict]:
        with self.lock:
            return [e for e in self.log if e["status"] == 200]

    def kill(self) -> None:
        self.killed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("MFNB_STREAM_TEST_KEY", KEY)


def llm(url: str, **kwargs) -> OpenAIJudge:
    values = dict(model="judge-model", base_url=url, api_key_env="MFNB_STREAM_TEST_KEY", max_retries=0,
                  backoff=0.0, progress=False)
    return OpenAIJudge(**{**values, **kwargs})


def pairs(n: int):
    """Pair i: "good" first on even i (a win), second on odd i (a loss)."""
    prompts = [f"question {i}" for i in range(n)]
    first = [f"good answer {i}" if i % 2 == 0 else f"poor answer {i}" for i in range(n)]
    second = [f"poor answer {i}" if i % 2 == 0 else f"good answer {i}" for i in range(n)]
    return prompts, first, second


def expected(n: int) -> list[str]:
    return ["win" if i % 2 == 0 else "lose" for i in range(n)]


# ------------------------------------------------------------------------------------------ the stream


def test_no_batch_barrier_and_never_more_than_concurrency_in_flight():
    # the first request to arrive takes 1.5 s, every other 0.05 s; one pair per batch
    stub = Stub(lambda k, text: (200, {}, 1.5 if k == 0 else 0.05))
    prompts, first, second = pairs(6)
    j = llm(stub.url, concurrency=3, batch_size=1)
    assert j.compare(prompts, first, second, shuffle_order=False) == expected(6)
    slow = stub.log[0]
    others = stub.log[1:]
    assert len(others) == 11 and stub.most == 3  # the pool was full, and never fuller
    # the other eleven requests (five more batches) came and went while the slow one was in flight
    assert all(e["end"] <= slow["end"] for e in others)
    stub.kill()


def test_verdicts_come_back_in_input_order_whatever_order_answers_arrive():
    latency = lambda k, text: (200, {}, 0.01 * ((7 * k) % 5))  # answers arrive out of order
    stub = Stub(latency)
    prompts, first, second = pairs(10)
    streamed = llm(stub.url, concurrency=8, batch_size=3).compare(prompts, first, second)
    one_at_a_time = llm(stub.url, concurrency=1, batch_size=3).compare(prompts, first, second)
    assert streamed == one_at_a_time == expected(10)
    stub.kill()


def test_batches_reach_the_cache_whole_and_in_any_order(tmp_path):
    stub = Stub(lambda k, text: (200, {}, 0.3 if "question 0\n" in text else 0.01))
    prompts, first, second = pairs(6)
    handed = []
    j = llm(stub.url, concurrency=4, batch_size=2)
    verdicts = j._run([(p, a, b) for p, a, b in zip(prompts, first, second)],
                      on_batch=lambda batch, v: handed.append(([p for p, _, _ in batch], list(v))))
    assert verdicts == expected(6)
    # the first batch waits for its slow pair; the later ones are handed over before it, each whole
    assert sorted(handed) == [(["question 0", "question 1"], ["win", "lose"]),
                              (["question 2", "question 3"], ["win", "lose"]),
                              (["question 4", "question 5"], ["win", "lose"])]
    assert handed[-1][0] == ["question 0", "question 1"]
    assert j.stats.pairs == 6 and j.stats.calls == 12 and j.stats.failures == 0
    stub.kill()


# ------------------------------------------------------------------------------------------ Retry-After


def test_retry_after_in_seconds_and_as_a_date():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "0.25"}) == 0.25
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5  # OpenAI's own, finer
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert retry_after_seconds({"retry-after": "Tue, 14 Nov 2023 22:13:27 GMT"}, now=now) == 7.0
    assert retry_after_seconds({"retry-after": "Tue, 14 Nov 2023 22:13:27 -0000"}, now=now) == 7.0
    assert retry_after_seconds({"retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"}, now=now) == 0.0  # past: no wait
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    for headers in ({}, {"retry-after": "soon"}, {"retry-after": "inf"}, {"retry-after": "nan"}):
        assert retry_after_seconds(headers) is None


@pytest.mark.parametrize("status, wait", [(429, "1"), (503, "0.4")])
def test_retry_after_is_honoured_before_the_next_attempt(status, wait):
    stub = Stub(lambda k, text: (status, {"Retry-After": wait}, 0.0) if k == 0 else (200, {}, 0.0))
    j = llm(stub.url, concurrency=1, max_retries=1, backoff=0.0)  # without Retry-After it would retry at once
    assert j.compare(["question 0"], ["good one"], ["poor one"], shuffle_order=False) == ["win"]
    refused, retried = stub.log[0], stub.log[1]
    assert refused["status"] == status and retried["text"] == refused["text"]
    assert retried["start"] - refused["end"] >= float(wait)
    assert retried["start"] - refused["end"] < float(wait) + 1.0
    assert j.stats.retries == 1
    stub.kill()


def test_paced_refusals_are_not_failures_but_unpaced_ones_are():
    """A 429 that says when to come back is pacing: more of them than max_retries still end in an answer; the same
    refusals without Retry-After use up the retries."""
    paced = Stub(lambda k, text: (429, {"Retry-After": "0"}, 0.0) if k < 4 else (200, {}, 0.0))
    j = llm(paced.url, concurrency=1, max_retries=1, backoff=0.0)
    assert j.compare(["question 0"], ["good one"], ["poor one"], shuffle_order=False) == ["win"]
    assert j.stats.retries == 4
    paced.kill()
    unpaced = Stub(lambda k, text: (429, {}, 0.0) if k < 4 else (200, {}, 0.0))
    j = llm(unpaced.url, concurrency=1, max_retries=1, backoff=0.0)
    with pytest.raises(JudgeUnavailableError, match=r"after 2 attempt\(s\)"):
        j.compare(["question 0"], ["good one"], ["poor one"], shuffle_order=False)
    unpaced.kill()


def test_a_retry_after_beyond_max_wait_gives_up_at_once():
    stub = Stub(lambda k, text: (429, {"Retry-After": "30"}, 0.0))
    j = llm(stub.url, concurrency=2, max_retries=5, max_wait_s=5.0)
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match=r"asked to retry after 30 s, past max_wait_s") as err:
        j.compare(["question 0"], ["good one"], ["poor one"])
    assert time.monotonic() - start < 2.0 and len(stub.log) == 2
    assert "none was counted as a loss" in str(err.value)
    stub.kill()


def test_the_client_itself_does_not_retry():
    stub = Stub()
    assert llm(stub.url).client().max_retries == 0  # every retry is the judge's, which honours Retry-After
    stub.kill()


# ------------------------------------------------------------------------------------------ rate limits


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_token_limiter_waits_exactly_on_a_fake_clock():
    clock = FakeClock()
    tokens = _RateLimiter(600, clock=clock, sleep=clock.sleep)  # 600 tokens a minute: 0.1 s per token
    assert tokens.wait(100) == 0.0  # the first starts at once and holds the next 10 s
    assert tokens.wait(50) == pytest.approx(10.0)  # starts at 10, holds until 15
    tokens.correct(-30)  # the second used 20 tokens, not 50: 3 s given back
    assert tokens.wait(10) == pytest.approx(2.0)  # now at 10: starts at 12
    tokens.correct(40)  # the third used 50: 4 s more
    assert tokens.wait(1) == pytest.approx(5.0)  # now at 12: starts at 17
    assert clock.sleeps == pytest.approx([10.0, 2.0, 5.0])
    clock.now = 100.0
    assert tokens.wait(100) == 0.0  # idle time is no credit for a burst
    assert tokens.wait(1) == pytest.approx(10.0)
    assert _RateLimiter(None).wait(1e9) == 0.0


class RecordingLimiter(_RateLimiter):
    def __init__(self, per_minute, clock):
        super().__init__(per_minute, clock=clock, sleep=clock.sleep)
        self.events = []

    def wait(self, units=1.0):
        waited = super().wait(units)
        self.events.append(("wait", units, waited))
        return waited

    def correct(self, units):
        self.events.append(("correct", units))
        super().correct(units)


def test_judge_charges_estimated_tokens_then_the_usage_reported():
    stub = Stub()
    j = llm(stub.url, concurrency=1, max_tokens=20, tokens_per_minute=6000)  # 0.01 s per token
    clock = FakeClock()
    j._token_limiter = RecordingLimiter(6000, clock)
    j.compare(["question 0"], ["good one"], ["poor one"], shuffle_order=False)
    texts = [e["text"] for e in stub.log]
    estimates = [math.ceil(len(t) / 4) + 20 for t in texts]
    used = [len(t) // 4 + 7 for t in texts]  # the stub's usage
    assert j._token_limiter.events == [
        ("wait", estimates[0], 0.0), ("correct", used[0] - estimates[0]),
        ("wait", estimates[1], pytest.approx(used[0] * 0.01)), ("correct", used[1] - estimates[1])]
    assert clock.sleeps == pytest.approx([used[0] * 0.01])
    assert j.stats.prompt_tokens + j.stats.completion_tokens == sum(used)
    stub.kill()


def test_tokens_per_minute_is_checked_and_accepted_by_specs():
    for bad in (0, -5, True, "many"):
        with pytest.raises(ValueError, match="tokens_per_minute"):
            llm("http://127.0.0.1:9/v1", tokens_per_minute=bad)
    j = make_judge({"kind": "openai", "model": "gpt-4o", "tokens_per_minute": 30000, "rate_limit": 500})
    assert j.tokens_per_minute == 30000 and j._token_limiter.seconds_per_unit == pytest.approx(0.002)
    again = pickle.loads(pickle.dumps(j))
    assert again.tokens_per_minute == 30000 and again._token_limiter.seconds_per_unit == pytest.approx(0.002)


# ------------------------------------------------------------------------------------------ outages


def test_an_outage_keeps_the_finished_pairs_and_starts_no_new_pair(tmp_path):
    latencies = [0.05, 0.1, 0.2, 0.4, 0.15, 0.3, 0.05, 0.25] * 4
    stub = Stub(lambda k, text: (200, {}, latencies[k % len(latencies)]))
    prompts, first, second = pairs(12)
    path = tmp_path / "verdicts.sqlite"
    j = CachedJudge(llm(stub.url, concurrency=4, batch_size=4, max_retries=1, backoff=0.05, max_wait_s=1.0), path)
    killer = threading.Thread(target=lambda: (wait_until(lambda: len(stub.answered()) >= 9), stub.kill()))
    killer.start()
    with pytest.raises(JudgeUnavailableError) as err:
        j.compare(prompts, first, second)
    killer.join()
    answered = [e["text"] for e in stub.answered()]
    whole = [p for p in prompts if sum(f"Query: {p}\n" in t for t in answered) == 2]
    assert 0 < len(whole) < 12 and len(j) == len(whole)
    assert f"Of the 12 pairs to judge, {len(whole)} were judged and kept" in str(err.value)
    assert "none was counted as a loss" in str(err.value) and stub.url in str(err.value)
    assert j.stats.pairs == len(whole) and j.stats.failures == 0
    # the endpoint back on the same URL: the kept pairs come from the cache, only the others are asked
    back = Stub(port=stub.port)
    rerun = CachedJudge(llm(back.url, concurrency=4), path)
    assert rerun.compare(prompts, first, second) == expected(12)
    assert rerun.stats.cache_hits == len(whole) and rerun.stats.calls == 2 * (12 - len(whole))
    back.kill()


@pytest.mark.parametrize("concurrency", [1, 2])
def test_after_an_outage_only_the_other_order_of_a_started_pair_is_asked(concurrency):
    stub = Stub(lambda k, text: (500, {}, 0.0) if k == 0 else (200, {}, 0.1))
    prompts, first, second = pairs(5)
    with pytest.raises(JudgeUnavailableError, match="Of the 5 pairs to judge, 0 were judged"):
        llm(stub.url, concurrency=concurrency).compare(prompts, first, second, shuffle_order=False)
    assert len(stub.log) == 2 and all("question 0\n" in e["text"] for e in stub.log)
    stub.kill()


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)


# ------------------------------------------------------------------------------------------ progress


def test_progress_shows_calls_tokens_and_dollars(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.postfix, self.n, self.disable = kwargs, None, 0, kwargs["disable"]
            bars.append(self)

        def set_postfix(self, refresh=True, **values):
            self.postfix = values

        def update(self, n=1):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(llm_module, "progress_bar", Bar)
    stub = Stub()
    prompts, first, second = pairs(4)
    j = llm(stub.url, concurrency=2, batch_size=2, progress=True, input_price=2.5, output_price=10.0)
    j.compare(prompts, first, second)
    bar = bars[-1]
    assert not bar.disable and bar.kwargs["total"] == 4 and bar.n == 4
    assert bar.postfix == {"calls": 8, "tokens": j.stats.prompt_tokens + j.stats.completion_tokens,
                           "dollars": f"{j.stats.dollars:.4f}"}
    j.compare(prompts[:2], first[:2], second[:2])
    assert bars[-1].disable  # one batch: no bar
    stub.kill()


# ------------------------------------------------------------------------------------------ cache keys


def test_cache_keys_are_unchanged():
    """The identities and cache keys of judges made before the stream existed (values taken from that code)."""
    default = OpenAIJudge("gpt-4o", base_url="https://api.openai.com/v1")
    assert default._params() == {"model": "gpt-4o", "base_url": "https://api.openai.com/v1", "template": "dpo",
                                 "template_hash": "9860b6fc0babd56e", "temperature": 0.0, "max_tokens": None}
    assert default.judge_id == "790c9b240b0bd429dfdc97b5fa1d31df"
    assert OpenAIJudge("gpt-4o", base_url="https://api.openai.com/v1", verdict="logprobs").judge_id == \
        "c8e535ff1583936b64b3ef351dede1a4"
    # rate limits, concurrency and batch size change no verdict, so no key
    paced = OpenAIJudge("gpt-4o", base_url="https://api.openai.com/v1", prompt_template="dpo_summary",
                        max_tokens=256, concurrency=16, rate_limit=500, tokens_per_minute=30000, batch_size=64)
    assert paced.judge_id == "0c999d38ce6a61055adeaa99da7de13b"
    assert CachedJudge._key(None, "p", "a", "b", default.judge_id) == \
        "ba848b5c19f1b25558622830abcfb1d9"
