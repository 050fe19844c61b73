"""The Transcript value: one canonical text and its speaker turns with character offsets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Turn(BaseModel):
    """One speaker turn. ``text == transcript.text[start:end]`` always holds."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(description="0-based position among all turns of the transcript")
    speaker: str
    start: int
    end: int
    text: str
    is_interviewer: bool = False
    timestamp: str | None = Field(default=None, description="start time as written in the source, if any")
    end_timestamp: str | None = None


class Transcript(BaseModel):
    """A transcript: its id (file name without extension), canonical text, turns and metadata."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str = Field(description="path of the file it was read from")
    format: str
    text: str
    turns: tuple[Turn, ...]
    metadata: dict[str, str] = Field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def coded_turns(self, speakers: frozenset[str] | None = None) -> list[Turn]:
        """Turns that are coded: those of ``speakers`` if given, else every non-interviewer turn."""
        if speakers:
            wanted = {s.casefold() for s in speakers}
            return [t for t in self.turns if t.speaker.casefold() in wanted]
        return [t for t in self.turns if not t.is_interviewer]

    def turn_at(self, offset: int) -> Turn | None:
        """The turn that contains character ``offset``, if any."""
        for t in self.turns:
            if t.start <= offset < t.end:
                return t
        return None
