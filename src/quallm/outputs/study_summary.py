"""The study summary: a narrative across all transcripts of a run, written by the model, checked by quallm.

The model reads each code's grounded quotes (map, batched under a token budget) and then the per-code
statements (reduce). It only writes sentences and picks quotes by reference number; the figures are
attached by code from :func:`quallm.analysis.synthesis.synthesise`, and every quote is an existing
grounded coding, so the summary can neither invent a number nor a quote.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quallm.analysis.synthesis import CodeComparison, GroupSize, format_share, group_line, synthesise
from quallm.coding.prompting import PromptTemplate, codebook_values, load_prompt
from quallm.coding.reask import ask
from quallm.core.codebook import Codebook, Kind, kind_sections
from quallm.core.codings import Coding
from quallm.core.errors import InputError, ModelError
from quallm.core.results import Failure, points_from_old_layout
from quallm.models.base import ChatModel, ChatRequest, Usage
from quallm.run.opening import OpenRun, open_run
from quallm.run.rundir import RunDir, atomic_write_text, now_iso

# --- study summary: what the model answers in -----------------------------------------------------


class _MapPoint(BaseModel):
    model_config = ConfigDict(extra="ignore")
    code_id: str
    statement: str
    quote_ids: list[int] = Field(default_factory=list)


class _MapAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    points: list[_MapPoint] = Field(default_factory=list)


class _ReduceAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    narrative: str


def _obj(props: dict[str, object]) -> dict[str, object]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _map_schema(code_ids: list[str], n_quotes: int) -> dict[str, object]:
    point = _obj(
        {
            "code_id": {"type": "string", "enum": code_ids},
            "statement": {"type": "string", "maxLength": 700},
            "quote_ids": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": max(1, n_quotes)},
                "maxItems": 2,
            },
        }
    )
    return _obj({"points": {"type": "array", "items": point, "maxItems": max(1, len(code_ids))}})


def _reduce_schema() -> dict[str, object]:
    return _obj({"narrative": {"type": "string", "maxLength": 2500}})


# Figures are quallm's job: prose that states a percentage is sent back.
_PERCENT = re.compile(r"\d\s*(?:%|per\s?cent\b|percent\b)", re.IGNORECASE)


# --- study summary: values ------------------------------------------------------------------------


class StudyQuote(BaseModel):
    """A quote of the study summary: an existing grounded coding, chosen by the model by number."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    code_id: str
    start: int
    end: int
    text: str
    turn_index: int | None = None


class Prevalence(BaseModel):
    """How many transcripts raised a code (computed by quallm)."""

    model_config = ConfigDict(frozen=True)

    n_with_code: int
    n_transcripts: int
    share: float


class StudyPoint(BaseModel):
    """One code in the study summary: the model's statement, quallm's figures, one or two quotes."""

    model_config = ConfigDict(frozen=True)

    code_id: str
    kind: str
    label: str
    statement: str
    generated_by_model: bool = True
    prevalence: Prevalence
    by_group: CodeComparison | None = None
    quotes: tuple[StudyQuote, ...] = ()


class StudySummary(BaseModel):
    """A study-level summary across all transcripts of a run."""

    model_config = ConfigDict(frozen=True)

    generated: str
    model: str
    codebook_name: str
    n_transcripts: int
    narrative: str
    narrative_generated_by_model: bool = True
    points: tuple[StudyPoint, ...] = Field(default=(), description="by category, each by prevalence")
    kinds: tuple[Kind, ...] = Field(default=(), description="the codebook's categories")
    absent_codes: tuple[str, ...] = Field(default=(), description="codes of the codebook found in no transcript")
    by: str | None = None
    groups: tuple[GroupSize, ...] = ()
    group_cautions: tuple[str, ...] = ()
    n_tests: int = 0
    prompts: dict[str, str] = Field(default_factory=dict, description="prompt id -> template hash")
    calls: int = 0
    usage: Usage = Usage()
    failures: tuple[Failure, ...] = ()
    dropped_refs: tuple[str, ...] = Field(default=(), description="quote numbers the model gave that were invalid")
    notes: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data: Any) -> Any:
        return points_from_old_layout(data)

    @property
    def challenges(self) -> tuple[StudyPoint, ...]:
        """Points of kind ``challenge`` (the default categories)."""
        return tuple(p for p in self.points if p.kind == "challenge")

    @property
    def enablers(self) -> tuple[StudyPoint, ...]:
        """Points of kind ``enabler`` (the default categories)."""
        return tuple(p for p in self.points if p.kind == "enabler")


