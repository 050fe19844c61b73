"""What review decisions mean downstream: the reviewer's coding, labels for calibration, counts per code.

A reviewer's coding is, on the transcripts that reviewer marked reviewed, the machine codings accepted
or recoded plus the codings added. It is a *reviewed machine coding*: anchored on the machine's
proposals, so :mod:`quallm.analysis.agreement` never counts it as an independent human coder. Everything here is
rebuilt from ``review.jsonl`` alone (each decision records the coding it concerns), so it does not
depend on the run's results staying as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quallm.analysis.agreement.reconcile import REVIEWED_PREFIX
from quallm.core.codings import Alignment, Coding
from quallm.run.review_log import REVIEW_FILE, Decision, read_log
from quallm.run.review_state import ReviewState, fold, reviewers


def reviewed_coder(reviewer: str) -> str:
    """The coder name of a reviewer's coding (recognised by :func:`quallm.analysis.agreement.is_reviewed_coder`)."""
    return f"{REVIEWED_PREFIX}{reviewer}"


class ReviewedCoding(BaseModel):
    """Every reviewer's coding, the transcripts each covers, and the log's skipped lines."""

    codings: list[Coding] = Field(default_factory=list)
    coverage: dict[str, set[str]] = Field(default_factory=dict, description="coder -> transcripts reviewed")
    problems: list[str] = Field(default_factory=list)


class ReviewLabel(BaseModel):
    """One reviewer judgement usable as a label: does ``code_id`` apply to this span?"""

    model_config = ConfigDict(frozen=True)

    reviewer: str
    transcript_id: str
    code_id: str
    start: int | None
    end: int | None
    turn_index: int | None
    applies: bool
    probability: float | None = Field(description="the machine's probability for this code here, if it proposed it")
    candidate: bool = False
    source: str = Field(description="accept | reject | recode-from | recode-to | add")


class CodeCounts(BaseModel):
    """Review decisions about one code: machine codings accepted, rejected, recoded away, and added."""

    code_id: str
    accepted: int = 0
    rejected: int = 0
    recoded: int = Field(default=0, description="machine codings of this code changed to another code")
    recoded_to: int = Field(default=0, description="machine codings of another code changed to this one")
    added: int = 0


def review_path(run_dir: str | Path) -> Path:
    """Where a run's review log lives."""
    return Path(run_dir) / REVIEW_FILE


def _states(decisions: Sequence[Decision], reviewer: str | None) -> list[ReviewState]:
    names = [reviewer] if reviewer else reviewers(decisions)
    return [fold(decisions, r) for r in names]


def _machine_coding(d: Decision, coder: str, code_id: str) -> Coding:
    ref = d.coding
    assert ref is not None
    alignment: Alignment = ref.alignment if ref.alignment in ("exact", "normalised", "fuzzy") else "human"  # type: ignore[assignment]
    verb = "accepted" if d.action == "accept" else f"recoded from {ref.code_id}"
    memo = [f"Review: {verb} by {d.reviewer} ({d.time})" + ("; a below-threshold candidate" if ref.candidate else "")]
    if d.note:
        memo.append(f"Reviewer's note: {d.note}")
    if ref.rationale:
        memo.append(f"Machine rationale: {ref.rationale}")
    return Coding(
        transcript_id=ref.transcript_id, coder=coder, code_id=code_id, start=ref.start, end=ref.end,
        turn_index=ref.turn_index, speaker=ref.speaker, quote=ref.quote, alignment=alignment,
        rationale="\n".join(memo), probability=ref.probability,
    )


