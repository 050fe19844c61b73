"""What the model answers in: pydantic models and the strict JSON schemas sent with each request.

The schemas are written out by hand (not generated) because OpenAI's strict mode needs every
property required and ``additionalProperties: false``, and because ``enum`` and ``maxItems`` bound
what a small local model can generate.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel


class TurnCode(BaseModel):
    """One code the model gives a single answer (per-unit strategy), with the sentence that shows it."""

    model_config = ConfigDict(extra="ignore")
    code_id: str
    sentence: int


class TurnAnswer(BaseModel):
    """The model's answer for one unit."""

    model_config = ConfigDict(extra="ignore")
    codes: list[TurnCode] = Field(default_factory=list)


class ChunkCoding(BaseModel):
    """One coding of a segment (whole-chunk strategy)."""

    model_config = ConfigDict(extra="ignore")
    segment: int
    code_id: str
    quote: str
    rationale: str = ""
    confidence: float = Field(default=0.5, ge=0.0, le=1.0)


class ChunkAnswer(BaseModel):
    """The model's answer for one chunk."""

    model_config = ConfigDict(extra="ignore")
    codings: list[ChunkCoding] = Field(default_factory=list)


class SummaryAnswer(RootModel[dict[str, str]]):
    """A per-transcript summary as the model writes it: one sentence per code id."""


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def turn_schema(code_ids: list[str], max_codes: int, n_sentences: int) -> dict[str, Any]:
    """Schema of a per-unit answer: at most ``max_codes`` codes, each pointing at one numbered sentence.

    Sentence numbers instead of free quotes keep a small model's answer to a few tokens, and the
    evidence is then our own exact slice of the transcript.
    """
    item = _obj(
        {
            "code_id": {"type": "string", "enum": code_ids},
            "sentence": {"type": "integer", "minimum": 1, "maximum": max(1, n_sentences)},
        }
    )
    return _obj({"codes": {"type": "array", "items": item, "maxItems": max_codes}})


def chunk_schema(code_ids: list[str], n_segments: int, max_codings: int) -> dict[str, Any]:
    """Schema of a whole-chunk answer."""
    item = _obj(
        {
            "segment": {"type": "integer", "minimum": 1, "maximum": max(1, n_segments)},
            "code_id": {"type": "string", "enum": code_ids},
            "quote": {"type": "string", "maxLength": 400},
            "rationale": {"type": "string", "maxLength": 400},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        }
    )
    return _obj({"codings": {"type": "array", "items": item, "maxItems": max_codings}})


def summary_schema(code_ids: list[str]) -> dict[str, Any]:
    """Schema of a per-transcript summary: one sentence per coded code, keyed by its id, in order.

    The keys are fixed (all required, in the order given), so a grammar or strict schema makes the model
    write each code's sentence right after naming it: it cannot skip a code or fold one into another.
    """
    return _obj({cid: {"type": "string", "maxLength": 180} for cid in code_ids})


class DiscoveredTheme(BaseModel):
    """One candidate theme the model found in a chunk (inductive discovery), with a quote."""

    model_config = ConfigDict(extra="ignore")
    quote: str
    topic: str
    description: str = ""
    kind: str


class DiscoveryAnswer(BaseModel):
    """The model's candidate challenges and enablers for one chunk."""

    model_config = ConfigDict(extra="ignore")
    themes: list[DiscoveredTheme] = Field(default_factory=list)


class MergeAnswer(BaseModel):
    """For each numbered theme, the number of an earlier theme that means the same, or 0."""

    model_config = ConfigDict(extra="ignore")
    same_as: list[int] = Field(default_factory=list)


def discovery_schema(
    max_themes: int, min_themes: int = 0, kinds: list[str] | tuple[str, ...] = ("challenge", "enabler")
) -> dict[str, Any]:
    """Schema of a discovery answer: themes, each a quote, a topic (the label), a description, then its kind.

    The kind comes last so that the model decides it after describing the theme (evidence, then
    abstraction, then classification). The label is asked for as ``topic``: asked for a "label", the
    1.5B model often wrote "Challenge". Measured on the 1.5B model: with two lists (one per kind) it
    copied its challenges into the enablers, and with one request per kind it listed the same topics
    under both.
    """
    item = _obj(
        {
            "quote": {"type": "string", "maxLength": 300},
            "topic": {"type": "string", "maxLength": 60},
            "description": {"type": "string", "maxLength": 200},
            "kind": {"type": "string", "enum": list(kinds)},
        }
    )
    themes: dict[str, Any] = {"type": "array", "items": item, "maxItems": max(1, max_themes)}
    if min_themes:
        themes["minItems"] = min(min_themes, max_themes)
    return _obj({"themes": themes})


def merge_schema(n_themes: int) -> dict[str, Any]:
    """Schema of a merge answer: exactly one number per theme (0, or an earlier theme's number).

    A fixed-length list rather than free groups: asked for groups, the 1.5B model repeated numbers
    until it was cut off; the grammar cannot let a fixed-length list run on.
    """
    n = max(1, n_themes)
    number = {"type": "integer", "minimum": 0, "maximum": n}
    return _obj({"same_as": {"type": "array", "items": number, "minItems": n, "maxItems": n}})
