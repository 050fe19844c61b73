"""Per-transcript summary, written by the model from the transcript's grounded codings.

The model sees only numbered, already-grounded quotes and answers with evidence numbers, so every quote
in a summary is a real slice of the transcript by construction; it never quotes freely.
"""

from __future__ import annotations

from typing import Protocol

from quallm.codebook import Codebook
from quallm.codings import Coding
from quallm.models.base import ChatModel, Usage
from quallm.prompting import codebook_values, load_prompt, ordered_codes
from quallm.reask import ask
from quallm.results import Quote, Summary, SummaryPoint, Ungrounded
from quallm.schemas import SummaryAnswer, summary_schema
from quallm.transcripts.model import Transcript


class SamplingOptions(Protocol):
    """The settings a summary request takes from the extraction's options (``ExtractOptions`` has them)."""

    @property
    def temperature(self) -> float: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def max_reasks(self) -> int: ...

MAX_EVIDENCE_PER_CODE = 3


def _evidence(codebook: Codebook, codings: list[Coding]) -> list[tuple[str, Coding]]:
    by_code: dict[str, list[Coding]] = {}
    for c in codings:
        by_code.setdefault(c.code_id, []).append(c)
    ordered = ordered_codes(codebook)
    out: list[tuple[str, Coding]] = []
    for code in ordered:
        for c in by_code.get(code.id, [])[:MAX_EVIDENCE_PER_CODE]:
            out.append((code.id, c))
    return out


def summarise(
    model: ChatModel, codebook: Codebook, transcript: Transcript, codings: list[Coding], options: SamplingOptions
) -> tuple[Summary, Usage, int, list[Ungrounded]]:
    """A grounded summary of one transcript: (summary, usage, attempts, links that were dropped)."""
    evidence = _evidence(codebook, codings)
    if not evidence:
        return (
            Summary(narrative="No codes from the codebook were found in this transcript.", generated_by_model=False),
            Usage(),
            0,
            [],
        )
    present = list(dict.fromkeys(cid for cid, _ in evidence))
    lines = []
    for code_id in present:
        code = codebook.get(code_id)
        assert code is not None
        lines.append(f"{code.id} ({code.kind}: {code.label})" if code.kind else f"{code.id} ({code.label})")
        for n, (cid, c) in enumerate(evidence, start=1):
            if cid == code_id:
                lines.append(f'  [{n}] "{c.quote}"')
    meta = ", ".join(f"{k}: {v}" for k, v in sorted(transcript.metadata.items()))
    prompt = load_prompt("summary")
    request = prompt.request(
        model,
        summary_schema(present, len(evidence)),
        "summary",
        temperature=options.temperature,
        max_tokens=max(options.max_tokens, 1536),
        seed=options.seed,
        transcript_id=transcript.id,
        metadata=f"({meta})" if meta else "",
        evidence="\n".join(lines),
        **codebook_values(codebook),
    )

    def check(ans: SummaryAnswer) -> list[str]:
        errs = []
        if not ans.narrative.strip():
            errs.append("narrative is empty")
        for i, p in enumerate(ans.points):
            if p.code_id not in present:
                errs.append(f"points[{i}].code_id {p.code_id!r} is not one of the coded codes: {', '.join(present)}")
        return errs

    ans, _, attempts, usage = ask(model, request, SummaryAnswer, check=check, max_reasks=options.max_reasks)
    lost: list[Ungrounded] = []
    points: dict[str, SummaryPoint] = {}
    for p in ans.points:
        if p.code_id in points:
            continue
        quotes = []
        for qid in p.quote_ids[:2]:
            if 1 <= qid <= len(evidence) and evidence[qid - 1][0] == p.code_id:
                c = evidence[qid - 1][1]
                assert c.start is not None and c.end is not None
                quotes.append(
                    Quote(start=c.start, end=c.end, text=transcript.text[c.start : c.end], turn_index=c.turn_index)
                )
            else:
                lost.append(Ungrounded(code_id=p.code_id, quote=f"evidence #{qid}", where="summary"))
        code = codebook.get(p.code_id)
        assert code is not None
        points[p.code_id] = SummaryPoint(
            code_id=code.id, kind=code.kind or "", label=code.label, summary=p.summary.strip(), quotes=tuple(quotes)
        )
    for code_id in present:  # a coded code the model left out still appears, with its first quote
        if code_id not in points:
            code = codebook.get(code_id)
            assert code is not None
            c = next(c for cid, c in evidence if cid == code_id)
            assert c.start is not None and c.end is not None
            points[code_id] = SummaryPoint(
                code_id=code_id,
                kind=code.kind or "",
                label=code.label,
                summary="(not summarised by the model)",
                quotes=(
                    Quote(start=c.start, end=c.end, text=transcript.text[c.start : c.end], turn_index=c.turn_index),
                ),
            )
    ordered = [points[c] for c in present]
    summary = Summary(
        narrative=ans.narrative.strip(),
        points=tuple(ordered),
    )
    return summary, usage, attempts, lost
