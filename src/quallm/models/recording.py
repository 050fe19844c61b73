"""Record and replay model exchanges as readable JSON files, one per request.

A recording holds the request (model, endpoint identity, messages, schema, parameters) and the
completion. Requests carry no keys or headers by construction (see ``ChatRequest``), and a scrub pass
removes anything that still looks like a secret. Replay answers only from recordings and, on a miss,
says how the request differs from the nearest recording.
"""

from __future__ import annotations

import difflib
import json
import threading
from pathlib import Path
from typing import Any

from quallm.core.errors import ConfigError, ReplayMissError
from quallm.core.redact import redact_value
from quallm.models.base import ChatModel, ChatRequest, Completion, ModelWrapper, OutputMode

FORMAT = "quallm-recording/1"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class RecordingModel(ModelWrapper):
    """Wraps a backend; writes every exchange to ``directory`` as it happens."""

    def __init__(self, inner: ChatModel, directory: str | Path) -> None:
        super().__init__(inner)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def complete(self, request: ChatRequest) -> Completion:
        """Forward the request and save the exchange."""
        completion = self.inner.complete(request)
        record = {
            "format": FORMAT,
            "key": request.key(),
            "request": request.model_dump(mode="json"),
            "response": completion.model_dump(mode="json", exclude={"cached"}),
        }
        _atomic_write(
            self.directory / f"{request.key()[:24]}.json",
            json.dumps(redact_value(record), indent=2, ensure_ascii=False) + "\n",
        )
        return completion


class ReplayModel:
    """Answers only from recordings; a request with no recording raises :class:`ReplayMissError`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        files = sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []
        if not files:
            raise ConfigError(f"{self.directory}: no recordings to replay")
        self._records: dict[str, dict[str, Any]] = {}
        for f in files:
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{f}: not a valid recording ({exc.msg})") from exc
            if rec.get("format") != FORMAT:
                continue
            self._records[ChatRequest.model_validate(rec["request"]).key()] = rec
        if not self._records:
            raise ConfigError(f"{self.directory}: no recordings in format {FORMAT}")
        first = next(iter(self._records.values()))["request"]
        self._name = first["model"]
        self._endpoint = first["endpoint"]
        self._mode = OutputMode(first.get("output_mode", "json_schema"))
        self.used: set[str] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The recorded model's id."""
        return self._name

    @property
    def endpoint(self) -> str:
        """The recorded endpoint identity."""
        return self._endpoint

    @property
    def output_mode(self) -> OutputMode:
        """The recorded output mode."""
        return self._mode

    def count_tokens(self, text: str) -> int:
        """Approximate count (o200k); replay does not have the recorded model's tokenizer."""
        from quallm.ingest.tokenizers import TiktokenTokenizer

        return TiktokenTokenizer("o200k_base").count(text)

    def unused(self) -> list[str]:
        """Keys of recordings no request has used (a test may assert this is empty)."""
        return sorted(set(self._records) - self.used)

    def complete(self, request: ChatRequest) -> Completion:
        """The recorded completion for exactly this request."""
        key = request.key()
        rec = self._records.get(key)
        if rec is None:
            raise ReplayMissError(self._explain_miss(request))
        with self._lock:
            self.used.add(key)
        return Completion.model_validate({**rec["response"], "cached": False})

    def _explain_miss(self, request: ChatRequest) -> str:
        want = request.model_dump(mode="json")
        flat = "\n".join(m["content"] for m in want["messages"])

        def closeness(rec: dict[str, Any]) -> float:
            other = "\n".join(m["content"] for m in rec["request"]["messages"])
            return difflib.SequenceMatcher(None, flat, other, autojunk=False).quick_ratio()

        nearest = max(self._records.values(), key=closeness)["request"]
        diffs = [
            f"{k}: recorded {nearest.get(k)!r}, requested {want[k]!r}"
            for k in want
            if k != "messages" and nearest.get(k) != want[k]
        ]
        for i, (a, b) in enumerate(zip(nearest["messages"], want["messages"], strict=False)):
            if a != b:
                lines = list(
                    difflib.unified_diff(
                        a["content"].splitlines(), b["content"].splitlines(), "recorded", "requested", n=1, lineterm=""
                    )
                )
                diffs.append(f"message {i} ({b['role']}) differs:\n" + "\n".join(lines[:20]))
                break
        if len(nearest["messages"]) != len(want["messages"]):
            diffs.append(f"recorded {len(nearest['messages'])} messages, requested {len(want['messages'])}")
        return f"no recording in {self.directory} for this request; nearest recording differs in:\n" + "\n".join(
            diffs[:8]
        )
