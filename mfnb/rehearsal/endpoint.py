"""An OpenAI-compatible judge endpoint on 127.0.0.1 for the rehearsal: it checks the API key, counts requests,
and answers through llama.cpp (SmolLM2-135M-Instruct's GGUF via ``xllamacpp``, a real LLM judging) or, where
llama.cpp and its model cannot travel (the GPU check), through a stub that answers in the papers' format.

The notebooks reach it exactly as they reach GPT-4o: ``judge.base_url`` and the key in ``$OPENAI_API_KEY``
through the ``openai`` client. A wrong key gets HTTP 401 with OpenAI's error body, so the judge's refusal path
is the real one.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


# alpaca_eval's annotators name the two outputs "m" and "M" (its prompt lists them as model identifiers)
ALPACA_EVAL_MARK = '"model_identifier": "m"'


def stub_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A stand-in chat completion in the papers' answer format, its letter a hash of the request (so the two
    orders of a pair disagree about half the time, as a position-biased judge would); log-probabilities when
    asked. For alpaca_eval's prompts the letters are its ``m`` / ``M``. Nothing is judged: it only keeps the
    request and answer formats real where llama.cpp cannot run."""
    text = json.dumps(body.get("messages", []), sort_keys=True)
    first, second = ("m", "M") if json.dumps(ALPACA_EVAL_MARK)[1:-1] in text else ("A", "B")
    digest = hashlib.sha256(text.encode()).digest()
    letter = first if digest[0] % 2 else second
    content = letter if body.get("logprobs") else f"Comparison: a stub compared the two responses.\nMore helpful: {letter}"
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
    if body.get("logprobs"):
        other = second if letter == first else first
        # the other letter's log-probability varies with the request, so weighted preferences are not all equal
        top = [{"token": letter, "logprob": -0.2, "bytes": None},
               {"token": other, "logprob": -1.0 - digest[1] / 128, "bytes": None}]
        choice["logprobs"] = {"content": [{"token": letter, "logprob": -0.2, "bytes": None, "top_logprobs": top}]}
    prompt_tokens = len(text) // 4
    return {"id": f"stub-{hashlib.sha256(text.encode()).hexdigest()[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "stub"), "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // 4 + 1,
                      "total_tokens": prompt_tokens + len(content) // 4 + 1}}


def forward_to(url: str, timeout: float = 300.0) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A backend that passes the request on to another OpenAI-compatible server (llama.cpp's) at ``url``."""

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{url.rstrip('/')}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    return answer


class JudgeEndpoint:
    """``http://127.0.0.1:<port>/v1``: ``/v1/chat/completions`` and ``/v1/models`` behind a bearer key, and
    ``/health``; ``requests`` counts the chat completions answered (``refused`` the ones with a wrong key),
    ``distinct`` the different conversations among them (a request sent again, after a timeout or for a failed
    verdict, repeats one)."""

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]], key: str, port: int = 0):
        self.answer, self.key = answer, key
        self.requests = self.refused = self.errors = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the notebooks' own output is what matters
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {endpoint.key}":
                    return True
                with endpoint._lock:
                    endpoint.refused += 1
                self._send(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                           "code": "invalid_api_key"}})
                return False

            def do_GET(self):
                if self.path == "/health":
                    self._send(200, {"status": "ok"})
                elif self.path.rstrip("/") == "/v1/models":
                    if self._authorised():
                        self._send(200, {"object": "list", "data": [{"id": "judge", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self._authorised():
                    return
                try:
                    result = endpoint.answer(body)
                except (OSError, urllib.error.URLError, ValueError) as err:
                    with endpoint._lock:
                        endpoint.errors += 1
                    self._send(502, {"error": {"message": f"judge backend failed: {err}"}})
                    return
                seen = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()
                with endpoint._lock:
                    endpoint.requests += 1
                    endpoint._seen.add(seen)
                self._send(200, result)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "refused": self.refused, "errors": self.errors,
                    "distinct": len(self._seen)}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
