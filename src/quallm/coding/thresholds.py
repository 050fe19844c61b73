"""Applying a calibration: per-code thresholds on the probabilities already stored with each proposal.

Thresholds only move proposals between ``codings`` (reported) and ``candidates`` (kept for review), so
a result already answered is re-derived here without any model call. Codings of codes whose verdict is
not ``reliable`` are marked ``needs_review``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from quallm.core.codings import Coding
from quallm.core.results import TranscriptResult


def threshold_for(code_id: str, thresholds: Mapping[str, float], default: float) -> float:
    """The code's calibrated threshold, else ``default`` (``--min-confidence``)."""
    return thresholds.get(code_id, default)


def is_reported(c: Coding, thresholds: Mapping[str, float], default: float) -> bool:
    """A proposal is reported when its probability reaches its code's threshold; one without a
    probability is always reported (nothing is dropped on a number that does not exist)."""
    return c.probability is None or c.probability >= threshold_for(c.code_id, thresholds, default)


def mark_review(codings: Iterable[Coding], review_codes: Sequence[str]) -> list[Coding]:
    """``codings`` with ``needs_review`` set exactly for those of ``review_codes``."""
    codes = set(review_codes)
    return [c if c.needs_review == (c.code_id in codes) else c.model_copy(update={"needs_review": c.code_id in codes})
            for c in codings]


def repartition(
    result: TranscriptResult,
    thresholds: Mapping[str, float],
    default: float,
    review_codes: Sequence[str] = (),
    fingerprint: str | None = None,
) -> TranscriptResult:
    """``result`` with its proposals (codings and candidates) split again at the given thresholds.

    The summary was written from the codings before: its points for codes no longer reported are
    dropped, and a warning says which newly reported codes it does not cover (run without the stored
    result, e.g. in a fresh directory, for a new summary, which is a model call)."""
    proposals = sorted([*result.codings, *result.candidates], key=lambda c: (c.start or 0, c.code_id))
    reported = [c for c in proposals if is_reported(c, thresholds, default)]
    below = [c.model_copy(update={"needs_review": False}) for c in proposals if not is_reported(c, thresholds, default)]
    reported = mark_review(reported, review_codes)
    summary = result.summary
    warnings = list(result.warnings)
    if summary is not None:
        codes = {c.code_id for c in reported}
        kept = tuple(p for p in summary.points if p.code_id in codes)
        missing = sorted(codes - {p.code_id for p in kept})
        summary = summary.model_copy(update={"points": kept})
        if missing:
            warnings.append(f"summary written before calibration: no point for {', '.join(missing)}")
    return result.model_copy(update={
        "codings": reported,
        "candidates": below,
        "summary": summary,
        "warnings": warnings,
        **({"fingerprint": fingerprint} if fingerprint else {}),
    })
