"""Per-transcript summary: one sentence per code found, written by the model from that code's own quotes.

The model sees only already-grounded quotes, grouped under their codes, and answers with one sentence per
code id, the ids fixed by the schema in order: it can neither skip a code nor fold one into another, and
each point's quotes are its own code's grounded evidence (real slices of the transcript by construction).
The narrative names the codes found (see :func:`narrative`).
"""

from __future__ import annotations

from typing import Protocol

from quallm.coding.fencing import fence
from quallm.coding.prompting import load_prompt, ordered_codes
from quallm.coding.reask import ask
from quallm.coding.schemas import SummaryAnswer, summary_schema
from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.core.results import Quote, Summary, SummaryPoint, Ungrounded
from quallm.core.transcript import Transcript
from quallm.models.base import ChatModel, Usage


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
MAX_QUOTES_PER_POINT = 2


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
        lines.append(f"{code.id}: {code.label}" + (f" ({code.kind})" if code.kind else ""))
        lines.extend(f'  - "{fence(c.quote or "")}"' for cid, c in evidence if cid == code_id)
    meta = ", ".join(f"{k}: {v}" for k, v in sorted(transcript.metadata.items()))
    prompt = load_prompt("summary")
    request = prompt.request(
        model,
        summary_schema(present),
        "summary",
        temperature=options.temperature,
        max_tokens=100 + 80 * len(present),  # 180 characters a sentence: about 45 tokens, and the key
        seed=options.seed,
        transcript_id=fence(transcript.id),
        metadata=fence(f"({meta})") if meta else "",
        evidence="\n".join(lines),
    )

    def check(ans: SummaryAnswer) -> list[str]:
        missing = [cid for cid in present if cid not in ans.root]
        return [f"give a sentence for every code: missing {', '.join(missing)}"] if missing else []

    ans, _, attempts, usage = ask(model, request, SummaryAnswer, check=check, max_reasks=options.max_reasks)
    points = []
    for code_id in present:
        code = codebook.get(code_id)
        assert code is not None
        quotes = tuple(
            Quote(start=c.start, end=c.end, text=transcript.text[c.start : c.end], turn_index=c.turn_index)
            for cid, c in evidence
            if cid == code_id and c.start is not None and c.end is not None
        )[:MAX_QUOTES_PER_POINT]
        prose = " ".join(ans.root.get(code_id, "").split())
        # A point the model left empty is its grounded quotes alone, marked as such, never a placeholder.
        points.append(
            SummaryPoint(
                code_id=code.id, kind=code.kind or "", label=code.label, summary=prose, quotes=quotes,
                by_model=bool(prose),
            )
        )  # fmt: skip
    return Summary(narrative=narrative(codebook, present), points=tuple(points)), usage, attempts, []


def narrative(codebook: Codebook, present: list[str]) -> str:
    """The transcript's narrative: which codes were found, by category, in the codebook's words.

    Built from the codings, not written by the model: measured on the demo, the 1.5B model's narratives
    folded every theme into the first code, so a narrative here names exactly the codes found and no other.
    """
    codes = [c for c in (codebook.get(i) for i in present) if c is not None]
    if not codebook.categories:
        return f"Codes found: {'; '.join(c.label for c in codes)}."
    parts = []
    for k in codebook.categories:
        labels = [c.label for c in codes if c.kind == k.name]
        if labels:
            parts.append(f"{len(labels)} {k.name if len(labels) == 1 else k.plural_name} ({'; '.join(labels)})")
    return "Raised " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."