def state_codings(state: ReviewState) -> list[Coding]:
    """A reviewer's coding from their standing decisions, on the transcripts they marked reviewed."""
    coder = reviewed_coder(state.reviewer)
    out: list[Coding] = []
    for d in state.item_decisions.values():
        if d.coding is None or d.coding.transcript_id not in state.reviewed:
            continue
        if d.action == "accept":
            out.append(_machine_coding(d, coder, d.coding.code_id))
        elif d.action == "recode" and d.code_id:
            out.append(_machine_coding(d, coder, d.code_id))
    for d in state.added:
        if d.transcript_id not in state.reviewed or d.coding is None:
            continue
        ref = d.coding
        memo = f"Review: added by {d.reviewer} ({d.time})" + (f"\nReviewer's note: {d.note}" if d.note else "")
        out.append(Coding(
            transcript_id=ref.transcript_id, coder=coder, code_id=ref.code_id, start=ref.start, end=ref.end,
            turn_index=ref.turn_index, speaker=ref.speaker, quote=ref.quote, alignment="human", rationale=memo,
        ))
    return sorted(out, key=lambda c: (c.transcript_id, -1 if c.start is None else c.start, c.code_id))


def reviewed_codings(run_dir: str | Path, reviewer: str | None = None) -> ReviewedCoding:
    """Each reviewer's coding of a run (or one reviewer's), from ``RUN_DIR/review.jsonl``."""
    log = read_log(review_path(run_dir))
    out = ReviewedCoding(problems=log.problems)
    for state in _states(log.decisions, reviewer):
        if not state.reviewed:
            continue
        out.coverage[reviewed_coder(state.reviewer)] = set(state.reviewed)
        out.codings.extend(state_codings(state))
    return out


def review_labels(run_dir: str | Path, reviewer: str | None = None) -> list[ReviewLabel]:
    """Review decisions as labels (for calibration): accepted and added apply, rejected does not, and
    a recode says the old code does not apply and the new one does. All standing decisions count,
    whether or not the transcript was marked reviewed."""
    log = read_log(review_path(run_dir))
    out: list[ReviewLabel] = []
    for state in _states(log.decisions, reviewer):
        for d in state.item_decisions.values():
            ref = d.coding
            if ref is None:
                continue
            common: dict[str, Any] = {"reviewer": d.reviewer, "transcript_id": ref.transcript_id, "start": ref.start,
                      "end": ref.end, "turn_index": ref.turn_index, "candidate": ref.candidate}
            if d.action in ("accept", "reject"):
                out.append(ReviewLabel(code_id=ref.code_id, applies=d.action == "accept",
                                       probability=ref.probability, source=d.action, **common))
            elif d.action == "recode" and d.code_id:
                out.append(ReviewLabel(code_id=ref.code_id, applies=False, probability=ref.probability,
                                       source="recode-from", **common))
                out.append(ReviewLabel(code_id=d.code_id, applies=True, probability=None, source="recode-to",
                                       **common))
        for d in state.added:
            if d.coding is not None:
                ref = d.coding
                out.append(ReviewLabel(reviewer=d.reviewer, transcript_id=ref.transcript_id, code_id=ref.code_id,
                                       start=ref.start, end=ref.end, turn_index=ref.turn_index, applies=True,
                                       probability=None, source="add"))
    return out


def review_counts(decisions: Sequence[Decision], codes: Sequence[str] = ()) -> list[CodeCounts]:
    """Per code, the standing decisions of all reviewers: accepted, rejected, recoded (from/to), added.

    ``codes`` gives the order (codebook order); codes met only in the log follow."""
    counts: dict[str, CodeCounts] = {c: CodeCounts(code_id=c) for c in codes}

    def row(code: str) -> CodeCounts:
        return counts.setdefault(code, CodeCounts(code_id=code))

    for state in _states(decisions, None):
        for d in state.item_decisions.values():
            if d.coding is None:
                continue
            if d.action == "accept":
                row(d.coding.code_id).accepted += 1
            elif d.action == "reject":
                row(d.coding.code_id).rejected += 1
            elif d.action == "recode" and d.code_id:
                row(d.coding.code_id).recoded += 1
                row(d.code_id).recoded_to += 1
        for d in state.added:
            if d.coding is not None:
                row(d.coding.code_id).added += 1
    return list(counts.values())
