"""A small OpenAI-compatible server on 127.0.0.1, for tests and benchmarks.

Built on the standard library's threading HTTP server (no extra dependency). It answers chat
completions with a responder function and can be told to misbehave for a number of requests: refuse
``json_schema``, return invalid JSON, stop at ``length``, answer 429 with Retry-After or 500, hang past
the client's timeout, drop the connection, invent quotes, answer with wrong field types, or pick one of
these at random per request (:meth:`Faults.random_mix`). It also serves ``/v1/files`` and
``/v1/batches`` (the Batch API), and logs every request with a key (sha256 of its canonical body).
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], str]

# A quote no transcript holds: what ``bad_quote`` makes the "model" claim was said.
INVENTED_QUOTE = "Purple elephants negotiated the xylophone treaty on Neptune last winter."

# Faults served before the output mode is looked at (transport) and after it (content).
TRANSPORT_FAULTS = ("429", "500", "hang", "drop")
CONTENT_FAULTS = ("invalid_json", "length", "bad_quote", "schema_invalid")
ALL_FAULTS = TRANSPORT_FAULTS + CONTENT_FAULTS
# Not in the random mix (a 401 is final, not retried): a 401 whose body echoes the request's
# Authorization header, as some servers and proxies do.
AUTH_FAULTS = ("echo_auth",)


@dataclass
class Faults:
    """Misbehaviour to inject; counters are decremented as faults are served.

    ``pause_after`` holds every chat request after that many answered ones until
    :meth:`OpenAITestServer.release` (or stop): a test can then kill a client at a known point.
    """

    refuse_json_schema: bool = False
    invalid_json: int = 0
    length: int = 0
    rate_limited: int = 0
    retry_after: float = 0.0
    server_error: int = 0
    latency: float = 0.0
    hang: int = 0
    hang_seconds: float = 2.0
    drop: int = 0
    bad_quote: int = 0
    schema_invalid: int = 0
    echo_auth: int = 0
    pause_after: int | None = None
    mix_rate: float = 0.0
    mix_seed: int = 0
    mix_kinds: tuple[str, ...] = ALL_FAULTS
    _rng: random.Random = field(default_factory=random.Random, init=False, repr=False)
    _mixed: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.mix_kinds) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(ALL_FAULTS)}")
        self._rng = random.Random(self.mix_seed)

    @classmethod
    def random_mix(
        cls, seed: int, rate: float, kinds: tuple[str, ...] = ALL_FAULTS, **settings: Any
    ) -> Faults:
        """Each request gets, with probability ``rate``, one fault from ``kinds`` picked at random (seeded)."""
        return cls(mix_rate=rate, mix_seed=seed, mix_kinds=tuple(kinds), **settings)

    def _take(self, name: str) -> bool:
        attr = {"429": "rate_limited", "500": "server_error"}.get(name, name)
        if getattr(self, attr) > 0:
            setattr(self, attr, getattr(self, attr) - 1)
            return True
        return False

    def pick(self, stage: tuple[str, ...]) -> str | None:
        """The fault for this request at this stage (counted faults first, then the random mix)."""
        for name in stage:
            if self._take(name):
                return name
        if self.mix_rate > 0 and stage == TRANSPORT_FAULTS:
            # One draw per request (at the first stage) keeps the sequence a function of the seed only.
            if self._rng.random() < self.mix_rate:
                self._mixed = self._rng.choice(self.mix_kinds)
            else:
                self._mixed = None
        mixed = self._mixed
        if mixed in stage:
            self._mixed = None
            return mixed
        return None


@dataclass
class BatchBehaviour:
    """How ``/v1/batches`` behaves: polls before a batch is "completed", and which lines fail."""

    polls_before_complete: int = 2
    fail_every: int = 0  # every n-th line (1-based) goes to the error file; 0 = none


@dataclass
class LogEntry:
    """One request as the server saw it."""

    path: str
    key: str
    received: float
    answered: float | None = None  # when a full 200 response was written
    status: int | None = None
    fault: str | None = None


@dataclass
class ServerState:
    """What the server has seen."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)
    faults_served: Counter[str] = field(default_factory=Counter)
    batch_requests: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiting: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def body_key(body: dict[str, Any]) -> str:
    """sha256 of a request body's canonical JSON (the server's view of a request key)."""
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _is_scoring(body: dict[str, Any]) -> bool:
    """A yes/no check (one token, logprobs): answered by the scorer. Generated answers get no logprobs here."""
    return bool(body.get("logprobs")) and body.get("max_tokens") == 1


