"""The queue of machine codings to review, and where one reviewer stands on it (folded from the log)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quallm.core.codings import Coding
from quallm.core.results import TranscriptResult
from quallm.run.review_log import CodingRef, Decision

Status = Literal["pending", "accepted", "rejected", "recoded"]
STATUS_OF = {"accept": "accepted", "reject": "rejected", "recode": "recoded"}


class ReviewItem(BaseModel):
    """One machine coding (or a below-threshold candidate) in the review queue."""

    model_config = ConfigDict(frozen=True)

    id: str
    coding: Coding
    candidate: bool = False

    def ref(self) -> CodingRef:
        """The coding as a decision records it."""
        c = self.coding
        return CodingRef(
            transcript_id=c.transcript_id, code_id=c.code_id, start=c.start, end=c.end, turn_index=c.turn_index,
            speaker=c.speaker, quote=c.quote, coder=c.coder, alignment=c.alignment, rationale=c.rationale,
            probability=c.probability, candidate=self.candidate,
        )


def item_id(c: Coding, candidate: bool) -> str:
    """A stable id for a machine coding: the same run gives the same ids on every start."""
    key = f"{c.transcript_id}|{c.coder}|{c.code_id}|{c.start}|{c.end}|{c.turn_index}|{int(candidate)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def build_items(results: Iterable[TranscriptResult]) -> list[ReviewItem]:
    """The queue: codings and candidates, lowest probability first, then those without one in text order."""
    items: list[ReviewItem] = []
    seen: dict[str, int] = {}
    for r in results:
        for candidate, codings in ((False, r.codings), (True, r.candidates)):
            for c in codings:
                base = item_id(c, candidate)
                seen[base] = seen.get(base, 0) + 1
                iid = base if seen[base] == 1 else f"{base}-{seen[base]}"
                items.append(ReviewItem(id=iid, coding=c, candidate=candidate))

    def order(it: ReviewItem) -> tuple[bool, float, str, int, str]:
        p = it.coding.probability
        start = it.coding.start if it.coding.start is not None else -1
        return (p is None, p if p is not None else 0.0, it.coding.transcript_id, start, it.coding.code_id)

    return sorted(items, key=order)


@dataclass
class ReviewState:
    """One reviewer's standing decisions, after undos: per item, the codings added, transcripts reviewed."""

    reviewer: str
    item_decisions: dict[str, Decision] = field(default_factory=dict)
    added: list[Decision] = field(default_factory=list)
    reviewed: dict[str, Decision] = field(default_factory=dict)
    active: list[Decision] = field(default_factory=list)  # standing decisions, oldest first (undo takes the last)

    def status(self, item: str) -> Status:
        """pending, accepted, rejected or recoded."""
        d = self.item_decisions.get(item)
        return "pending" if d is None else STATUS_OF[d.action]  # type: ignore[return-value]

    def last_undoable(self) -> Decision | None:
        """The decision an undo takes back: the latest one still standing."""
        return self.active[-1] if self.active else None


def fold(decisions: Sequence[Decision], reviewer: str) -> ReviewState:
    """Where ``reviewer`` stands after ``decisions`` (in log order): the latest standing decision wins."""
    mine = [d for d in decisions if d.reviewer == reviewer]
    undone = {d.undoes for d in mine if d.action == "undo" and d.undoes}
    state = ReviewState(reviewer)
    for d in mine:
        if d.action == "undo" or d.id in undone:
            continue
        state.active.append(d)
        if d.action in STATUS_OF and d.item:
            state.item_decisions[d.item] = d
        elif d.action == "add":
            state.added.append(d)
        elif d.action == "reviewed":
            state.reviewed[d.transcript_id] = d
    return state


def reviewers(decisions: Iterable[Decision]) -> list[str]:
    """Every reviewer in the log, in order of first appearance."""
    return list(dict.fromkeys(d.reviewer for d in decisions))
