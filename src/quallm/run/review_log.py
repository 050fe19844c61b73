"""The review log: every reviewer decision, one JSON line each, appended to ``RUN_DIR/review.jsonl``.

The file is only ever appended to, never rewritten: a decision is written, flushed and fsynced before
:meth:`DecisionLog.append` returns, so one the UI shows as saved survives a kill of the server. Undo is
itself a decision (``action="undo"``, naming the decision it takes back). Reading skips and counts
lines that do not parse (a line torn by a crash, a hand edit), reporting each with its line number.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quallm.run.rundir import now_iso

REVIEW_FILE = "review.jsonl"

Action = Literal["accept", "reject", "recode", "add", "reviewed", "undo"]


class CodingRef(BaseModel):
    """The coding a decision concerns, as it stood when decided (so the log alone is enough to rebuild)."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    code_id: str
    start: int | None = None
    end: int | None = None
    turn_index: int | None = None
    speaker: str | None = None
    quote: str | None = None
    coder: str | None = Field(default=None, description="the machine coder; None for a coding the reviewer added")
    alignment: str | None = None
    rationale: str | None = None
    probability: float | None = None
    candidate: bool = Field(default=False, description="a proposal below the probability threshold")


class Decision(BaseModel):
    """One reviewer decision: one line of ``review.jsonl``.

    ``accept``/``reject``/``recode`` concern a machine coding (``item`` and ``coding``); ``recode`` sets
    ``code_id`` to the new code. ``add`` carries the new coding (code point offsets ``start``/``end`` into
    the transcript text). ``reviewed`` marks ``transcript_id`` as reviewed. ``undo`` takes back the
    decision ``undoes``.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: str = Field(default_factory=now_iso)
    reviewer: str = Field(min_length=1)
    action: Action
    transcript_id: str
    item: str | None = None
    coding: CodingRef | None = None
    code_id: str | None = None
    start: int | None = None
    end: int | None = None
    undoes: str | None = None
    note: str | None = None


class LogRead(BaseModel):
    """What reading a review log gave: the decisions, and the lines skipped (each reported)."""

    decisions: list[Decision] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    @property
    def corrupt(self) -> int:
        """How many lines were skipped."""
        return len(self.problems)


def read_log(path: str | Path) -> LogRead:
    """Every decision in ``path`` in file order; a missing file is an empty log."""
    p = Path(path)
    out = LogRead()
    if not p.is_file():
        return out
    with open(p, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                out.decisions.append(Decision.model_validate(json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                out.problems.append(f"{p}: line {n}: not a JSON line ({exc.__class__.__name__}); skipped")
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(x) for x in err["loc"]) or "line"
                out.problems.append(f"{p}: line {n}: {where}: {err['msg']}; skipped")
    return out


class DecisionLog:
    """Appends decisions to one review log, durably, from any number of threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, decision: Decision) -> Decision:
        """Write ``decision`` as one line and fsync it; returns only once it is on disk."""
        line = json.dumps(decision.model_dump(mode="json", exclude_none=True), ensure_ascii=False) + "\n"
        with self._lock:
            new = not self.path.exists()
            with open(self.path, "ab") as fh:
                # A line torn by a crash must not swallow the next decision: start on a fresh line.
                if not new and fh.tell() > 0 and not _ends_with_newline(self.path):
                    fh.write(b"\n")
                fh.write(line.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            if new:
                _fsync_dir(self.path.parent)
        return decision


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _fsync_dir(path: Path) -> None:
    """Make a newly created file's directory entry durable too (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
