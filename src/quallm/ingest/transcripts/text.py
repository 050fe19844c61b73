"""Plain text and markdown transcripts with speaker labels.

Recognised: ``Interviewer:`` / ``Respondent:``, short codes (``INT:``, ``P3:``, ``R1:``), ``Q:`` / ``A:``,
personal names (``Helen Wright:``), names with a role in brackets (``Claire (interviewer):``,
``Martin (Respondent):``; the role decides who the interviewer is, the name is the speaker),
optional timestamps before the label (``[00:12:31]``, ``00:12:31``),
markdown bold labels (``**Interviewer:**``) and Otter-style label lines (``Helen Wright  0:03``) with
the words on the next line. A turn runs until the next label, over any number of paragraphs. The
canonical text is the file's own text, so offsets point into what the researcher sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quallm.core.transcript import Transcript, Turn
from quallm.ingest.transcripts.speakers import (
    INTERVIEWER_LABELS,
    RESPONDENT_LABELS,
    guess_interviewers,
    is_interviewer_label,
)

_TS = r"(?:\d{1,2}:)?\d{1,2}:\d{2}(?:[.,]\d{1,3})?"
_NAME = r"[A-Z0-9][\w.'’\-]*(?:\s(?:[A-Z0-9][\w.'’\-]*|de|van|von|der|da|al|bin|le|la)){0,4}"
_LABEL_LINE = re.compile(
    rf"^[ \t]*(?:[\[(]?(?P<ts>{_TS})[\])]?[ \t]*(?:[-–—][ \t]*)?)?"
    rf"(?:\*\*|__)?(?P<label>{_NAME})(?:[ \t]*\((?P<role>[A-Za-z][\w .'’\-]{{0,30}})\))?"
    rf"(?:\*\*|__)?[ \t]*:(?:\*\*|__)?(?:[ \t]+|$)"
)
_OTTER_LINE = re.compile(rf"^[ \t]*(?P<label>{_NAME})[ \t]{{1,}}(?P<ts>{_TS})[ \t]*$")
_KNOWN = re.compile(
    r"^(?:speaker\s*\d+|p\d+|r\d+|participant\s*\d*|respondent\s*\d*|interviewee\s*\d*|interviewer\s*\d*)$",
    re.IGNORECASE,
)
# Words that look like a label before a colon but are ordinary prose.
_NOT_LABELS = frozenset({"note", "notes", "nb", "e.g", "i.e", "example", "for example", "so", "yes", "no"})


@dataclass(frozen=True)
class _Mark:
    label: str
    line_start: int
    content_start: int
    timestamp: str | None
    role: str | None = None


def _is_known(label: str) -> bool:
    low = label.casefold()
    return low in INTERVIEWER_LABELS or low in RESPONDENT_LABELS or bool(_KNOWN.match(label))


def _find_marks(text: str) -> list[_Mark]:
    candidates: list[_Mark] = []
    pos = 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = _LABEL_LINE.match(line)
        if m and m.group("label").casefold().rstrip(".") not in _NOT_LABELS:
            role = (m.group("role") or "").strip() or None
            candidates.append(_Mark(m.group("label").strip(), pos, pos + m.end(), m.group("ts"), role))
        else:
            o = _OTTER_LINE.match(line)
            if o and i + 1 < len(lines):
                candidates.append(_Mark(o.group("label").strip(), pos, pos + len(line) + 1, o.group("ts")))
        pos += len(line) + 1
    counts: dict[str, int] = {}
    for c in candidates:
        counts[c.label] = counts.get(c.label, 0) + 1
    # A name counts as a speaker label only if it labels two or more lines, so "Note: ..." or a
    # one-off "Tuesday: ..." inside an answer is not mistaken for a new speaker.
    return [c for c in candidates if _is_known(c.label) or (c.role and _is_known(c.role)) or counts[c.label] >= 2]


def _paragraph_turns(text: str) -> list[tuple[str, int, int, str | None]]:
    out: list[tuple[str, int, int, str | None]] = []
    for m in re.finditer(r"\S(?:.|\n(?![ \t]*\n))*", text):
        out.append(("unknown", m.start(), m.start() + len(m.group(0).rstrip()), None))
    return out


def parse_labelled_text(text: str, *, transcript_id: str, source: str, fmt: str, warnings: list[str]) -> Transcript:
    """Split ``text`` into turns on speaker labels; fall back to paragraphs with a warning."""
    marks = _find_marks(text)
    spans: list[tuple[str, int, int, str | None]] = []
    if not marks:
        warnings.append(f"{source}: no speaker labels found; paragraphs used as turns")
        spans = _paragraph_turns(text)
    else:
        for k, mk in enumerate(marks):
            stop = marks[k + 1].line_start if k + 1 < len(marks) else len(text)
            body = text[mk.content_start : stop]
            lead = len(body) - len(body.lstrip())
            start = mk.content_start + lead
            end = start + len(body.strip())
            if end > start:
                spans.append((mk.label, start, end, mk.timestamp))
    roles = {mk.label: mk.role for mk in marks if mk.role}
    by_role = frozenset(label for label, role in roles.items() if is_interviewer_label(role))
    interviewers = by_role or guess_interviewers([(s, text[a:b]) for s, a, b, _ in spans])
    turns = tuple(
        Turn(
            index=i,
            speaker=s,
            start=a,
            end=b,
            text=text[a:b],
            is_interviewer=s in interviewers,
            timestamp=ts,
        )
        for i, (s, a, b, ts) in enumerate(spans)
    )
    return Transcript(id=transcript_id, source=source, format=fmt, text=text, turns=turns, warnings=tuple(warnings))