def _default_responder(body: dict[str, Any]) -> str:
    from quallm.models.fake import minimal_instance

    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
    return json.dumps(minimal_instance(schema))


def _schema_of(body: dict[str, Any]) -> dict[str, Any]:
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema")
    if schema:
        return dict(schema)
    # json_object / plain modes carry the schema at the end of the system prompt.
    system = str((body.get("messages") or [{}])[0].get("content", ""))
    marker = "validates against this JSON schema:\n"
    if marker in system:
        try:
            return dict(json.loads(system.rsplit(marker, 1)[1]))
        except json.JSONDecodeError:
            pass
    return {}


def _item_props(schema: dict[str, Any], key: str) -> dict[str, Any]:
    return dict(schema.get("properties", {}).get(key, {}).get("items", {}).get("properties", {}))


def invent_quotes(content: str, body: dict[str, Any]) -> str:
    """The honest answer plus one claim with no evidence in the transcript.

    Chunk answers get a quote nobody said; per-turn answers a sentence number past the end; summaries
    an evidence number that does not exist. The honest codings stay, so nothing real is lost.
    """
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        return content
    schema = _schema_of(body)
    if isinstance(data, dict) and "codings" in data:
        ids = _item_props(schema, "codings").get("code_id", {}).get("enum") or [c["code_id"] for c in data["codings"]]
        if ids:
            data["codings"].append(
                {"segment": 1, "code_id": ids[0], "quote": INVENTED_QUOTE, "rationale": "invented", "confidence": 0.9}
            )
    elif isinstance(data, dict) and "codes" in data:
        props = _item_props(schema, "codes")
        ids = props.get("code_id", {}).get("enum") or [c["code_id"] for c in data["codes"]]
        if ids:
            data["codes"] = [{"code_id": ids[0], "sentence": int(props.get("sentence", {}).get("maximum", 998)) + 1}]
    elif isinstance(data, dict) and "points" in data:
        props = _item_props(schema, "points")
        top = int(props.get("quote_ids", {}).get("items", {}).get("maximum", 998))
        for p in data["points"]:
            p["quote_ids"] = [top + 1]
    return json.dumps(data)


