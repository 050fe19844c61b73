"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

Built on the standard library's threading HTTP server (no extra dependency). It answers with a
responder function, and can be told to misbehave: refuse ``json_schema``, return invalid JSON, stop
at ``length``, answer 429 with Retry-After, or 500, for a number of requests. It counts requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], str]


@dataclass
class Faults:
    """Misbehaviour to inject; counters are decremented as faults are served."""

    refuse_json_schema: bool = False
    invalid_json: int = 0
    length: int = 0
    rate_limited: int = 0
    retry_after: float = 0.0
    server_error: int = 0
    latency: float = 0.0


@dataclass
class ServerState:
    """What the server has seen."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _default_responder(body: dict[str, Any]) -> str:
    from quallm.models.fake import minimal_instance

    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
    return json.dumps(minimal_instance(schema))


class OpenAITestServer:
    """Start with ``with OpenAITestServer(responder) as srv: srv.base_url``."""

    def __init__(self, responder: Responder | None = None, faults: Faults | None = None, model: str = "test-model"):
        self.responder = responder or _default_responder
        self.faults = faults or Faults()
        self.state = ServerState()
        self.model = model
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of every chat completion request received."""
        return list(self.state.requests)

    def start(self) -> OpenAITestServer:
        """Start serving in a background thread."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                server._handle(self, body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def _handle(self, h: Any, body: dict[str, Any]) -> None:
        f = self.faults
        with self.state.lock:
            self.state.requests.append(body)
            self.state.headers.append({k.lower(): v for k, v in h.headers.items()})
            fault = None
            if f.rate_limited > 0:
                f.rate_limited -= 1
                fault = "429"
            elif f.server_error > 0:
                f.server_error -= 1
                fault = "500"
        if f.latency:
            time.sleep(f.latency)
        if fault == "429":
            h._send(
                429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": str(f.retry_after)}
            )
            return
        if fault == "500":
            h._send(500, {"error": {"message": "internal error"}})
            return
        rf = body.get("response_format") or {}
        if f.refuse_json_schema and rf.get("type") == "json_schema":
            h._send(
                400,
                {
                    "error": {
                        "message": "response_format json_schema is not supported by this server",
                        "type": "invalid_request_error",
                    }
                },
            )
            return
        finish = "stop"
        with self.state.lock:
            if f.invalid_json > 0:
                f.invalid_json -= 1
                content = '{"codes": [ this is not json'
            elif f.length > 0:
                f.length -= 1
                content, finish = '{"codes": [{"code_id": "', "length"
            else:
                content = ""
        if not content:
            content = self.responder(body)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        h._send(
            200,
            {
                "id": f"chatcmpl-{len(self.state.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(content.split()),
                    "total_tokens": prompt_tokens + len(content.split()),
                },
            },
        )

    def stop(self) -> None:
        """Stop serving."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
