"""Units of analysis for agreement, and which codings mark which units.

Three kinds of unit:

* ``turn``: each coded turn (by default every non-interviewer turn, see
  :meth:`Transcript.coded_turns`);
* ``sentence``: each sentence of each coded turn, cut by :func:`quallm.core.spans.sentence_spans`, the
  rule extraction numbers a turn's sentences by (so the machine's evidence is scored on its own units);
* ``transcript``: one unit per transcript (is the code present anywhere?).

A coding with a span (``start``/``end``) marks every unit its span overlaps by at least
``min(min_overlap, span length)`` characters (so a span shorter than ``min_overlap`` still marks the
unit it lies in). A coding without a span is placed by its quote (exact search, then a search that
ignores case, runs of whitespace and curly-vs-straight quotes; within its turn when it has a
``turn_index``) or, for turn units only, by its ``turn_index``. Quotes that are missing or found in
several places are reported as issues, never guessed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quallm.core.codings import Coding
from quallm.core.errors import ConfigError, InputError
from quallm.core.spans import locate_quote, sentence_spans
from quallm.core.transcript import Transcript

UnitKind = Literal["turn", "sentence", "transcript"]
UNIT_KINDS: tuple[UnitKind, ...] = ("turn", "sentence", "transcript")

class Unit(BaseModel):
    """One unit of analysis: a span of one transcript."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    unit_id: str
    turn_index: int | None
    start: int
    end: int
    text: str


def build_units(
    transcript: Transcript, unit: UnitKind = "turn", speakers: frozenset[str] | None = None
) -> list[Unit]:
    """The units of ``transcript``, in text order."""
    if unit not in UNIT_KINDS:
        raise ConfigError(f"unit must be one of {', '.join(UNIT_KINDS)}, not {unit!r}")
    tid = transcript.id
    if unit == "transcript":
        return [Unit(transcript_id=tid, unit_id="transcript", turn_index=None, start=0, end=len(transcript.text),
                     text=transcript.text)]
    out: list[Unit] = []
    for turn in transcript.coded_turns(speakers):
        if unit == "turn":
            # model_construct: fields come from a validated Turn (validation would dominate run time).
            out.append(Unit.model_construct(transcript_id=tid, unit_id=f"turn-{turn.index}", turn_index=turn.index,
                            start=turn.start, end=turn.end, text=turn.text))
            continue
        for k, (a, b) in enumerate(sentence_spans(turn.text)):
            out.append(Unit.model_construct(transcript_id=tid, unit_id=f"turn-{turn.index}.s{k}", turn_index=turn.index,
                            start=turn.start + a, end=turn.start + b, text=turn.text[a:b]))
    out.sort(key=lambda u: u.start)
    return out


@dataclass
class MarkedUnits:
    """Units of several transcripts (contiguous per transcript) and the codings that mark them."""

    units: list[Unit]
    bounds: list[int]  # units of transcript i are units[bounds[i]:bounds[i + 1]]
    hits: list[tuple[int, Coding]] = field(default_factory=list)  # (unit index, coding)
    issues: list[str] = field(default_factory=list)


def _issue(c: Coding, problem: str) -> str:
    return f"{c.transcript_id}: coding by {c.coder} of {c.code_id}: {problem}"