def wrong_types(content: str) -> str:
    """Valid JSON with the answer's fields of the wrong type (lists as strings, strings as numbers)."""
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        return '{"codes": "none"}'
    if not isinstance(data, dict):
        return '{"codes": "none"}'
    return json.dumps({k: ("not a list" if isinstance(v, list) else 12345) for k, v in data.items()})


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Dropped and hung connections raise in handler threads on purpose; keep test output quiet."""


class OpenAITestServer:
    """Start with ``with OpenAITestServer(responder) as srv: srv.base_url``."""

    def __init__(
        self,
        responder: Responder | None = None,
        faults: Faults | None = None,
        model: str = "test-model",
        *,
        port: int = 0,
        batch: BatchBehaviour | None = None,
        scorer: Callable[[dict[str, Any]], dict[str, float]] | None = None,
    ):
        self.responder = responder or _default_responder
        # Requests that ask for logprobs (quallm's yes/no checks) are answered by the scorer: the
        # probability of each word as the first token, sent as top_logprobs like OpenAI does.
        self.scorer = scorer or (lambda body: {"yes": 0.9, "no": 0.1})
        self.faults = faults or Faults()
        self.batch = batch or BatchBehaviour()
        self.state = ServerState()
        self.model = model
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._conns: set[socket.socket] = set()
        self._ids = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of every chat completion request received."""
        with self.state.lock:
            return list(self.state.requests)

    def answered_keys(self) -> set[str]:
        """Keys of chat requests that got a complete 200 answer."""
        with self.state.lock:
            return {e.key for e in self.state.log if e.path == "chat" and e.answered is not None}

    def chat_keys(self) -> list[str]:
        """Keys of every chat request received, in order."""
        with self.state.lock:
            return [e.key for e in self.state.log if e.path == "chat"]

    def release(self) -> None:
        """Let requests held by ``Faults.pause_after`` go on."""
        self._released.set()

    def _new_id(self, prefix: str) -> str:
        with self.state.lock:
            self._ids += 1
            return f"{prefix}-{self._ids}"

    def start(self) -> OpenAITestServer:
        """Start serving in a background thread."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:  # keep test output quiet
                pass

            def setup(self) -> None:
                super().setup()
                with server.state.lock:
                    server._conns.add(self.connection)

            def finish(self) -> None:
                with server.state.lock:
                    server._conns.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_bytes(
                self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def drop(self) -> None:
                """Close the connection with no response at all."""
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length) if length else b""
                if self.path.endswith("/chat/completions"):
                    server._handle(self, json.loads(raw or b"{}"))
                elif self.path.endswith("/files"):
                    server._upload(self, raw)
                elif self.path.endswith("/batches"):
                    server._create_batch(self, json.loads(raw or b"{}"))
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_GET(self) -> None:
                parts = self.path.split("?")[0].rstrip("/").split("/")
                if len(parts) >= 3 and parts[-3] == "files" and parts[-1] == "content":
                    server._file_content(self, parts[-2])
                elif len(parts) >= 2 and parts[-2] == "files":
                    server._file_meta(self, parts[-1])
                elif len(parts) >= 2 and parts[-2] == "batches":
                    server._retrieve_batch(self, parts[-1])
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

        self._stopping.clear()
        self._httpd = _QuietServer(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    # --- chat completions -----------------------------------------------------------------------

    def _handle(self, h: Any, body: dict[str, Any]) -> None:
        f = self.faults
        entry = LogEntry(path="chat", key=body_key(body), received=time.time())
        with self.state.lock:
            self.state.requests.append(body)
            self.state.headers.append({k.lower(): v for k, v in h.headers.items()})
            self.state.log.append(entry)
            answered = sum(1 for e in self.state.log if e.path == "chat" and e.answered is not None)
            hold = f.pause_after is not None and answered >= f.pause_after and not self._released.is_set()
            if hold:
                self.state.waiting += 1
        if hold:
            while not (self._released.wait(0.05) or self._stopping.is_set()):
                pass
            with self.state.lock:
                self.state.waiting -= 1
            if self._stopping.is_set():
                h.drop()
                return
        with self.state.lock:
            fault = f.pick(AUTH_FAULTS) or f.pick(TRANSPORT_FAULTS)
            entry.fault = fault
            if fault:
                self.state.faults_served[fault] += 1
        if f.latency and self._stopping.wait(f.latency):
            h.drop()
            return
        if fault == "echo_auth":
            entry.status = 401
            auth = h.headers.get("Authorization", "")
            key = auth.removeprefix("Bearer ")
            h._send(401, {"error": {"message": f"Incorrect API key provided: {key}. Header: Authorization: {auth}",
                                    "type": "invalid_request_error", "code": "invalid_api_key",
                                    "headers": {"Authorization": auth}}})
            return
        if fault == "429":
            entry.status = 429
            h._send(
                429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": str(f.retry_after)}
            )
            return
        if fault == "500":
            entry.status = 500
            h._send(500, {"error": {"message": "internal error"}}, {"Retry-After": str(f.retry_after)})
            return
        if fault == "hang":
            self._stopping.wait(f.hang_seconds)  # past the client's timeout; it has given up by now
            h.drop()
            return
        if fault == "drop":
            h.drop()
            return
        rf = body.get("response_format") or {}
        if f.refuse_json_schema and rf.get("type") == "json_schema":
            entry.status = 400
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
        with self.state.lock:
            fault = f.pick(CONTENT_FAULTS)
            if fault:
                entry.fault = fault
                self.state.faults_served[fault] += 1
        content, finish = self._answer(body, fault)
        entry.status = 200
        h._send(200, self._completion(body, content, finish))
        entry.answered = time.time()

    def _answer(self, body: dict[str, Any], fault: str | None) -> tuple[str, str]:
        if fault == "invalid_json":
            return '{"codes": [ this is not json', "stop"
        if fault == "length":
            return '{"codes": [{"code_id": "', "length"
        if _is_scoring(body):
            probs = self.scorer(body)
            return max(probs, key=lambda w: probs[w]), "stop"
        content = self.responder(body)
        if fault == "bad_quote":
            content = invent_quotes(content, body)
        elif fault == "schema_invalid":
            content = wrong_types(content)
        return content, "stop"

    def _completion(self, body: dict[str, Any], content: str, finish: str) -> dict[str, Any]:
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        return {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                    **({"logprobs": self._logprobs(body)} if _is_scoring(body) else {}),
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(content.split()),
                "total_tokens": prompt_tokens + len(content.split()),
            },
        }

    def _logprobs(self, body: dict[str, Any]) -> dict[str, Any]:
        import math

        probs = self.scorer(body)
        top: list[dict[str, Any]] = [
            {"token": w, "logprob": math.log(max(p, 1e-12)), "bytes": None} for w, p in probs.items()
        ]
        first = max(top, key=lambda t: float(t["logprob"]))
        return {"content": [{**first, "top_logprobs": top}], "refusal": None}

    # --- files ----------------------------------------------------------------------------------

    def _upload(self, h: Any, raw: bytes) -> None:
        ctype = h.headers.get("Content-Type", "")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + raw
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
        if "file" not in fields:
            h._send(400, {"error": {"message": "no file in the upload"}})
            return
        filename, data = fields["file"]
        purpose = fields.get("purpose", (None, b"batch"))[1].decode()
        file_id = self._store_file(data, filename or "upload.jsonl", purpose)
        h._send(200, self.state.files[file_id]["meta"])

    def _store_file(self, data: bytes, filename: str, purpose: str) -> str:
        file_id = self._new_id("file")
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        with self.state.lock:
            self.state.files[file_id] = {"meta": meta, "data": data}
        return file_id

    def _file_meta(self, h: Any, file_id: str) -> None:
        f = self.state.files.get(file_id)
        if f is None:
            h._send(404, {"error": {"message": f"no file {file_id}"}})
            return
        h._send(200, f["meta"])

    def _file_content(self, h: Any, file_id: str) -> None:
        f = self.state.files.get(file_id)
        if f is None:
            h._send(404, {"error": {"message": f"no file {file_id}"}})
            return
        h._send_bytes(200, f["data"], "application/octet-stream")

    # --- batches --------------------------------------------------------------------------------

    def _create_batch(self, h: Any, body: dict[str, Any]) -> None:
        f = self.state.files.get(str(body.get("input_file_id")))
        if f is None:
            h._send(400, {"error": {"message": f"no input file {body.get('input_file_id')}"}})
            return
        batch_id = self._new_id("batch")
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        with self.state.lock:
            self.state.batches[batch_id] = {"batch": batch, "polls": 0}
        h._send(200, batch)

    def _retrieve_batch(self, h: Any, batch_id: str) -> None:
        rec = self.state.batches.get(batch_id)
        if rec is None:
            h._send(404, {"error": {"message": f"no batch {batch_id}"}})
            return
        with self.state.lock:
            rec["polls"] += 1
            polls = rec["polls"]
        batch = rec["batch"]
        if batch["status"] != "completed":
            if polls >= self.batch.polls_before_complete:
                self._run_batch(batch)
            else:
                batch["status"] = "in_progress"
        h._send(200, batch)

    def _run_batch(self, batch: dict[str, Any]) -> None:
        """Answer every line with the responder (no chat faults); every n-th line fails if asked."""
        lines = [json.loads(x) for x in self.state.files[batch["input_file_id"]]["data"].splitlines() if x.strip()]
        out, err = [], []
        for i, line in enumerate(lines, start=1):
            with self.state.lock:
                self.state.batch_requests.append(line)
            rid = self._new_id("batch_req")
            if self.batch.fail_every and i % self.batch.fail_every == 0:
                err.append(
                    {
                        "id": rid,
                        "custom_id": line["custom_id"],
                        "response": {
                            "status_code": 500,
                            "request_id": rid,
                            "body": {"error": {"message": "internal error", "type": "server_error"}},
                        },
                        "error": None,
                    }
                )
                continue
            content = self.responder(line["body"])
            out.append(
                {
                    "id": rid,
                    "custom_id": line["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": rid,
                        "body": self._completion(line["body"], content, "stop"),
                    },
                    "error": None,
                }
            )

        def jsonl(rows: list[dict[str, Any]]) -> bytes:
            return "".join(json.dumps(r) + "\n" for r in rows).encode()

        batch["output_file_id"] = self._store_file(jsonl(out), "output.jsonl", "batch_output") if out else None
        batch["error_file_id"] = self._store_file(jsonl(err), "errors.jsonl", "batch_output") if err else None
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())

    def stop(self) -> None:
        """Stop serving and cut every open connection (as a crashed server would)."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self.state.lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
