"""Who is the interviewer: recognised labels first, then who asks the questions."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

INTERVIEWER_LABELS = frozenset(
    {"interviewer", "int", "iv", "i", "q", "question", "facilitator", "moderator", "researcher", "host"}
)
RESPONDENT_LABELS = frozenset({"respondent", "interviewee", "participant", "r", "a", "answer", "resp", "p", "subject"})
_CODE_RE = re.compile(r"^(?:p|r|participant|respondent)\s*\d+$", re.IGNORECASE)


def is_interviewer_label(label: str) -> bool:
    """True for labels that always mean the interviewer (``Interviewer``, ``INT``, ``Q`` ...)."""
    return label.strip().casefold() in INTERVIEWER_LABELS


def guess_interviewers(speakers_and_texts: Sequence[tuple[str, str]]) -> frozenset[str]:
    """The interviewer speaker names of a transcript.

    Recognised labels win. Otherwise, with two or more speakers, the speaker whose turns most often
    contain a question mark (ties to whoever spoke first) is taken as the interviewer.
    """
    speakers = [s for s, _ in speakers_and_texts]
    named = {s for s in speakers if is_interviewer_label(s)}
    if named:
        return frozenset(named)
    distinct = list(dict.fromkeys(speakers))
    if len(distinct) < 2:
        return frozenset()
    if any(_CODE_RE.match(s) or s.casefold() in RESPONDENT_LABELS for s in distinct):
        others = [s for s in distinct if not (_CODE_RE.match(s) or s.casefold() in RESPONDENT_LABELS)]
        if others:
            return frozenset(others)
    turns: Counter[str] = Counter()
    questions: Counter[str] = Counter()
    for s, t in speakers_and_texts:
        turns[s] += 1
        questions[s] += "?" in t
    best = max(distinct, key=lambda s: (questions[s] / turns[s], -distinct.index(s)))
    return frozenset({best})
