"""What extraction produces per transcript: codings, a grounded summary, and an honest account of losses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quallm.core.codings import Coding
from quallm.core.errors import describe


class Usage(BaseModel):
    """Token counts of one completion."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0


class Quote(BaseModel):
    """A grounded quote: ``text == transcript.text[start:end]``."""

    model_config = ConfigDict(frozen=True)

    start: int
    end: int
    text: str
    turn_index: int | None = None


class SummaryPoint(BaseModel):
    """What the interviewee said about one code."""

    model_config = ConfigDict(frozen=True)

    code_id: str
    kind: str
    label: str
    summary: str
    quotes: tuple[Quote, ...] = ()
    by_model: bool = Field(default=True, description="False: the model wrote nothing for it; quotes alone")


class Summary(BaseModel):
    """A per-transcript summary: a short narrative, then a point per code raised, by category."""

    model_config = ConfigDict(frozen=True)

    narrative: str
    points: tuple[SummaryPoint, ...] = Field(default=(), description="in the codebook's category order")
    generated_by_model: bool = True

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data: Any) -> Any:
        return points_from_old_layout(data)

    @property
    def challenges(self) -> tuple[SummaryPoint, ...]:
        """Points of kind ``challenge`` (the default categories)."""
        return tuple(p for p in self.points if p.kind == "challenge")

    @property
    def enablers(self) -> tuple[SummaryPoint, ...]:
        """Points of kind ``enabler`` (the default categories)."""
        return tuple(p for p in self.points if p.kind == "enabler")


def points_from_old_layout(data: Any) -> Any:
    """Results written before categories were the codebook's held ``challenges`` and ``enablers`` lists."""
    if isinstance(data, dict) and ("challenges" in data or "enablers" in data):
        data = dict(data)
        old = [*(data.pop("challenges", None) or ()), *(data.pop("enablers", None) or ())]
        data["points"] = [*old, *(data.get("points") or ())]
    return data


class Ungrounded(BaseModel):
    """A quote the model gave that could not be found in the transcript (dropped, never reported)."""

    model_config = ConfigDict(frozen=True)

    code_id: str
    quote: str
    turn_index: int | None = None
    where: str = "coding"


class Failure(BaseModel):
    """A unit of work that failed after all retries, with the last raw output and errors."""

    model_config = ConfigDict(frozen=True)

    unit: str
    error_type: str
    message: str
    raw: str | None = None
    errors: tuple[str, ...] = ()

    @classmethod
    def from_error(cls, unit: str, exc: BaseException) -> Failure:
        """The failure of ``unit`` by ``exc``, keeping its last raw output and validation errors."""
        d = describe(exc)
        return cls(
            unit=unit,
            error_type=d["type"],
            message=d["message"],
            raw=d.get("raw"),
            errors=tuple(d.get("errors", ())),
        )


class TranscriptResult(BaseModel):
    """Everything extraction found in one transcript; written atomically as results/<id>.json."""

    transcript_id: str
    source: str
    format: str
    fingerprint: str = Field(description="hash of the inputs that produced this result (for resume)")
    proposals_fingerprint: str | None = Field(
        default=None,
        description="hash of the inputs that produced the proposals, thresholds left out: a result whose "
        "proposals match is re-split at new thresholds without a model call",
    )
    metadata: dict[str, str] = Field(default_factory=dict)
    n_turns: int
    n_coded_units: int
    strategy: str
    codings: list[Coding] = Field(default_factory=list)
    candidates: list[Coding] = Field(
        default_factory=list,
        description="proposals below the probability threshold: not reported as codings, kept for review",
    )
    summary: Summary | None = None
    ungrounded: list[Ungrounded] = Field(default_factory=list)
    failures: list[Failure] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    calls: int = 0
    reasks: int = 0
    usage: Usage = Usage()
    seconds: float = 0.0
    packed_with: list[str] = Field(
        default_factory=list, description="transcripts coded in the same request (chunk strategy packing)"
    )

    @property
    def complete(self) -> bool:
        """True when every unit and the summary succeeded."""
        return not self.failures

    def model_dump_result(self) -> dict[str, Any]:
        """JSON-ready dict including the derived ``complete`` flag."""
        return {**self.model_dump(mode="json"), "complete": self.complete}
