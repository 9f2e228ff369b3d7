"""A stub OpenAI-compatible completions server and a fake "vLLM venv" whose python runs it: shared by the served
engine's tests (tests/models) and the paper world's (tests/worlds). Plain stdlib, so the fake vLLM's python imports
this file (``run_stub_main``) without importing torch or mfnb.

The stub answers ``/v1/completions`` with a text made of what it was asked (prompt length, seed, sampling, and
the LoRA adapter a request names), so a test can read the request back from the response; it loads and unloads
adapters by name as vLLM's runtime LoRA API does (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``)."""
from __future__ import annotations

import json
import os
import random
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Stub:
    """What the stub does (delays, failures) and what it saw (request bodies, the most requests at once)."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0, fail_status: int = 503, token_ids: bool = False):
        self.delay, self.fail_first, self.fail_status, self.token_ids = delay, fail_first, fail_status, token_ids
        self.bodies: list[dict] = []
        self.attempts = 0
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        self.served: str | None = None        # the base model's name (--served-model-name), when known
        self.adapters: dict[str, str] = {}    # loaded LoRA adapters: name -> folder
        self.adapter_calls: list[tuple[str, str]] = []  # ("load" | "unload", name), in order

    def lora(self, path: str, body: dict) -> tuple[int, dict, dict]:
        name = body.get("lora_name", "")
        with self.lock:
            self.adapter_calls.append((path.rsplit("/", 1)[-1].split("_")[0], name))
            if path.endswith("load_lora_adapter") and not path.endswith("unload_lora_adapter"):
                if name in self.adapters:
                    return 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}}, {}
                if not Path(body.get("lora_path", ""), "adapter_config.json").is_file():
                    return 400, {"error": {"message": f"no adapter at {body.get('lora_path')}"}}, {}
                self.adapters[name] = body["lora_path"]
                return 200, {}, {}
            if self.adapters.pop(name, None) is None:
                return 404, {"error": {"message": f"The lora adapter '{name}' cannot be found."}}, {}
            return 200, {}, {}

    def answer(self, body: dict) -> tuple[int, dict, dict]:
        with self.lock:
            self.attempts += 1
            if self.attempts <= self.fail_first:
                return self.fail_status, {"error": {"message": "busy"}}, {"Retry-After": "0"}
            self.bodies.append(body)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(random.uniform(0, self.delay))  # answers finish out of order
            if body.get("max_tokens", 1) > 1000:
                return 400, {"error": {"message": "max_tokens is too large for this model"}}, {}
            ids = body["prompt"]
            model = body.get("model")
            if self.served is not None and model not in (self.served, *self.adapters):
                return 404, {"error": {"message": f"The model `{model}` does not exist."}}, {}
            text = f"len={len(ids)} seed={body['seed']} t={body['temperature']}"
            if model in self.adapters:
                text += f" adapter={model}"
            choice = {"text": text, "index": 0, "finish_reason": "length"}
            if self.token_ids:
                choice.update(text="(ignored: the ids are decoded)", token_ids=list(reversed(ids))[:3])
            n = min(body.get("max_tokens", 16), 5)
            return 200, {"choices": [choice], "usage": {"completion_tokens": n}}, {}
        finally:
            with self.lock:
                self.in_flight -= 1


def make_stub_server(stub: Stub, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"status": "ok"}) if self.path == "/health" else self._send(404, {})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                return self._send(*stub.lora(self.path, body))
            if self.path != "/v1/completions":
                return self._send(404, {"error": {"message": f"no {self.path}"}})
            self._send(*stub.answer(body))

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def run_stub_main(argv: list[str]) -> None:
    """The fake ``vllm`` server: records its argv and environment, then serves the stub on ``--port``."""
    record = os.environ.get("FAKE_VLLM_RECORD")
    if record:
        Path(record).write_text(json.dumps({"argv": argv, "env": {k: v for k, v in os.environ.items()
                                                                   if k.startswith(("FAKE_", "VLLM_"))}}))
    if os.environ.get("FAKE_VLLM_FAIL"):
        print("ValueError: fake vLLM cannot load this model", flush=True)
        sys.exit(1)
    time.sleep(float(os.environ.get("FAKE_VLLM_START_DELAY", "0")))  # loading the model
    if os.environ.get("FAKE_VLLM_NEVER_READY"):
        time.sleep(3600)
    port = int(argv[argv.index("--port") + 1])
    stub = Stub()
    stub.served = argv[argv.index("--served-model-name") + 1] if "--served-model-name" in argv else None
    make_stub_server(stub, port).serve_forever()


def fake_vllm_python(folder: Path) -> Path:
    """A "vLLM venv python": this interpreter with a package ``vllm`` whose OpenAI server runs the stub."""
    server = folder / "site" / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True, exist_ok=True)
    for package in (server.parents[1], server.parent, server):
        (package / "__init__.py").touch()
    (server / "api_server.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from fake_vllm import run_stub_main
        if __name__ == "__main__":
            run_stub_main(sys.argv)
    """))
    python = folder / "bin" / "python"
    python.parent.mkdir(exist_ok=True)
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{folder / "site"}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
