"""Transcripts that arrive as cues or records (WebVTT, SRT, JSON), rendered into one canonical text.

The canonical text reads like a plain transcript: ``[time] Speaker: words`` with a blank line between
turns; each turn's offsets cover its words only. Consecutive cues of one speaker become one turn.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import webvtt

from quallm.core.errors import InputError
from quallm.core.transcript import Transcript, Turn
from quallm.ingest.transcripts.speakers import guess_interviewers

_PREFIX = re.compile(r"^(?P<label>[A-Z][\w.'’\-]*(?:\s[A-Z][\w.'’\-]*){0,4})\s*:\s+(?P<rest>.+)$", re.DOTALL)
_TAGS = re.compile(r"</?[^>]+>")


@dataclass
class _Piece:
    speaker: str
    text: str
    start: str | None = None
    end: str | None = None


@dataclass
class _Builder:
    pieces: list[_Piece] = field(default_factory=list)

    def add(self, speaker: str, text: str, start: str | None = None, end: str | None = None) -> None:
        text = " ".join(text.split())
        if not text:
            return
        if self.pieces and self.pieces[-1].speaker == speaker:
            last = self.pieces[-1]
            last.text += " " + text
            last.end = end or last.end
        else:
            self.pieces.append(_Piece(speaker, text, start, end))

    def build(self, transcript_id: str, source: str, fmt: str, warnings: list[str]) -> Transcript:
        if not self.pieces:
            raise InputError(source, "no text found")
        interviewers = guess_interviewers([(p.speaker, p.text) for p in self.pieces])
        parts: list[str] = []
        pos = 0
        turns = []
        for i, p in enumerate(self.pieces):
            head = (f"[{p.start}] " if p.start else "") + f"{p.speaker}: "
            start = pos + len(head)
            parts.append(head + p.text + "\n\n")
            turns.append(
                Turn(
                    index=i,
                    speaker=p.speaker,
                    start=start,
                    end=start + len(p.text),
                    text=p.text,
                    is_interviewer=p.speaker in interviewers,
                    timestamp=p.start,
                    end_timestamp=p.end,
                )
            )
            pos += len(parts[-1])
        return Transcript(
            id=transcript_id,
            source=source,
            format=fmt,
            text="".join(parts),
            turns=tuple(turns),
            warnings=tuple(warnings),
        )


def _split_speaker(text: str, voice: str | None) -> tuple[str, str]:
    if voice:
        return voice.strip(), text
    m = _PREFIX.match(text.strip())
    if m:
        return m.group("label").strip(), m.group("rest")
    return "unknown", text


def parse_captions(text: str, *, transcript_id: str, source: str, fmt: str, warnings: list[str]) -> Transcript:
    """WebVTT (``<v Name>`` voice tags or ``Name:`` prefixes) or SRT captions."""
    try:
        if fmt == "srt":
            captions: list[_Cue] | list[webvtt.Caption] = _srt_captions(text)
        else:
            captions = list(webvtt.from_buffer(io.StringIO(text)).captions)
    except Exception as exc:  # webvtt raises several error types for malformed files
        raise InputError(source, f"not a valid {fmt.upper()} file ({exc})") from exc
    if fmt == "vtt":
        bad = _bad_timings(text)
        if bad and not captions:
            raise InputError(
                source, f"no cue has valid timings: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            )
        if bad:
            warnings.append(f"{source}: {len(bad)} cue(s) with malformed timings skipped: {bad[0]}")
    b = _Builder()
    unknown = 0
    for c in captions:
        speaker, words = _split_speaker(_TAGS.sub("", c.raw_text), getattr(c, "voice", None))
        unknown += speaker == "unknown"
        b.add(speaker, words, _trim_ts(c.start), _trim_ts(c.end))
    if captions and unknown == len(captions):
        warnings.append(f"{source}: no speaker names in the captions; all text is one speaker")
    return b.build(transcript_id, source, fmt, warnings)


@dataclass
class _Cue:
    start: str
    end: str
    raw_text: str
    voice: str | None = None


_SRT_TIME = re.compile(r"(\d{1,2}:\d{2}:\d{2}[,.]\d{1,3})\s*-->\s*(\d{1,2}:\d{2}:\d{2}[,.]\d{1,3})")


def _srt_captions(text: str) -> list[_Cue]:
    # webvtt-py's SRT reader wants a file path; SRT is simple enough to read here directly.
    cues = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.strip().split("\n")
        for k, line in enumerate(lines):
            m = _SRT_TIME.search(line)
            if m:
                cues.append(_Cue(m.group(1).replace(",", "."), m.group(2).replace(",", "."), "\n".join(lines[k + 1 :])))
                break
    if not cues:
        raise ValueError("no cues with timings found")
    return cues


# As lenient as webvtt-py's own cue timing pattern, so a line flagged here is one it skipped.
_VTT_TS = r"(?:\d+:)?\d{1,2}:\d{1,2}\.\d{1,3}"
_VTT_TIMING = re.compile(rf"^\s*{_VTT_TS}\s*-->\s*{_VTT_TS}")


def _bad_timings(text: str) -> list[str]:
    """Cue timing lines WebVTT readers skip silently, as ``line N: '...'`` (so the error says what is wrong)."""
    return [
        f"line {n}: malformed timing {line.strip()!r} (expected HH:MM:SS.mmm --> HH:MM:SS.mmm)"
        for n, line in enumerate(text.split("\n"), start=1)
        if "-->" in line and line.strip()[:1].isdigit() and not _VTT_TIMING.match(line)
    ]


def _trim_ts(ts: str) -> str:
    return ts[:-4] if re.match(r"^\d+:\d{2}:\d{2}\.\d{3}$", ts) and ts.endswith(".000") else ts


def parse_json(text: str, *, transcript_id: str, source: str, warnings: list[str]) -> Transcript:
    """A JSON list of ``{speaker, text}`` (or ``{"turns": [...]}``), optional ``start``/``timestamp``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(source, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if isinstance(data, dict):
        data = data.get("turns", data.get("segments"))
    if not isinstance(data, list) or not data:
        raise InputError(source, 'expected a non-empty JSON list of {"speaker", "text"} objects')
    b = _Builder()
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise InputError(source, f'item {i} is not an object with a "text" string')
        speaker = str(item.get("speaker") or item.get("name") or "unknown")
        ts = item.get("start", item.get("timestamp"))
        b.add(speaker, item["text"], None if ts is None else str(ts))
    return b.build(transcript_id, source, "json", warnings)


def read_docx_text(path: Path) -> str:
    """The paragraphs of a Word document, one per line block, for the labelled-text parser."""
    import docx  # python-docx; imported here because only .docx needs it
    from docx.opc.exceptions import PackageNotFoundError

    from quallm.ingest.archive import ArchiveLimitError, SafeArchive

    # python-docx inflates every part of the package: first make sure that stays within the caps.
    try:
        with SafeArchive(path) as archive:
            archive.check()
    except ArchiveLimitError:
        raise
    except InputError as exc:
        raise InputError(path, f"not a readable Word document ({exc.problem})") from exc
    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise InputError(path, f"not a readable Word document ({type(exc).__name__})") from exc
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise InputError(path, f"not a readable Word document ({type(exc).__name__}: {exc})") from exc
    paras = [p.text.strip() for p in document.paragraphs]
    for table in document.tables:  # Teams/Otter exports sometimes put the dialogue in a table
        for row in table.rows:
            cells = [c.text.strip() for c in row.cells]
            if len(cells) >= 2 and cells[0] and cells[-1]:
                paras.append(f"{cells[0]}: {cells[-1]}")
    text = "\n\n".join(p for p in paras if p)
    if not text.strip():
        raise InputError(path, "the Word document has no text")
    return text
