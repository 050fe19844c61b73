"""Keep secrets out of everything quallm writes: the one redaction function.

A server that echoes the request's ``Authorization`` header in an error body would otherwise put the
API key into ``results/<id>.json``, ``log.jsonl`` and recordings. :func:`redact` removes

- every secret registered with :func:`register_secret` (the configured API keys), whole or as any
  fragment of :data:`MIN_FRAGMENT` characters or more, and
- anything that looks like a bearer token, an OpenAI-style ``sk-...`` key or an ``api-key`` value.

It is applied where errors are described (:func:`quallm.core.errors.describe`, hence
``Failure.from_error``), where log lines are written (``RunDir.log``) and where recordings and cached
answers are stored.
"""

from __future__ import annotations

import re
import threading
from typing import Any

REDACTED = "[REDACTED]"
MIN_FRAGMENT = 8  # any run of this many characters of a registered key is redacted

_PATTERNS = re.compile(
    r"(?i:\bbearer\s+[A-Za-z0-9\-._~+/]{12,}=*)"
    r"|\bsk-[A-Za-z0-9_\-]{12,}"
    r"|(?i:(?<=api[-_]key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9\-._~+/]{12,})"
)

_lock = threading.Lock()
_secrets: set[str] = set()
_windows: frozenset[str] = frozenset()


def register_secret(value: str | None) -> None:
    """Redact ``value`` (and any long fragment of it) from everything written from now on.

    Values shorter than :data:`MIN_FRAGMENT` characters are redacted only when whole."""
    global _windows
    if not value or not value.strip():
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _windows = frozenset(
            s[i : i + MIN_FRAGMENT] for s in _secrets for i in range(len(s) - MIN_FRAGMENT + 1)
        )


def _fragment_spans(text: str, windows: frozenset[str]) -> list[tuple[int, int]]:
    """Merged spans of ``text`` covered by any window of a registered secret."""
    spans: list[tuple[int, int]] = []
    for i in range(len(text) - MIN_FRAGMENT + 1):
        if text[i : i + MIN_FRAGMENT] in windows:
            if spans and i <= spans[-1][1]:
                spans[-1] = (spans[-1][0], i + MIN_FRAGMENT)
            else:
                spans.append((i, i + MIN_FRAGMENT))
    return spans


def redact(text: str) -> str:
    """``text`` with registered secrets (whole or any 8+ character fragment) and anything that looks
    like a bearer token or API key replaced by ``[REDACTED]``."""
    with _lock:
        secrets, windows = tuple(_secrets), _windows
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    if windows and len(text) >= MIN_FRAGMENT:
        spans = _fragment_spans(text, windows)
        if spans:
            parts, last = [], 0
            for a, b in spans:
                parts += [text[last:a], REDACTED]
                last = b
            text = "".join(parts) + text[last:]
    return _PATTERNS.sub(REDACTED, text)


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside ``value`` (dicts, lists, tuples); header-like
    keys (``authorization``, ``api_key``, ``api-key``) are dropped."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: redact_value(v) for k, v in value.items()
            if not (isinstance(k, str) and k.lower() in {"authorization", "api_key", "api-key"})
        }
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
