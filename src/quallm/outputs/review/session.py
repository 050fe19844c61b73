"""One review session: a run's queue, the codebook, the log, and what one reviewer has decided so far.

The web app (``app.py``) is a thin layer over this; scripts and tests can drive it directly too.
Every decision goes through :meth:`ReviewSession.decide`, which appends it to the log (fsynced) before
it changes the in-memory state, so the state shown is never ahead of the file.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from quallm.analysis.reviewed import review_counts
from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError, InputError, QuallmError
from quallm.core.transcript import Transcript, Turn
from quallm.ingest.qdpx import utf16_to_cp
from quallm.run.opening import OpenRun, read_manifest
from quallm.run.review_log import REVIEW_FILE, CodingRef, Decision, DecisionLog, read_log
from quallm.run.review_state import ReviewItem, ReviewState, build_items, fold
from quallm.run.rundir import RunDir

StatusFilter = Literal["all", "pending", "decided", "accepted", "rejected", "recoded"]


class DecisionIn(BaseModel):
    """A decision as posted to ``/api/decisions`` (see the API section of the README)."""

    action: Literal["accept", "reject", "recode", "add", "reviewed", "undo"]
    item: str | None = None
    code_id: str | None = None
    transcript_id: str | None = None
    turn_index: int | None = None
    start: int | None = None
    end: int | None = None
    offsets: Literal["codepoint", "utf16"] = "codepoint"
    decision: str | None = Field(default=None, description="undo: the decision to take back (default: the last)")
    note: str | None = Field(default=None, max_length=2000)


class DecisionRefused(QuallmError):
    """A decision that cannot be recorded (unknown item, bad offsets...); the message says why."""


class ReviewSession:
    """The run being reviewed by one reviewer."""

    def __init__(self, run_dir: str | Path, reviewer: str) -> None:
        if not reviewer.strip():
            raise ConfigError("the reviewer name is empty")
        self.run = RunDir(run_dir)
        self.reviewer = reviewer.strip()
        self.notices: list[str] = []
        self.transcripts, self.codebook, results = _load(self.run, self.notices)
        self.items = [it for it in build_items(results) if it.coding.transcript_id in self.transcripts]
        self.by_id = {it.id: it for it in self.items}
        self.log = DecisionLog(self.run.path / REVIEW_FILE)
        read = read_log(self.log.path)
        self.log_problems = read.problems
        self.decisions = read.decisions
        self._lock = threading.Lock()
        self.state: ReviewState = fold(self.decisions, self.reviewer)

    # --- reading

    def item_view(self, it: ReviewItem) -> dict[str, Any]:
        """An item as the API returns it: the coding, its status and the turn it sits in, cut around the quote."""
        c = it.coding
        t = self.transcripts[c.transcript_id]
        d = self.state.item_decisions.get(it.id)
        return {
            "id": it.id, "candidate": it.candidate, "status": self.state.status(it.id),
            "decision": None if d is None else {"id": d.id, "action": d.action, "code_id": d.code_id, "time": d.time},
            "transcript_id": c.transcript_id, "code_id": c.code_id, "start": c.start, "end": c.end,
            "turn_index": c.turn_index, "speaker": c.speaker, "quote": c.quote, "rationale": c.rationale,
            "probability": c.probability, "confidence": c.confidence, "coder": c.coder,
            "context": _context(t, c.start, c.end, c.turn_index),
        }

    def added_view(self, d: Decision) -> dict[str, Any]:
        """A coding the reviewer added, with its context."""
        ref = d.coding
        assert ref is not None
        t = self.transcripts.get(ref.transcript_id)
        return {
            "decision": d.id, "transcript_id": ref.transcript_id, "code_id": ref.code_id, "start": ref.start,
            "end": ref.end, "turn_index": ref.turn_index, "quote": ref.quote, "time": d.time,
            "context": _context(t, ref.start, ref.end, ref.turn_index) if t else None,
        }

    def list_items(self, code: str | None = None, transcript: str | None = None, status: StatusFilter = "all",
                   candidates: bool = True) -> list[dict[str, Any]]:
        """The queue, filtered; the order is the queue's (lowest probability first)."""
        out = []
        for it in self.items:
            st = self.state.status(it.id)
            if code and it.coding.code_id != code:
                continue
            if transcript and it.coding.transcript_id != transcript:
                continue
            if not candidates and it.candidate:
                continue
            if status == "decided" and st == "pending":
                continue
            if status not in ("all", "decided") and st != status:
                continue
            out.append(self.item_view(it))
        return out

    def progress(self) -> dict[str, Any]:
        """Per code and per transcript: items, decided, and this reviewer's counts; transcripts reviewed."""
        codes: dict[str, dict[str, Any]] = {
            c.id: {"code_id": c.id, "label": c.label, "items": 0, "decided": 0} for c in self.codebook.codes
        }
        trans: dict[str, dict[str, Any]] = {
            tid: {"transcript_id": tid, "items": 0, "decided": 0, "reviewed": tid in self.state.reviewed,
                  "added": 0} for tid in self.transcripts
        }
        for it in self.items:
            done = self.state.status(it.id) != "pending"
            for row in (codes.setdefault(it.coding.code_id, {"code_id": it.coding.code_id, "label": it.coding.code_id,
                                                             "items": 0, "decided": 0}),
                        trans[it.coding.transcript_id]):
                row["items"] += 1
                row["decided"] += done
        for d in self.state.added:
            if d.transcript_id in trans:
                trans[d.transcript_id]["added"] += 1
        mine = [d for d in self.decisions if d.reviewer == self.reviewer]
        for counts in review_counts(mine, list(codes)):
            codes[counts.code_id].update(counts.model_dump(exclude={"code_id"}))
        return {
            "items": len(self.items),
            "decided": sum(self.state.status(it.id) != "pending" for it in self.items),
            "codes": list(codes.values()),
            "transcripts": list(trans.values()),
        }

    def summary(self) -> dict[str, Any]:
        """What the page needs once: the run, the reviewer, the codebook, notices and skipped log lines."""
        return {
            "run": self.run.path.name, "reviewer": self.reviewer,
            "codebook": [
                {"id": c.id, "kind": c.kind, "label": c.label, "definition": c.definition,
                 "include": list(c.include), "exclude": list(c.exclude)}
                for c in self.codebook.codes
            ],
            "transcripts": sorted(self.transcripts),
            "notices": self.notices,
            "log_problems": self.log_problems,
            "corrupt_lines": len(self.log_problems),
        }

    # --- deciding

    def decide(self, raw: Mapping[str, Any]) -> Decision:
        """Validate a posted decision, append it to the log (fsynced), then apply it; returns it as saved."""
        try:
            req = DecisionIn.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise DecisionRefused(f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}") from exc
        with self._lock:
            decision = self._build(req)
            self.log.append(decision)
            self.decisions.append(decision)
            self.state = fold(self.decisions, self.reviewer)
        return decision

    def _build(self, req: DecisionIn) -> Decision:
        common: dict[str, Any] = {"reviewer": self.reviewer, "action": req.action, "note": req.note or None}
        if req.action in ("accept", "reject", "recode"):
            it = self.by_id.get(req.item or "")
            if it is None:
                raise DecisionRefused(f"no item {req.item!r} in this run's queue")
            code = None
            if req.action == "recode":
                code = self._code(req.code_id)
                if code == it.coding.code_id:
                    raise DecisionRefused(f"the coding already has code {code}; accept it instead")
            return Decision(transcript_id=it.coding.transcript_id, item=it.id, coding=it.ref(), code_id=code,
                            start=it.coding.start, end=it.coding.end, **common)
        if req.action == "add":
            return self._add(req, common)
        if req.action == "reviewed":
            if req.transcript_id not in self.transcripts:
                raise DecisionRefused(f"no transcript {req.transcript_id!r} in this run")
            if req.transcript_id in self.state.reviewed:
                raise DecisionRefused(f"{req.transcript_id} is already marked reviewed")
            return Decision(transcript_id=req.transcript_id, **common)
        target = self.state.last_undoable() if req.decision is None else next(
            (d for d in self.state.active if d.id == req.decision), None)
        if target is None:
            raise DecisionRefused("nothing to undo" if req.decision is None
                                  else f"no standing decision {req.decision!r} of {self.reviewer}")
        return Decision(transcript_id=target.transcript_id, item=target.item, undoes=target.id,
                        coding=target.coding, code_id=target.code_id, start=target.start, end=target.end, **common)

    def _code(self, code_id: str | None) -> str:
        if not code_id or self.codebook.get(code_id) is None:
            raise DecisionRefused(f"unknown code {code_id!r}; the codebook has {', '.join(self.codebook.ids)}")
        return code_id

    def _add(self, req: DecisionIn, common: dict[str, Any]) -> Decision:
        code = self._code(req.code_id)
        t = self.transcripts.get(req.transcript_id or "")
        if t is None:
            raise DecisionRefused(f"no transcript {req.transcript_id!r} in this run")
        if req.start is None or req.end is None:
            raise DecisionRefused("add needs start and end")
        turn: Turn | None = None
        base, text = 0, t.text
        if req.turn_index is not None:
            if not 0 <= req.turn_index < len(t.turns):
                raise DecisionRefused(f"turn_index {req.turn_index} is out of range (0-{len(t.turns) - 1})")
            turn = t.turns[req.turn_index]
            base, text = turn.start, turn.text
        if req.offsets == "utf16":
            s, e = utf16_to_cp(text, req.start), utf16_to_cp(text, req.end)
            if s is None or e is None:
                raise DecisionRefused(f"UTF-16 offsets {req.start}-{req.end} do not fall on characters of the text")
        else:
            s, e = req.start, req.end
        if not 0 <= s < e <= len(text):
            raise DecisionRefused(f"span {req.start}-{req.end} is empty or outside the text (length {len(text)})")
        # A selection often takes in the spaces around the words; the coding is the words.
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s == e:
            raise DecisionRefused("the selection is only white space")
        start, end = base + s, base + e
        turn = turn or t.turn_at(start)
        ref = CodingRef(transcript_id=t.id, code_id=code, start=start, end=end,
                        turn_index=turn.index if turn else None, speaker=turn.speaker if turn else None,
                        quote=t.text[start:end])
        return Decision(transcript_id=t.id, coding=ref, code_id=code, start=start, end=end, **common)


