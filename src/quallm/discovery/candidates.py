"""Candidate themes per chunk: the open-coding pass of inductive discovery.

Each chunk of a transcript is sent with the interviewee's sentences numbered (the interviewer's turns
shown unnumbered, as context). The model answers with candidate challenges and enablers, each pointing
at one or two sentence numbers; the evidence is then our own exact slice of the transcript, so a
candidate's quotes are grounded by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quallm.chunking import Chunk, chunk_transcript, sentence_spans
from quallm.errors import ModelError
from quallm.models.base import ChatModel, ChatRequest, Usage
from quallm.prompting import load_prompt
from quallm.reask import ask
from quallm.results import Failure, Quote
from quallm.schemas import DiscoveryAnswer, discovery_schema
from quallm.tokenizers import CallableTokenizer
from quallm.transcripts.model import Transcript

Kind = Literal["challenge", "enabler"]


class DiscoverOptions(BaseModel):
    """Settings that change what discovery produces (the candidate ones are part of the resume fingerprint)."""

    model_config = ConfigDict(frozen=True)

    focus: str = ""
    chunk_tokens: int = 1500
    context_tokens: int = 150
    max_themes_per_chunk: int = 5
    repeats: int = 1
    temperature: float = 0.0
    repeat_temperature: float = 0.7
    seed: int = 0
    max_tokens: int = 1024
    max_reasks: int = 2
    coded_speakers: tuple[str, ...] = ()
    merge: Literal["embedding", "embedding+model"] = "embedding"
    similarity: float = 0.6
    min_transcripts: int = 2
    concurrency: int = 1

    def temperature_for(self, repeat: int) -> float:
        """One run at ``temperature``; with repeats, every run samples at ``repeat_temperature``."""
        return self.temperature if self.repeats <= 1 else self.repeat_temperature

    def seed_for(self, repeat: int) -> int:
        """Each repeat gets its own seed."""
        return self.seed + repeat


class Candidate(BaseModel):
    """A theme proposed for one chunk of one transcript in one run, with its grounded evidence."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    repeat: int
    chunk: int
    kind: Kind
    label: str
    description: str
    quotes: tuple[Quote, ...]

    @property
    def text(self) -> str:
        """What is embedded to compare candidates: the label and the description."""
        return f"{self.label}: {self.description}" if self.description else self.label


