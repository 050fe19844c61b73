"""Quote alignment: find a model's quote in the transcript, exact -> normalised -> fuzzy.

The result carries its status and a character span; the reported quote is always the transcript's
own slice ``text[start:end]``, never the model's wording. A quote is never used as a regex.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rapidfuzz import fuzz

Status = Literal["exact", "normalised", "fuzzy"]

_TRANSLATE = str.maketrans(
    {"‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-", "\u00a0": " "}
)
_ELLIPSIS = re.compile(r"\s*(?:\.\.\.|…|\[\.\.\.\]|\[…\])\s*")
FUZZY_THRESHOLD = 90.0
MIN_QUOTE_CHARS = 3


@dataclass(frozen=True)
class Alignment:
    """Where a quote sits in the text, and how it was found."""

    status: Status
    start: int
    end: int
    score: float = 100.0


def _normalise(text: str) -> tuple[str, list[int]]:
    """Normalised text and, for each of its characters, the offset of its source character."""
    out: list[str] = []
    idx: list[int] = []
    prev_space = True
    for i, ch in enumerate(text):
        c = ch.translate(_TRANSLATE)
        if c.isspace():
            if not prev_space:
                out.append(" ")
                idx.append(i)
            prev_space = True
            continue
        low = c.lower()
        c = low if len(low) == 1 else c
        out.append(c)
        idx.append(i)
        prev_space = False
    if out and out[-1] == " ":
        out.pop()
        idx.pop()
    return "".join(out), idx


def _strip_edges(quote: str) -> str:
    return quote.strip().strip("\"'“”‘’").strip()


def _align_one(quote: str, text: str, lo: int, hi: int) -> Alignment | None:
    region = text[lo:hi]
    pos = region.find(quote)
    if pos >= 0:
        return Alignment("exact", lo + pos, lo + pos + len(quote))
    nq, _ = _normalise(quote)
    nr, idx = _normalise(region)
    if not nq or not nr:
        return None
    pos = nr.find(nq)
    if pos >= 0:
        return Alignment("normalised", lo + idx[pos], lo + idx[pos + len(nq) - 1] + 1)
    if len(nq) < 12:  # fuzzy matching of very short strings finds anything
        return None
    res = fuzz.partial_ratio_alignment(nq, nr, score_cutoff=FUZZY_THRESHOLD)
    if res is None:
        return None
    a, b = res.dest_start, res.dest_end
    # Snap to whole words so the slice reads as a quote.
    while a > 0 and nr[a - 1].isalnum():
        a -= 1
    while b < len(nr) and nr[b].isalnum():
        b += 1
    if b <= a:
        return None
    return Alignment("fuzzy", lo + idx[a], lo + idx[b - 1] + 1, float(res.score))


def align_quote(quote: str, text: str, start: int = 0, end: int | None = None) -> Alignment | None:
    """Align ``quote`` inside ``text[start:end]``; None when it is not there.

    A quote with an ellipsis (``first part ... last part``) is aligned piece by piece and spans from
    the first piece to the last, provided they appear in order.
    """
    hi = len(text) if end is None else end
    q = _strip_edges(quote)
    if len(q) < MIN_QUOTE_CHARS:
        return None
    found = _align_one(q, text, start, hi)
    if found is not None:
        return found
    pieces = [p for p in _ELLIPSIS.split(q) if len(p.strip()) >= MIN_QUOTE_CHARS]
    if len(pieces) >= 2:
        first = _align_one(pieces[0], text, start, hi)
        if first is None:
            return None
        last = _align_one(pieces[-1], text, first.end, hi)
        if last is None:
            return None
        status: Status = "exact" if first.status == last.status == "exact" else "normalised"
        if "fuzzy" in (first.status, last.status):
            status = "fuzzy"
        return Alignment(status, first.start, last.end, min(first.score, last.score))
    return None
