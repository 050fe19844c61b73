"""Turn-aware chunking within a token budget counted by the model's own tokenizer.

A chunk never splits a turn unless that turn alone exceeds the budget; then the turn is split on
sentence boundaries. A chunk may carry a little preceding context, shown to the model but never coded.
"""

from __future__ import annotations

from dataclasses import dataclass

from quallm.core.spans import sentence_spans
from quallm.core.transcript import Transcript, Turn
from quallm.ingest.tokenizers import Tokenizer


@dataclass(frozen=True)
class Segment:
    """A turn, or a sentence-aligned piece of a turn too long for one chunk."""

    turn_index: int
    speaker: str
    start: int
    end: int
    text: str
    coded: bool
    part: int = 0  # > 0 when a long turn was split


@dataclass(frozen=True)
class Chunk:
    """Segments sent to the model together, with uncoded context segments before them."""

    index: int
    segments: tuple[Segment, ...]
    context: tuple[Segment, ...] = ()

    @property
    def coded_segments(self) -> tuple[Segment, ...]:
        """The segments the model codes."""
        return tuple(s for s in self.segments if s.coded)


def _split_turn(turn: Turn, coded: bool, tok: Tokenizer, budget: int) -> list[Segment]:
    pieces: list[Segment] = []
    cur: tuple[int, int] | None = None
    for a, b in sentence_spans(turn.text, turn.start):
        if cur is None:
            cur = (a, b)
            continue
        rel = (cur[0] - turn.start, b - turn.start)
        if tok.count(turn.text[rel[0] : rel[1]]) <= budget:
            cur = (cur[0], b)
        else:
            pieces.append(_seg(turn, cur, coded, len(pieces) + 1))
            cur = (a, b)
    if cur is not None:
        pieces.append(_seg(turn, cur, coded, len(pieces) + 1))
    return pieces


def _seg(turn: Turn, span: tuple[int, int], coded: bool, part: int) -> Segment:
    text = turn.text[span[0] - turn.start : span[1] - turn.start]
    return Segment(turn.index, turn.speaker, span[0], span[1], text, coded, part)


def segments_for(
    transcript: Transcript, tok: Tokenizer, budget: int, coded_speakers: frozenset[str] | None = None
) -> list[Segment]:
    """Every turn as a segment (long turns split on sentences), marked coded or not."""
    coded_idx = {t.index for t in transcript.coded_turns(coded_speakers)}
    out: list[Segment] = []
    for turn in transcript.turns:
        coded = turn.index in coded_idx
        if tok.count(turn.text) > budget:
            out.extend(_split_turn(turn, coded, tok, budget))
        else:
            out.append(Segment(turn.index, turn.speaker, turn.start, turn.end, turn.text, coded))
    return out


def chunk_transcript(
    transcript: Transcript,
    tok: Tokenizer,
    budget: int,
    *,
    context_tokens: int = 0,
    coded_speakers: frozenset[str] | None = None,
) -> list[Chunk]:
    """Pack segments into chunks of at most ``budget`` tokens (each segment's own cost counted).

    ``context_tokens`` of the immediately preceding segments ride along as context. Chunks with no
    coded segment are dropped: there is nothing in them to code.
    """
    segs = segments_for(transcript, tok, budget, coded_speakers)
    costs = [tok.count(s.text) + 8 for s in segs]  # + label and numbering overhead
    groups: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, c in enumerate(costs):
        if cur and used + c > budget:
            groups.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += c
    if cur:
        groups.append(cur)
    chunks: list[Chunk] = []
    for g in groups:
        ctx: list[Segment] = []
        spent = 0
        j = g[0] - 1
        while j >= 0 and context_tokens and spent + costs[j] <= context_tokens:
            ctx.insert(0, segs[j])
            spent += costs[j]
            j -= 1
        chunk = Chunk(len(chunks), tuple(segs[i] for i in g), tuple(ctx))
        if chunk.coded_segments:
            chunks.append(chunk)
    return [Chunk(i, c.segments, c.context) for i, c in enumerate(chunks)]