class CandidateSet(BaseModel):
    """All candidates of one transcript in one run, as saved in the run directory."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    repeat: int
    fingerprint: str
    candidates: tuple[Candidate, ...] = ()
    dropped: int = 0  # themes with no usable evidence (empty label, bad kind, no valid sentence)
    failures: tuple[Failure, ...] = ()
    calls: int = 0
    usage: Usage = Usage()

    @property
    def complete(self) -> bool:
        """True when every chunk was answered."""
        return not self.failures


_Found = tuple[list[Candidate], int, Usage, int]


@dataclass(frozen=True)
class _Numbered:
    request: ChatRequest
    spans: list[tuple[int, int, int]]  # (start, end, turn_index) of sentence n at index n-1


class CandidateFinder:
    """Builds discovery requests and turns answers into grounded candidates."""

    def __init__(self, model: ChatModel, options: DiscoverOptions) -> None:
        self.model = model
        self.options = options
        self.tokenizer = CallableTokenizer(model.count_tokens)
        self._prompt = load_prompt("discover_chunk")

    def chunks(self, transcript: Transcript) -> list[Chunk]:
        """The transcript's chunks (interviewee turns coded, interviewer turns as context)."""
        speakers = frozenset(self.options.coded_speakers) or None
        return [
            c
            for c in chunk_transcript(
                transcript,
                self.tokenizer,
                self.options.chunk_tokens,
                context_tokens=self.options.context_tokens,
                coded_speakers=speakers,
            )
            if c.coded_segments
        ]

    def request(self, transcript: Transcript, chunk: Chunk, repeat: int) -> _Numbered:
        """The request for one chunk in run ``repeat``: the interviewee's sentences numbered from 1."""
        lines: list[str] = []
        spans: list[tuple[int, int, int]] = []
        for seg in chunk.segments:
            if not seg.coded:
                lines.append(f"({seg.speaker}) {seg.text}")
                continue
            numbered = []
            for a, b in sentence_spans(seg.text, seg.start):
                spans.append((a, b, seg.turn_index))
                numbered.append(f"[{len(spans)}] {transcript.text[a:b]}")
            lines.append(f"({seg.speaker})\n" + "\n".join(numbered))
        ctx = ""
        if chunk.context:
            ctx = "Earlier in the interview (context only):\n" + "\n".join(
                f"({s.speaker}) {s.text}" for s in chunk.context
            )
            ctx += "\n"
        o = self.options
        req = self._prompt.request(
            self.model,
            discovery_schema(len(spans), o.max_themes_per_chunk),
            "discovered_themes",
            temperature=o.temperature_for(repeat),
            max_tokens=o.max_tokens,
            seed=o.seed_for(repeat),
            focus=o.focus or "(not stated: infer it from the interview)",
            max_themes=str(o.max_themes_per_chunk),
            context=ctx,
            excerpt="\n\n".join(lines),
        )
        return _Numbered(req, spans)

    def find(self, transcript: Transcript, chunk: Chunk, repeat: int) -> _Found:
        """Candidates of one chunk: (candidates, dropped, usage, attempts)."""
        numbered = self.request(transcript, chunk, repeat)
        n = len(numbered.spans)

        def check(ans: DiscoveryAnswer) -> list[str]:
            errs = []
            for i, t in enumerate(ans.themes):
                if t.kind not in ("challenge", "enabler"):
                    errs.append(f"themes[{i}].kind must be 'challenge' or 'enabler', not {t.kind!r}")
                if not any(1 <= s <= n for s in t.sentences):
                    errs.append(f"themes[{i}].sentences must name sentences 1..{n}")
            return errs

        ans, _, attempts, usage = ask(
            self.model, numbered.request, DiscoveryAnswer, check=check, max_reasks=self.options.max_reasks
        )
        out: list[Candidate] = []
        dropped = 0
        for t in ans.themes[: self.options.max_themes_per_chunk]:
            label = " ".join(t.label.split()).strip(" .")
            sentences = sorted({s for s in t.sentences if 1 <= s <= n})
            if not label or t.kind not in ("challenge", "enabler") or not sentences:
                dropped += 1
                continue
            quotes = []
            for s in sentences:
                a, b, turn = numbered.spans[s - 1]
                quotes.append(Quote(start=a, end=b, text=transcript.text[a:b], turn_index=turn))
            out.append(
                Candidate(
                    transcript_id=transcript.id,
                    repeat=repeat,
                    chunk=chunk.index,
                    kind=t.kind,  # type: ignore[arg-type]
                    label=label,
                    description=" ".join(t.description.split()),
                    quotes=tuple(quotes),
                )
            )
        return out, dropped, usage, attempts

    def units(
        self, transcript: Transcript, repeat: int
    ) -> list[tuple[str, Callable[[], tuple[list[Candidate], int, Usage, int]]]]:
        """The units of work for one transcript in one run, each with a name and a thunk."""
        return [(f"chunk {c.index}", partial(self.find, transcript, c, repeat)) for c in self.chunks(transcript)]

    def run(
        self, transcript: Transcript, repeat: int, fingerprint: str, on_unit: Callable[[], None] | None = None
    ) -> CandidateSet:
        """All candidates of a transcript in one run; a failed chunk is recorded and the rest goes on."""
        candidates: list[Candidate] = []
        failures: list[Failure] = []
        dropped = calls = p_tok = c_tok = 0
        for name, thunk in self.units(transcript, repeat):
            try:
                found, lost, usage, attempts = thunk()
            except ModelError as exc:
                failures.append(Failure.from_error(name, exc))
                calls += 1
                continue
            finally:
                if on_unit:
                    on_unit()
            candidates.extend(found)
            dropped += lost
            calls += attempts
            p_tok += usage.prompt_tokens
            c_tok += usage.completion_tokens
        return CandidateSet(
            transcript_id=transcript.id,
            repeat=repeat,
            fingerprint=fingerprint,
            candidates=tuple(candidates),
            dropped=dropped,
            failures=tuple(failures),
            calls=calls,
            usage=Usage(prompt_tokens=p_tok, completion_tokens=c_tok),
        )
