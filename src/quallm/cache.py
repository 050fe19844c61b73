"""A content-addressed response cache: the same request is never paid for twice.

Keyed on :meth:`ChatRequest.key` (sha256 of everything that can change an answer), so a rerun, a
resumed run after a crash or kill, or a second run with the same inputs answers from disk. Only
answers worth reusing are stored: ``finish_reason == "stop"``, non-empty content, and (when the
request has a schema) JSON that conforms to it, so a garbled or truncated answer is asked afresh
next time instead of being replayed forever. Requests carry no keys or headers, and only the
completion is stored. SQLite in WAL mode, one connection per thread, so concurrent units and
concurrent processes can share one file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from quallm.errors import ConfigError
from quallm.models.base import ChatModel, ChatRequest, Completion, ModelWrapper
from quallm.redact import redact_value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    completion TEXT NOT NULL,
    created REAL NOT NULL
)
"""


CACHE_ENV = "QUALLM_CACHE"


def default_cache_path() -> Path:
    """``$QUALLM_CACHE``, else ``<user cache dir>/quallm/responses.sqlite3`` (platformdirs)."""
    import os

    import platformdirs

    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("quallm")) / "responses.sqlite3"


class CacheStats(BaseModel):
    """What the cache holds, and how this process has used it."""

    model_config = ConfigDict(frozen=True)

    path: str
    entries: int
    size_bytes: int
    hits: int
    misses: int
    stored: int


def _strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rstrip().removesuffix("```")
    return t.strip()


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value`` fits the subset of JSON Schema quallm sends (type, properties, required,
    additionalProperties, enum, items, minItems/maxItems, minimum/maximum, maxLength).

    Deliberately small: it only decides whether an answer is worth caching, so an unknown keyword is
    ignored rather than refused.
    """
    if "enum" in schema and value not in schema["enum"]:
        return False
    t = schema.get("type")
    if t == "object":
        if not isinstance(value, dict):
            return False
        props: dict[str, Any] = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and any(k not in props for k in value):
            return False
        return all(conforms(value[k], s) for k, s in props.items() if k in value)
    if t == "array":
        if not isinstance(value, list):
            return False
        if len(value) > schema.get("maxItems", len(value)) or len(value) < schema.get("minItems", 0):
            return False
        items = schema.get("items")
        return all(conforms(v, items) for v in value) if isinstance(items, dict) else True
    if t in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if t == "integer" and not float(value).is_integer():
            return False
        return bool(schema.get("minimum", value) <= value <= schema.get("maximum", value))
    if t == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
    if t == "boolean":
        return isinstance(value, bool)
    return True


def worth_caching(request: ChatRequest, completion: Completion) -> bool:
    """Only complete answers that parse (and fit the request's schema, when it has one)."""
    if completion.finish_reason != "stop" or not completion.content.strip():
        return False
    if request.json_schema is None:
        return True
    try:
        value = json.loads(_strip_fences(completion.content))
    except json.JSONDecodeError:
        return False
    return conforms(value, request.json_schema)


class ResponseCache:
    """SQLite store of completions by request key; safe across threads and processes."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot create the cache folder ({exc.strerror})") from exc
        self._local = threading.local()
        self._lock = threading.Lock()
        self._hits = self._misses = self._stored = 0
        self._connections: list[sqlite3.Connection] = []
        self._conn().execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared between threads.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
                conn.execute("PRAGMA synchronous=NORMAL")  # durable at each commit in WAL mode, and fast
            except sqlite3.Error as exc:
                raise ConfigError(f"{self.path}: cannot open the response cache ({exc})") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get(self, request: ChatRequest) -> Completion | None:
        """The cached completion for this request (marked ``cached=True``), or None."""
        row = self._conn().execute("SELECT completion FROM responses WHERE key = ?", (request.key(),)).fetchone()
        with self._lock:
            if row is None:
                self._misses += 1
            else:
                self._hits += 1
        if row is None:
            return None
        return Completion.model_validate({**json.loads(row[0]), "cached": True})

    def put(self, request: ChatRequest, completion: Completion) -> bool:
        """Store the completion if it is worth reusing; returns whether it was stored."""
        if not worth_caching(request, completion):
            return False
        # An answer that echoes a key is stored without it (it is then also what a later run gets).
        blob = json.dumps(redact_value(completion.model_dump(mode="json", exclude={"cached"})))
        self._conn().execute(
            "INSERT OR REPLACE INTO responses (key, model, prompt_id, completion, created) VALUES (?, ?, ?, ?, ?)",
            (request.key(), request.model, request.prompt_id, blob, time.time()),
        )
        with self._lock:
            self._stored += 1
        return True

    def stats(self) -> CacheStats:
        """Entries and size on disk; hits, misses and stores in this process."""
        (entries,) = self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()
        size = sum(p.stat().st_size for p in self._files() if p.exists())
        with self._lock:
            return CacheStats(
                path=str(self.path),
                entries=int(entries),
                size_bytes=size,
                hits=self._hits,
                misses=self._misses,
                stored=self._stored,
            )

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        conn = self._conn()
        (n,) = conn.execute("SELECT COUNT(*) FROM responses").fetchone()
        conn.execute("DELETE FROM responses")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(n)

    def close(self) -> None:
        """Close every connection this cache opened."""
        with self._lock:
            conns, self._connections = self._connections, []
        for c in conns:
            c.close()
        self._local = threading.local()

    def _files(self) -> list[Path]:
        return [self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")]


class CachedModel(ModelWrapper):
    """Wraps a backend; answers repeated requests from a :class:`ResponseCache`."""

    def __init__(self, inner: ChatModel, cache: ResponseCache) -> None:
        super().__init__(inner)
        self.cache = cache

    def complete(self, request: ChatRequest) -> Completion:
        """A cached answer, or the wrapped model's (stored the moment it arrives)."""
        hit = self.cache.get(request)
        if hit is not None:
            return hit
        completion = self.inner.complete(request)
        self.cache.put(request, completion)
        return completion
