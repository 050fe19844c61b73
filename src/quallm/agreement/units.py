"""Units of analysis for agreement, and which codings mark which units.

Three kinds of unit:

* ``turn``: each coded turn (by default every non-interviewer turn, see
  :meth:`Transcript.coded_turns`);
* ``sentence``: each sentence of each coded turn, split by a simple regex that keeps offsets;
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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quallm.codings import Coding
from quallm.errors import ConfigError, InputError
from quallm.transcripts.model import Transcript

UnitKind = Literal["turn", "sentence", "transcript"]
UNIT_KINDS: tuple[UnitKind, ...] = ("turn", "sentence", "transcript")

# A sentence ends at . ! ? or … (possibly repeated, possibly followed by closing quotes or brackets)
# when whitespace or the end of text follows; a blank line also ends one.
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s|$)|\n[ \t]*\n""")

# Characters a model or a word processor swaps freely; mapped before the normalised search.
_EQUIVALENT = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-"})


class Unit(BaseModel):
    """One unit of analysis: a span of one transcript."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    unit_id: str
    turn_index: int | None
    start: int
    end: int
    text: str


def split_sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` offsets of the sentences of ``text``, whitespace trimmed, empty ones dropped."""
    spans: list[tuple[int, int]] = []

    def add(a: int, b: int) -> None:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            spans.append((a, b))

    pos = 0
    for m in _SENTENCE_END.finditer(text):
        add(pos, m.end())
        pos = m.end()
    add(pos, len(text))
    return spans


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
        for k, (a, b) in enumerate(split_sentences(turn.text)):
            out.append(Unit.model_construct(transcript_id=tid, unit_id=f"turn-{turn.index}.s{k}", turn_index=turn.index,
                            start=turn.start + a, end=turn.start + b, text=turn.text[a:b]))
    out.sort(key=lambda u: u.start)
    return out


def normalise_text(text: str) -> str:
    """``text`` case-folded, with quote/dash variants unified and whitespace runs made one space."""
    return " ".join(text.translate(_EQUIVALENT).casefold().split())


@lru_cache(maxsize=32)
def _normalised(text: str) -> tuple[str, tuple[int, ...]]:
    """``text`` case-folded with whitespace runs collapsed, and the source offset of each character."""
    chars: list[str] = []
    origin: list[int] = []
    in_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if not in_space:
                chars.append(" ")
                origin.append(i)
            in_space = True
            continue
        in_space = False
        for folded in ch.translate(_EQUIVALENT).casefold():  # casefold may expand (ß -> ss)
            chars.append(folded)
            origin.append(i)
    return "".join(chars), tuple(origin)


def _find_all(haystack: str, needle: str, start: int, end: int) -> list[int]:
    hits: list[int] = []
    i = haystack.find(needle, start, end)
    while i != -1:
        hits.append(i)
        i = haystack.find(needle, i + 1, end)
    return hits


def find_quote(text: str, quote: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Every place ``quote`` occurs in ``text[start:end]`` as ``(start, end)`` offsets into ``text``.

    Exact matches if there are any; otherwise matches ignoring case, whitespace runs and quote/dash
    variants. An empty (or all-whitespace) quote matches nowhere.
    """
    end = len(text) if end is None else end
    if not quote.strip():
        return []
    exact = _find_all(text, quote, start, end)
    if exact:
        return [(i, i + len(quote)) for i in exact]
    norm_text, origin = _normalised(text)
    norm_quote = normalise_text(quote)
    lo = bisect.bisect_left(origin, start)
    hi = bisect.bisect_left(origin, end)
    return [
        (origin[i], origin[i + len(norm_quote) - 1] + 1)
        for i in _find_all(norm_text, norm_quote, lo, hi)
    ]


def locate_quote(
    text: str, quote: str, start: int = 0, end: int | None = None
) -> tuple[tuple[int, int] | None, str | None]:
    """The one place ``quote`` occurs in ``text[start:end]``, or ``None`` and the problem."""
    spans = find_quote(text, quote, start, end)
    if len(spans) == 1:
        return spans[0], None
    short = quote if len(quote) <= 60 else quote[:57] + "..."
    if not spans:
        return None, f"quote not found: {short!r}"
    where = ", ".join(str(s) for s, _ in spans[:5])
    return None, f"quote is ambiguous, found at {len(spans)} places (offsets {where}): {short!r}"


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
