"""The Coding value: one code applied to one span of one transcript by one coder.

Machine codings (from extraction) and human codings (imported from CSV or REFI-QDA) share this type,
so agreement and export never care where a coding came from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Alignment = Literal["exact", "normalised", "fuzzy", "human"]


class Coding(BaseModel):
    """A code on a span. ``quote == transcript.text[start:end]`` for every grounded coding."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    coder: str
    code_id: str
    start: int | None = None
    end: int | None = None
    turn_index: int | None = None
    speaker: str | None = None
    quote: str | None = None
    alignment: Alignment = "human"
    rationale: str | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    probability: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="the model's own token probability that the code applies (never a self-reported number); "
        "None where the backend gives none",
    )
    needs_review: bool = Field(
        default=False,
        description="a calibration found this code not reliable: check the coding before relying on it",
    )