def mark_units(
    transcripts: Sequence[Transcript],
    codings: Sequence[Coding],
    unit: UnitKind = "turn",
    min_overlap: int = 1,
    speakers: frozenset[str] | None = None,
) -> MarkedUnits:
    """Build the units of ``transcripts`` and find, for each coding, the units it marks.

    Codings that cannot be placed (unknown transcript, bad span, missing or ambiguous quote, no
    location, no overlap with any unit) are listed in ``issues`` and mark nothing.
    """
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, int) or min_overlap < 1:
        raise ConfigError(f"min_overlap must be an integer >= 1, not {min_overlap!r}")
    units: list[Unit] = []
    bounds = [0]
    by_id: dict[str, int] = {}
    for i, t in enumerate(transcripts):
        if t.id in by_id:
            raise InputError(t.source, f"transcript id {t.id!r} is given twice")
        by_id[t.id] = i
        units.extend(build_units(t, unit, speakers))
        bounds.append(len(units))
    out = MarkedUnits(units=units, bounds=bounds)
    # Per transcript: unit starts/ends (sorted, non-overlapping) for bisecting spans.
    starts = [[u.start for u in units[bounds[i]:bounds[i + 1]]] for i in range(len(transcripts))]
    ends = [[u.end for u in units[bounds[i]:bounds[i + 1]]] for i in range(len(transcripts))]
    turn_units = [
        {u.turn_index: bounds[i] + k for k, u in enumerate(units[bounds[i]:bounds[i + 1]])}
        for i in range(len(transcripts))
    ] if unit == "turn" else []
    unknown: dict[str, int] = {}
    for c in codings:
        ti = by_id.get(c.transcript_id)
        if ti is None:
            unknown[c.transcript_id] = unknown.get(c.transcript_id, 0) + 1
            continue
        base = bounds[ti]
        if unit == "transcript":
            out.hits.append((base, c))  # presence anywhere: no location needed
            continue
        t = transcripts[ti]
        a, b = c.start, c.end
        span: tuple[int, int] | None
        if a is not None and b is not None and 0 <= a < b <= len(t.text):
            span, problem = (a, b), None  # the common case, inlined: grounded codings carry offsets
        else:
            span, problem = _span_of(c, t)
        if problem is not None:
            out.issues.append(_issue(c, problem))
            continue
        if span is None:  # turn_index only
            k = turn_units[ti].get(c.turn_index) if unit == "turn" else None
            if unit != "turn":
                out.issues.append(_issue(c, f"has only a turn index ({c.turn_index}); it cannot be "
                                            "placed in a sentence unit"))
            elif k is None:
                out.issues.append(_issue(c, f"turn {c.turn_index} is not a coded turn"))
            else:
                out.hits.append((k, c))
            continue
        a, b = span
        need = min(min_overlap, b - a)
        marked = False
        k = bisect.bisect_right(ends[ti], a)  # first unit ending after the span starts
        while k < len(starts[ti]) and starts[ti][k] < b:
            if min(b, ends[ti][k]) - max(a, starts[ti][k]) >= need:
                out.hits.append((base + k, c))
                marked = True
            k += 1
        if not marked:
            out.issues.append(_issue(c, f"span {a}-{b} overlaps no {unit} unit by {need} or more "
                                        "characters (e.g. it lies in an interviewer turn)"))
    for tid, n in sorted(unknown.items()):
        out.issues.append(f"{tid}: {n} coding(s) refer to this transcript id, which is not among the "
                          "transcripts; ignored")
    return out


def _span_of(c: Coding, t: Transcript) -> tuple[tuple[int, int] | None, str | None]:
    """The span a coding covers: its offsets, else its located quote; ``None`` for turn-index only."""
    if c.start is not None or c.end is not None:
        if c.start is None or c.end is None:
            return None, "has only one of start/end"
        if not 0 <= c.start < c.end <= len(t.text):
            return None, f"span {c.start}-{c.end} is empty or outside the text (length {len(t.text)})"
        return (c.start, c.end), None
    lo, hi = 0, len(t.text)
    if c.turn_index is not None:
        if not 0 <= c.turn_index < len(t.turns):
            return None, f"turn index {c.turn_index} is out of range (0-{len(t.turns) - 1})"
        lo, hi = t.turns[c.turn_index].start, t.turns[c.turn_index].end
    if c.quote:
        return locate_quote(t.text, c.quote, lo, hi)
    if c.turn_index is not None:
        return None, None
    return None, "has no location (no span, quote or turn index)"
