"""Transcript text as data: it can never forge the markers of the prompt it is put into.

Prompts lay transcript text out on lines that start with quallm's own markers (``[3]`` numbered
sentences, ``[S2] (Respondent, CODE)`` segments, ``=== Interview 2 of 2: id ===`` headers, the
"Interviewer's question:" line). Text from a transcript is put on one line (every kind of line break,
U+2028 and friends included, becomes a space) and anything in it shaped like those markers is
rewritten (``[S2]`` -> ``(S2)``, ``[3]`` -> ``(3)``, ``===`` -> ``=``), so one interview in a pack
cannot start a forged segment, header or instruction line that steers the coding of another. The
prompts also say that transcript text is data, never instructions. Quotes are still grounded in the
transcript's own text (the chunk strategy aligns them with ``grounding.align_quote``, which tolerates
these small rewrites), so the evidence stays exact.
"""

from __future__ import annotations

import re

# Every character Python's str.splitlines() (and so most tokenizers' notion of a new line) breaks on.
_LINE_BREAKS = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")
_MARKER = re.compile(r"\[(\s*S?\s*\d+\s*)\]", re.IGNORECASE)
_HEADER = re.compile(r"={2,}")


def fence(text: str) -> str:
    """``text`` made safe to place inside a prompt line (see the module docstring)."""
    one_line = _LINE_BREAKS.sub(" ", text)
    return _HEADER.sub("=", _MARKER.sub(r"(\1)", one_line))