def _context(t: Transcript, start: int | None, end: int | None, turn_index: int | None) -> dict[str, Any]:
    """The turn that holds a span, cut into before / quote / after, and the question asked before it."""
    turn: Turn | None = None
    if turn_index is not None and 0 <= turn_index < len(t.turns):
        turn = t.turns[turn_index]
    elif start is not None:
        turn = t.turn_at(start)
    if turn is None:
        return {"turn": None, "question": None}
    if start is not None and end is not None:
        s = min(max(start - turn.start, 0), len(turn.text))
        e = min(max(end - turn.start, s), len(turn.text))
    else:  # a coding of the whole turn
        s, e = 0, len(turn.text)
    question = next((p for p in reversed(t.turns[: turn.index]) if p.is_interviewer), None)
    if question is None and turn.index > 0:
        question = t.turns[turn.index - 1]
    return {
        "turn": {"index": turn.index, "speaker": turn.speaker, "before": turn.text[:s], "quote": turn.text[s:e],
                 "after": turn.text[e:]},
        "question": None if question is None else {"index": question.index, "speaker": question.speaker,
                                                   "text": question.text},
    }


def _load(run: RunDir, notices: list[str]) -> tuple[dict[str, Transcript], Codebook, list[Any]]:
    """The run's transcripts (a file that cannot be read is skipped with a notice), codebook and results."""
    if not run.path.exists():
        raise InputError(run.path, "does not exist; give the run directory 'quallm extract' wrote")
    if not run.path.is_dir():
        raise InputError(run.path, "is not a directory; give the run directory 'quallm extract' wrote")
    opened = read_manifest(run.path)
    if opened is None:
        raise InputError(run.path, "not a quallm run directory (no manifest.json); run 'quallm extract' first")
    if not run.results_dir.is_dir():
        raise InputError(run.path, "incomplete run: no results/ folder yet; let 'quallm extract' finish a transcript")
    it = OpenRun(run.path, opened)
    results = it.results
    if not results:
        raise InputError(run.path / "results", "incomplete run: no transcript has a result yet")
    if opened.status != "finished":
        notices.append(f"the run is not finished (status {opened.status!r}): reviewing the "
                       f"{len(results)} transcript(s) with results; resume 'quallm extract' for the rest")
    if not (opened.codebook and opened.codebook.path):
        raise InputError(run.path / "manifest.json", "names no codebook file (codebook.path)")
    codebook, _ = it.codebook()
    transcripts: dict[str, Transcript] = {}
    for r in results:
        try:
            transcripts[r.transcript_id] = it.transcript(r)
        except QuallmError as exc:
            notices.append(f"{exc}; its codings are left out of the review")
    if not transcripts:
        raise InputError(run.path, "none of the run's transcript files could be read: " + "; ".join(notices))
    return transcripts, codebook, results
