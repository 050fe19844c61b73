"""Review of machine codings by a person: the decision log, what it means downstream, and a local web app.

``decisions`` (the append-only ``review.jsonl``), ``state`` (the queue and one reviewer's standing
decisions), ``derive`` (the reviewer's coding, labels for calibration, counts per code) need nothing
beyond the core; ``app`` and ``server`` (Starlette, uvicorn) are imported only by ``quallm review``.
"""

from quallm.review.decisions import REVIEW_FILE, CodingRef, Decision, DecisionLog, LogRead, read_log
from quallm.review.derive import (
    CodeCounts,
    ReviewedCoding,
    ReviewLabel,
    review_counts,
    review_labels,
    reviewed_coder,
    reviewed_codings,
)
from quallm.review.state import ReviewItem, ReviewState, build_items, fold

__all__ = [
    "REVIEW_FILE",
    "CodeCounts",
    "CodingRef",
    "Decision",
    "DecisionLog",
    "LogRead",
    "ReviewItem",
    "ReviewLabel",
    "ReviewState",
    "ReviewedCoding",
    "build_items",
    "fold",
    "read_log",
    "review_counts",
    "review_labels",
    "reviewed_coder",
    "reviewed_codings",
]
