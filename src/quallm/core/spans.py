"""Spans of text: the one home of sentence spans, text normalisation and quote finding.

Extraction numbers a turn's sentences with :func:`sentence_spans` and agreement's sentence units are
cut by the same rule, so the machine's evidence is scored on the units it was cut from. Quotes are
found in two ways, both over the one normalisation (:func:`normalised`: quote and dash variants
unified, case folded, whitespace runs made one space, with the source offset of each character):

* :func:`align_quote` for a model's quote: exact -> normalised -> fuzzy, with its status and span;
  the reported quote is always the transcript's own slice ``text[start:end]``;
* :func:`find_quote` / :func:`locate_quote` for a human coder's quote: exact or normalised, every
  place it occurs, so an ambiguous quote is reported rather than guessed.

A quote is never used as a regex.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from rapidfuzz import fuzz

# --- sentences

# The coder's rule (the recordings depend on it): a sentence ends at . ! or ? (with closing straight
# quotes or brackets) followed by whitespace and a capital letter or a digit (an opening quote or
# bracket may come first). Curly closing quotes, ellipses and lower-case starts do not end one.
_SENTENCE_END = re.compile(r"(?P<end>[.!?][\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")


def sentence_spans(text: str, offset: int = 0) -> list[tuple[int, int]]:
    """Sentence spans of ``text`` (shifted by ``offset``), whitespace trimmed, covering every word."""
    spans = []
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((pos, m.end("end")))
        pos = m.end()
    spans.append((pos, len(text)))
    out = []
    for a, b in spans:
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        trimmed = piece.strip()
        if trimmed:
            out.append((offset + a + lead, offset + a + lead + len(trimmed)))
    return out


# --- normalisation

# Characters a model or a word processor swaps freely; mapped before any normalised comparison.
_EQUIVALENT = str.maketrans(
    {"‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-", "\u00a0": " "}
)


#: Evidence shorter than this many words is widened to its neighbouring sentences (see evidence_span).
MIN_EVIDENCE_WORDS = 5


def evidence_span(
    text: str, spans: list[tuple[int, int]], index: int, offset: int = 0, min_words: int = MIN_EVIDENCE_WORDS
) -> tuple[int, int]:
    """The evidence for a coding on sentence ``index`` (0-based) of ``spans``: that sentence, widened.

    A chosen sentence such as "Tight." or "They're fine." shows nothing on its own (on dev-la the 1.5B
    model picked such sentences, and the summaries then restated them), so a sentence of fewer than
    ``min_words`` words takes in the following sentences, then the preceding ones, until it has
    ``min_words`` or the turn ends. ``text`` holds the spans at ``offset`` (``text[a - offset:b - offset]``);
    the result is still one contiguous slice, grounded by construction.
    """

    def words(a: int, b: int) -> int:
        return len(text[a - offset : b - offset].split())

    lo = hi = index
    while words(spans[lo][0], spans[hi][1]) < min_words and (hi + 1 < len(spans) or lo > 0):
        if hi + 1 < len(spans):
            hi += 1
        else:
            lo -= 1
    return spans[lo][0], spans[hi][1]


def normalise_text(text: str) -> str:
    """``text`` case-folded, with quote/dash variants unified and whitespace runs made one space."""
    return " ".join(text.translate(_EQUIVALENT).casefold().split())


@lru_cache(maxsize=32)
def normalised(text: str) -> tuple[str, tuple[int, ...]]:
    """:func:`normalise_text` of ``text`` and, for each of its characters, the offset of its source character."""
    chars: list[str] = []
    origin: list[int] = []
    in_space = True  # leading whitespace is dropped
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
    if chars and chars[-1] == " ":
        chars.pop()
        origin.pop()
    return "".join(chars), tuple(origin)


# --- a model's quote: exact -> normalised -> fuzzy

Status = Literal["exact", "normalised", "fuzzy"]

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


def _strip_edges(quote: str) -> str:
    return quote.strip().strip("\"'“”‘’").strip()


def _align_one(quote: str, text: str, lo: int, hi: int) -> Alignment | None:
    region = text[lo:hi]
    pos = region.find(quote)
    if pos >= 0:
        return Alignment("exact", lo + pos, lo + pos + len(quote))
    nq = normalise_text(quote)
    nr, idx = normalised(region)
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


# --- a coder's quote: every place it occurs, exact or normalised


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
    norm_text, origin = normalised(text)
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
