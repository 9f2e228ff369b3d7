"""How much of an endpoint's rate the LLM judge uses: two local endpoints served in this process (threads,
http.server, 127.0.0.1; no network), 48 pairs in both orders (96 requests), concurrency 16 against each.

(a) capped: serves 4 requests at a time in 0.5 s each and answers any other 429 with ``Retry-After: 1``.
    Ideal time: requests x 0.5 s / 4.  The judge runs with its default retries: a 429 with Retry-After is
    pacing, not one of its ``max_retries`` (``max_wait_s`` bounds it).
(b) variable latency: no cap, each answer takes 0.1-1.9 s (seeded, in the order requests arrive).
    Ideal time: the makespan of a 16-wide pool over those latencies (list scheduling: each request goes to the
    first worker free).
Printed: measured time, ideal time and their ratio, the fraction of capacity used (goals 0.8 and 0.9). Then (c):
the variable endpoint killed mid-run: the pairs judged before the kill are in the cache, the rerun asks for the
rest only.

    python benchmarks/bench_judge_rate.py [--pairs 48] [--concurrency 16] [--seed 0]
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfnb.judges import CachedJudge, JudgeUnavailableError, OpenAIJudge
from mfnb.rehearsal.endpoint import stub_answer

KEY_ENV = "MFNB_BENCH_RATE_KEY"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 16 clients connect at once; the default backlog of 5 would delay some by a second


class LocalEndpoint:
    """``http://127.0.0.1:<port>/v1/chat/completions`` answering in the papers' format after ``latency(k)`` seconds
    for the k-th request it serves; with ``capacity``, at most that many at once, the others 429 + Retry-After.
    ``kill()`` stops it as a crash would: no new connection, no answer to the requests in flight."""

    def __init__(self, latency: Callable[[int], float], capacity: int | None = None, retry_after: str = "1",
                 port: int = 0):
        self.latency, self.retry_after = latency, retry_after
        self.slots = threading.BoundedSemaphore(capacity) if capacity else None
        self.served: list[dict] = []  # request bodies answered, in order
        self.refused = 0  # 429s
        self.killed = threading.Event()
        self._lock = threading.Lock()
        self._order = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if endpoint.slots is not None and not endpoint.slots.acquire(blocking=False):
                    with endpoint._lock:
                        endpoint.refused += 1
                    self._send(429, {"error": {"message": "busy", "type": "rate_limit"}},
                               {"Retry-After": endpoint.retry_after})
                    return
                try:
                    endpoint._serve(self, body)
                finally:
                    if endpoint.slots is not None:
                        endpoint.slots.release()

            def _send(self, status, obj, headers=()):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in dict(headers).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = _Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def _serve(self, handler, body: dict) -> None:
        with self._lock:
            k, self._order = self._order, self._order + 1
        time.sleep(self.latency(k))
        if self.killed.is_set():
            handler.close_connection = True  # dropped without an answer, as by a crash
            return
        with self._lock:
            self.served.append(body)
        handler._send(200, stub_answer(body))

    def kill(self) -> None:
        self.killed.set()
        threading.Thread(target=self._close, daemon=True).start()  # not from a handler thread's own stack

    def _close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def pairs(n: int) -> tuple[list[str], list[str], list[str]]:
    return ([f"Question {i}: name one thing that is {i} units long." for i in range(n)],
            [f"Answer A to question {i}." for i in range(n)],
            [f"Answer B to question {i}, said differently." for i in range(n)])


def judge(url: str, concurrency: int, **kwargs) -> OpenAIJudge:
    values = dict(model="stub", base_url=url, api_key_env=KEY_ENV, concurrency=concurrency, max_tokens=64,
                  input_price=2.5, output_price=10.0, progress=False)
    return OpenAIJudge(**{**values, **kwargs})


def makespan(latencies: list[float], workers: int) -> float:
    """List scheduling: each job in turn goes to the worker that is free first."""
    free = [0.0] * workers
    for latency in latencies:
        heapq.heappush(free, heapq.heappop(free) + latency)
    return max(free)


def timed_compare(j, prompts, first, second) -> float:
    start = time.perf_counter()
    j.compare(prompts, first, second)
    return time.perf_counter() - start


def capped(args, prompts, first, second) -> float:
    endpoint = LocalEndpoint(lambda k: 0.5, capacity=4, retry_after="1")
    j = judge(endpoint.url, args.concurrency)
    seconds = timed_compare(j, prompts, first, second)
    ideal = j.stats.calls * 0.5 / 4
    print(f"(a) capped (4 at a time, 0.5 s each, 429 + Retry-After: 1; default max_retries): {j.stats.calls} requests in "
          f"{seconds:.2f} s, ideal {ideal:.2f} s -> {ideal / seconds:.2f} of capacity (goal >= 0.8); "
          f"{endpoint.refused} answers 429, {j.stats.retries} retries")
    return ideal / seconds


def variable(args, prompts, first, second) -> float:
    rng = random.Random(args.seed)
    latencies = [rng.uniform(0.1, 1.9) for _ in range(2 * len(prompts))]
    endpoint = LocalEndpoint(latencies.__getitem__)
    j = judge(endpoint.url, args.concurrency)
    seconds = timed_compare(j, prompts, first, second)
    ideal = makespan(latencies, args.concurrency)
    print(f"(b) variable latency (0.1-1.9 s, seed {args.seed}, sum {sum(latencies):.1f} s): {j.stats.calls} requests "
          f"in {seconds:.2f} s, a {args.concurrency}-wide pool's makespan {ideal:.2f} s -> {ideal / seconds:.2f} of "
          f"capacity (goal >= 0.9)")
    s = j.stats
    print(f"    calls {s.calls}, tokens {s.prompt_tokens + s.completion_tokens}, dollars {s.dollars:.4f}")
    return ideal / seconds


def killed(args, prompts, first, second) -> bool:
    rng = random.Random(args.seed + 1)
    latencies = [rng.uniform(0.1, 1.9) for _ in range(10 * len(prompts))]
    endpoint = LocalEndpoint(latencies.__getitem__)
    kill_after = len(prompts)  # half of the requests
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "verdicts.sqlite"
        j = CachedJudge(judge(endpoint.url, args.concurrency, max_retries=2, backoff=0.1, max_wait_s=2.0), path)
        watcher = threading.Thread(target=lambda: (_wait_for(lambda: len(endpoint.served) >= kill_after),
                                                   endpoint.kill()), daemon=True)
        watcher.start()
        try:
            j.compare(prompts, first, second)
            message = "no outage"
        except JudgeUnavailableError as err:
            message = str(err).split(". Of the ")[-1]
        answered = [b["messages"][0]["content"] for b in endpoint.served]
        whole = sum(sum(f"Query: {p}\n" in text for text in answered) == 2 for p in prompts)
        stored = len(j)
        print(f"(c) endpoint killed after {len(endpoint.served)} answers: {whole} pairs had both orders answered, "
              f"{stored} verdicts in the cache; the error: 'Of the {message}'")
        _wait_for(lambda: endpoint._server.socket.fileno() == -1)
        again = LocalEndpoint(lambda k: 0.1, port=endpoint.port)  # the same URL: the same judge, the same cache keys
        rerun = CachedJudge(judge(again.url, args.concurrency), path)
        rerun.compare(prompts, first, second)
        print(f"    rerun on the endpoint restarted: {rerun.stats.cache_hits} pairs from the cache, "
              f"{rerun.stats.calls} requests for the other {len(prompts) - rerun.stats.cache_hits} pairs")
        j.close(), rerun.close(), again.kill()
        return stored == whole and rerun.stats.calls == 2 * (len(prompts) - stored)


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "sk-local-stub-needs-no-key-000000")
    prompts, first, second = pairs(args.pairs)
    print(f"{args.pairs} pairs in both orders ({2 * args.pairs} requests), concurrency {args.concurrency}")
    a = capped(args, prompts, first, second)
    b = variable(args, prompts, first, second)
    kept = killed(args, prompts, first, second)
    print("history: the batch-by-batch judge (16 pairs a batch, each waiting for its slowest answer, Retry-After "
          "ignored) measured 0.29 (a) and 0.65 (b) on 2026-12-07")
    print(f"goals: (a) {'met' if a >= 0.8 else 'MISSED'}, (b) {'met' if b >= 0.9 else 'MISSED'}, "
          f"(c) {'finished pairs kept' if kept else 'MISMATCH'}")


if __name__ == "__main__":
    main()
