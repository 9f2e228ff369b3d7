"""An OpenAI-compatible endpoint on 127.0.0.1 that misbehaves in one chosen way (echoes the key in a 401 or a 500,
answers invalid JSON, hangs): shared by the secrets tests (tests/core) and the CLI's (tests/cli)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-proj-ECHOED-KEY-abcdef0123456789"


class Endpoint:
    """An OpenAI-compatible endpoint on 127.0.0.1 that misbehaves in one chosen way."""

    def __init__(self, mode: str):
        self.mode, self.requests = mode, 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests += 1
                auth = self.headers.get("Authorization", "")
                if endpoint.mode == "echo401":
                    body = json.dumps({"error": {"message": f"Incorrect API key provided: {auth}",
                                                 "type": "invalid_request_error", "code": "invalid_api_key"}})
                    self._send(401, body)
                elif endpoint.mode == "invalid_json":
                    self._send(200, '{"id": "cmpl", "choices": [ not json, key ' + auth)
                elif endpoint.mode == "hang":
                    time.sleep(5)
                    self._send(200, "{}")
                elif endpoint.mode == "echo500":
                    self._send(500, json.dumps({"error": {"message": f"overloaded; you sent {auth}"}}))

            def _send(self, status, text):
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
