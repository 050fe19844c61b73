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

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from quallm.core.errors import ConfigError
from quallm.core.redact import redact_value
from quallm.models.base import ChatModel, ChatRequest, Completion, ModelWrapper

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


_T = TypeVar("_T")


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Damage to the file itself (bad pages, truncation, not a database), as opposed to a busy or full disk."""
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


class ResponseCache:
    """SQLite store of completions by request key; safe across threads and processes.

    A damaged cache file (corrupt pages, truncated, not a database), met at open or mid-run, is
    moved aside to ``<name>.corrupt-<time>`` with a warning (in :attr:`warnings`, and passed to
    ``on_warning``) and the run goes on with a fresh, empty cache; ``discard_corrupt`` deletes it instead.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        on_warning: Callable[[str], None] | None = None,
        discard_corrupt: bool = False,
    ) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot create the cache folder ({exc.strerror})") from exc
        self.warnings: list[str] = []
        self._on_warning = on_warning
        self._discard_corrupt = discard_corrupt
        self._local = threading.local()
        self._lock = threading.Lock()
        self._generation = 0  # bumped when a damaged file is replaced; older connections are dropped
        self._hits = self._misses = self._stored = 0
        self._connections: list[sqlite3.Connection] = []
        self._guarded(lambda conn: None)  # open now, so a bad path or a damaged file shows at once

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared between threads.
        held: tuple[int, sqlite3.Connection] | None = getattr(self._local, "conn", None)
        if held is not None and held[0] == self._generation:
            return held[1]
        generation = self._generation
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._connections.append(conn)
        conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at each commit in WAL mode, and fast
        conn.execute(_SCHEMA)
        self._local.conn = (generation, conn)
        return conn

    def _guarded(self, op: Callable[[sqlite3.Connection], _T], *, discard: bool = False) -> _T:
        """Run ``op`` on this thread's connection; a damaged file is replaced once and ``op`` retried."""
        for attempt in (1, 2):
            generation = self._generation
            try:
                return op(self._conn())
            except sqlite3.DatabaseError as exc:
                if generation != self._generation:
                    continue  # another thread replaced the file under this connection: retry on a new one
                if attempt == 1 and _is_corruption(exc):
                    self._replace_damaged(exc, generation, discard=discard or self._discard_corrupt)
                    continue
                raise ConfigError(f"{self.path}: the response cache cannot be used ({exc})") from exc
        raise ConfigError(f"{self.path}: the response cache cannot be used")

    def _replace_damaged(self, exc: sqlite3.DatabaseError, generation: int, *, discard: bool) -> None:
        with self._lock:
            if generation != self._generation:
                return
            conns, self._connections = self._connections, []
            for c in conns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for f in self._files():
                if not f.exists():
                    continue
                if discard:
                    f.unlink()
                else:  # the -wal and -shm files go too: a stale WAL would be replayed into the new file
                    f.replace(f.with_name(f"{f.name}.corrupt-{stamp}"))
            self._generation += 1
        where = "deleted it" if discard else f"moved it aside to {self.path.name}.corrupt-{stamp}"
        message = f"{self.path}: the response cache is damaged ({exc}); {where} and started an empty cache"
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)

    def get(self, request: ChatRequest) -> Completion | None:
        """The cached completion for this request (marked ``cached=True``), or None."""
        key = request.key()
        row = self._guarded(
            lambda conn: conn.execute("SELECT completion FROM responses WHERE key = ?", (key,)).fetchone()
        )
        hit: Completion | None = None
        if row is not None:
            try:
                hit = Completion.model_validate({**json.loads(row[0]), "cached": True})
            except ValueError:  # a garbled entry is a miss: the request is asked afresh and stored again
                hit = None
        with self._lock:
            if hit is None:
                self._misses += 1
            else:
                self._hits += 1
        return hit

    def put(self, request: ChatRequest, completion: Completion) -> bool:
        """Store the completion if it is worth reusing; returns whether it was stored."""
        if not worth_caching(request, completion):
            return False
        # An answer that echoes a key is stored without it (it is then also what a later run gets).
        blob = json.dumps(redact_value(completion.model_dump(mode="json", exclude={"cached"})))
        row = (request.key(), request.model, request.prompt_id, blob, time.time())
        self._guarded(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO responses (key, model, prompt_id, completion, created) VALUES (?, ?, ?, ?, ?)",
                row,
            )
        )
        with self._lock:
            self._stored += 1
        return True

    def stats(self) -> CacheStats:
        """Entries and size on disk; hits, misses and stores in this process."""
        (entries,) = self._guarded(lambda conn: conn.execute("SELECT COUNT(*) FROM responses").fetchone())
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
        """Delete every entry (a damaged file is deleted whole), and any damaged copies moved aside earlier;
        returns how many entries there were."""

        def wipe(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute("SELECT COUNT(*) FROM responses").fetchone()
            conn.execute("DELETE FROM responses")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return int(n)

        n = self._guarded(wipe, discard=True)
        for aside in self.path.parent.glob(f"{self.path.name}*.corrupt-*"):
            aside.unlink(missing_ok=True)
        return n

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