class StudyOptions(BaseModel):
    """Settings of :func:`study_summary`."""

    model_config = ConfigDict(frozen=True)

    max_prompt_tokens: int = Field(default=3000, ge=200, description="no map or reduce prompt exceeds this")
    max_quotes_per_code: int = Field(default=8, ge=1)
    max_reasks: int = 2
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 1536


@dataclass
class _Block:
    """One code's evidence for the map step."""

    code_id: str
    header: str
    quotes: list[Coding]


@dataclass
class _Calls:
    """What the model calls of one study summary used and lost."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, usage: Usage, attempts: int) -> None:
        self.calls += attempts
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens


def _flat(text: str) -> str:
    return " ".join(text.split())


def _spread(codings: list[Coding], limit: int) -> list[Coding]:
    """Up to ``limit`` codings, taken round-robin over transcripts so that no interview dominates."""
    per: dict[str, list[Coding]] = {}
    for c in codings:
        per.setdefault(c.transcript_id, []).append(c)
    out = [c for group in zip_longest(*per.values()) for c in group if c is not None]
    return out[:limit]


class _Summariser:
    """The map and reduce calls of one study summary."""

    def __init__(self, model: ChatModel, codebook: Codebook, options: StudyOptions) -> None:
        self.model = model
        self.codebook = codebook
        self.options = options
        self.map_prompt = load_prompt("study_map")
        self.reduce_prompt = load_prompt("study_reduce")
        self.tally = _Calls()
        self.failures: list[Failure] = []
        self.notes: list[str] = []

    def _tokens(self, prompt: PromptTemplate, body: str) -> int:
        system, user = prompt.render(
            study=self.codebook.name, evidence=body, statements=body, **codebook_values(self.codebook)
        )
        return self.model.count_tokens(system) + self.model.count_tokens(user)

    def _request(self, prompt: PromptTemplate, body: str, schema: dict[str, Any], name: str) -> ChatRequest:
        o = self.options
        return prompt.request(
            self.model,
            schema,
            name,
            temperature=o.temperature,
            max_tokens=o.max_tokens,
            seed=o.seed,
            study=self.codebook.name,
            evidence=body,
            statements=body,
            **codebook_values(self.codebook),
        )

    # -- map

    @staticmethod
    def _render_blocks(blocks: Sequence[_Block]) -> tuple[str, list[tuple[str, Coding]]]:
        lines: list[str] = []
        refs: list[tuple[str, Coding]] = []
        for b in blocks:
            lines.append(b.header)
            for c in b.quotes:
                refs.append((b.code_id, c))
                lines.append(f'  [{len(refs)}] ({c.transcript_id}) "{_flat(c.quote or "")}"')
        return "\n".join(lines), refs

    def batches(self, blocks: list[_Block]) -> list[list[_Block]]:
        """Pack code blocks into batches whose prompt fits the token budget (a lone block is trimmed)."""
        budget = self.options.max_prompt_tokens
        out: list[list[_Block]] = []
        current: list[_Block] = []
        for block in blocks:
            if current and self._tokens(self.map_prompt, self._render_blocks([*current, block])[0]) > budget:
                out.append(current)
                current = []
            if not current:
                # A block that is too big on its own loses its last quotes until it fits (keeps at least one).
                before = len(block.quotes)
                while len(block.quotes) > 1 and self._tokens(self.map_prompt, self._render_blocks([block])[0]) > budget:
                    block.quotes.pop()
                if len(block.quotes) < before:
                    self.notes.append(
                        f"{block.code_id}: {before - len(block.quotes)} quote(s) left out of the "
                        f"prompt to keep it under {budget} tokens."
                    )
            current.append(block)
        if current:
            out.append(current)
        return out

    def map_batch(self, blocks: list[_Block]) -> tuple[dict[str, tuple[str, list[Coding]]], list[str]]:
        """Statements and chosen quotes per code of one batch; (answers, invalid references)."""
        body, refs = self._render_blocks(blocks)
        ids = [b.code_id for b in blocks]
        request = self._request(self.map_prompt, body, _map_schema(ids, len(refs)), "study_map")

        def check(ans: _MapAnswer) -> list[str]:
            errs = []
            for i, p in enumerate(ans.points):
                if p.code_id not in ids:
                    errs.append(f"points[{i}].code_id {p.code_id!r} is not one of: {', '.join(ids)}")
                if not p.statement.strip():
                    errs.append(f"points[{i}].statement is empty")
                elif _PERCENT.search(p.statement):
                    errs.append(f"points[{i}].statement gives a percentage; write no figures, quallm adds them")
            return errs

        ans, _, attempts, usage = ask(self.model, request, _MapAnswer, check=check, max_reasks=self.options.max_reasks)
        self.tally.add(usage, attempts)
        out: dict[str, tuple[str, list[Coding]]] = {}
        dropped: list[str] = []
        for p in ans.points:
            if p.code_id in out:
                continue
            chosen: list[Coding] = []
            for qid in p.quote_ids[:2]:
                if 1 <= qid <= len(refs) and refs[qid - 1][0] == p.code_id and refs[qid - 1][1] not in chosen:
                    chosen.append(refs[qid - 1][1])
                else:
                    dropped.append(f"{p.code_id}: quote #{qid}")
            out[p.code_id] = (p.statement.strip(), chosen)
        return out, dropped

    # -- reduce

    def reduce(self, items: list[str]) -> str:
        """One narrative from ``items`` (statements, or partial narratives), in as many rounds as it takes."""
        budget = self.options.max_prompt_tokens
        level = 0
        while True:
            body = "\n\n".join(items)
            if len(items) == 1 and level > 0:
                return items[0]
            if self._tokens(self.reduce_prompt, body) <= budget or len(items) <= 2:
                if self._tokens(self.reduce_prompt, body) > budget:
                    self.notes.append(f"A reduce prompt exceeds the {budget}-token budget (two items too long).")
                return self._reduce_call(body)
            # Too much for one prompt: reduce batches (of at least two items, so each round shrinks) first.
            batches: list[list[str]] = [[]]
            for item in items:
                grown = "\n\n".join([*batches[-1], item])
                if len(batches[-1]) >= 2 and self._tokens(self.reduce_prompt, grown) > budget:
                    batches.append([])
                batches[-1].append(item)
            items = [self._reduce_call("\n\n".join(b)) for b in batches]
            level += 1
            self.notes.append(f"Reduce round {level}: {len(batches)} partial narratives (token budget {budget}).")

    def _reduce_call(self, body: str) -> str:
        request = self._request(self.reduce_prompt, body, _reduce_schema(), "study_reduce")

        def check(ans: _ReduceAnswer) -> list[str]:
            if not ans.narrative.strip():
                return ["narrative is empty"]
            if _PERCENT.search(ans.narrative):
                return ["the narrative gives a percentage; write no figures, quallm adds them"]
            return []

        ans, _, attempts, usage = ask(
            self.model, request, _ReduceAnswer, check=check, max_reasks=self.options.max_reasks
        )
        self.tally.add(usage, attempts)
        return ans.narrative.strip()


def _spread_word(n: int, total: int) -> str:
    """How widespread a code is, in words computed here (the model never sees the counts)."""
    if total and n == total:
        return "raised in every interview"
    if n == 1:
        return "raised in one interview"
    if n * 2 > total:
        return "raised in most interviews"
    if n * 2 == total:
        return "raised in half of the interviews"
    return "raised in some interviews"


def _quote(c: Coding) -> StudyQuote:
    assert c.start is not None and c.end is not None
    return StudyQuote(
        transcript_id=c.transcript_id,
        code_id=c.code_id,
        start=c.start,
        end=c.end,
        text=c.quote or "",
        turn_index=c.turn_index,
    )


def study_summary(
    run_dir: str | Path | RunDir | OpenRun,
    model: ChatModel,
    by: str | None = None,
    *,
    codebook: Codebook | None = None,
    options: StudyOptions | None = None,
) -> StudySummary:
    """A study-level narrative of the main challenges and enablers across all transcripts of a run.

    Map: per code, the model writes a short statement from that code's grounded quotes across
    transcripts (codes batched so that no prompt exceeds ``options.max_prompt_tokens``) and picks one or
    two quotes by number. Reduce: the model writes the overall narrative from the statements. The
    prevalence figures (overall, and by ``by`` with its tests) are attached from :func:`synthesise`; the
    model never writes them. A failed call is recorded in ``failures`` and its codes keep their quotes.
    """
    opts = options or StudyOptions()
    run = open_run(run_dir, need_manifest=False)
    syn = synthesise(run, by, codebook=codebook, seed=opts.seed)
    cb, _ = run.codebook(codebook)
    results = run.results
    grounded: dict[str, list[Coding]] = {}
    for r in results:
        for c in r.codings:
            if c.start is not None and c.end is not None and c.quote:
                grounded.setdefault(c.code_id, []).append(c)
    s = _Summariser(model, cb, opts)
    blocks = []
    for row in syn.codes:
        if row.code_id not in grounded:
            continue
        code = cb.get(row.code_id)
        definition = f" Definition: {_flat(code.definition)}" if code else ""
        tag = f"{row.kind}: {row.label}" if row.kind else row.label
        header = f"{row.code_id} ({tag}).{definition}"
        blocks.append(_Block(row.code_id, header, _spread(grounded[row.code_id], opts.max_quotes_per_code)))
    statements: dict[str, tuple[str, list[Coding], bool]] = {}
    dropped: list[str] = []
    for batch in s.batches(blocks):
        try:
            answers, lost = s.map_batch(batch)
        except ModelError as exc:
            s.failures.append(Failure.from_error("study_map:" + ",".join(b.code_id for b in batch), exc))
            answers, lost = {}, []
        dropped += lost
        for b in batch:
            if b.code_id in answers:
                text, chosen = answers[b.code_id]
                statements[b.code_id] = (text, chosen or b.quotes[:1], True)
            else:  # left out by the model or a failed call: the code still appears, with its first quote
                statements[b.code_id] = ("(not summarised by the model)", b.quotes[:1], False)
    comparisons = {c.code_id: c for c in syn.by.codes} if syn.by else {}
    n = len(syn.transcript_ids)
    points: list[StudyPoint] = []
    for row in sorted((r for r in syn.codes if r.code_id in statements), key=lambda r: -r.n_transcripts):
        text, chosen, by_model = statements[row.code_id]
        points.append(
            StudyPoint(
                code_id=row.code_id,
                kind=row.kind,
                label=row.label,
                statement=text,
                generated_by_model=by_model,
                prevalence=Prevalence(n_with_code=row.n_transcripts, n_transcripts=n, share=row.share or 0.0),
                by_group=comparisons.get(row.code_id),
                quotes=tuple(_quote(c) for c in chosen),
            )
        )
    narrative, narrative_by_model = "No codes from the codebook were found in any transcript.", False
    items = [
        f"- {p.code_id} ({p.kind + ': ' if p.kind else ''}{p.label}; {_spread_word(p.prevalence.n_with_code, n)}): "
        f"{p.statement}"
        for p in points
        if p.generated_by_model
    ]
    if items:
        try:
            narrative, narrative_by_model = s.reduce(items), True
        except ModelError as exc:
            s.failures.append(Failure.from_error("study_reduce", exc))
            narrative = "(The overall narrative could not be generated; see the per-code statements.)"
    elif points:
        narrative = "(No per-code statements were generated, so there is no overall narrative.)"
    notes = [
        "Statements and the narrative were written by the model from the coded quotes only; every figure was "
        "computed by quallm and every quote is a grounded coding chosen by number.",
        *s.notes,
        *syn.notes,
    ]
    return StudySummary(
        generated=now_iso(),
        model=model.name,
        codebook_name=cb.name,
        n_transcripts=n,
        narrative=narrative,
        narrative_generated_by_model=narrative_by_model,
        points=tuple(p for _, group in kind_sections(points, cb.categories) for p in group),
        kinds=cb.categories,
        absent_codes=tuple(r.code_id for r in syn.codes if r.n_transcripts == 0),
        by=syn.by.column if syn.by else None,
        groups=syn.by.groups if syn.by else (),
        group_cautions=syn.by.cautions if syn.by else (),
        n_tests=syn.by.n_tests if syn.by else 0,
        prompts={p.id: p.hash for p in (s.map_prompt, s.reduce_prompt)},
        calls=s.tally.calls,
        usage=Usage(prompt_tokens=s.tally.prompt_tokens, completion_tokens=s.tally.completion_tokens),
        failures=tuple(s.failures),
        dropped_refs=tuple(dropped),
        notes=tuple(notes),
    )


def render_study_markdown(s: StudySummary) -> str:
    """The study summary as markdown; the figures come from quallm, the prose from the model."""
    out = [
        f"# Study summary: {s.codebook_name}",
        "",
        f"*{s.n_transcripts} transcripts; written by {s.model} on {s.generated}. The model wrote the prose; "
        "quallm computed every figure and checked every quote against its transcript.*",
        "",
        s.narrative,
        "",
    ]
    if s.by:
        out += [f"Groups by `{s.by}`: " + ", ".join(f"{g.group} ({g.n_transcripts})" for g in s.groups), ""]
        out += [f"> {c}" for c in s.group_cautions] + [""]
    for title, points in kind_sections(s.points, s.kinds):
        out += [f"## {title}", ""]
        for p in points:
            out.append(f"### {p.label} (`{p.code_id}`)")
            out.append(f"Raised in {format_share(p.prevalence.n_with_code, p.prevalence.n_transcripts)} transcripts.")
            if p.by_group is not None:
                out.append(f"By {s.by}: {group_line(p.by_group)}.")
            out += ["", p.statement, ""]
            for q in p.quotes:
                where = f"turn {q.turn_index}, " if q.turn_index is not None else ""
                out.append(f'> "{_flat(q.text)}" ({q.transcript_id}, {where}chars {q.start}-{q.end})')
            out.append("")
    if s.absent_codes:
        out += ["## Codes not found in any transcript", "", ", ".join(f"`{c}`" for c in s.absent_codes), ""]
    if s.failures:
        out += ["## Failures", ""] + [f"- {f.unit}: {f.error_type}: {f.message}" for f in s.failures] + [""]
    out += ["## Notes", ""] + [f"- {n}" for n in s.notes]
    return "\n".join(out).rstrip() + "\n"


def write_study_summary(s: StudySummary, out_dir: str | Path) -> list[Path]:
    """Write ``study_summary.json`` and ``study_summary.md`` into ``out_dir``."""
    out = Path(out_dir)
    paths = [out / "study_summary.json", out / "study_summary.md"]
    try:
        atomic_write_text(paths[0], json.dumps(s.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(paths[1], render_study_markdown(s))
    except OSError as exc:
        raise InputError(out, f"cannot write the study summary: {exc}") from exc
    return paths


def read_study_summary(path: str | Path) -> StudySummary | None:
    """A ``study_summary.json`` (or None when absent or unreadable)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return StudySummary.model_validate_json(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


__all__ = [
    "Prevalence",
    "StudyOptions",
    "StudyPoint",
    "StudyQuote",
    "StudySummary",
    "read_study_summary",
    "render_study_markdown",
    "study_summary",
    "write_study_summary",
]
