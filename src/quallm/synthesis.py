"""Study-level synthesis of a run: who raised which code, how that differs between groups, and a study summary.

Two layers, kept apart on purpose:

* :func:`synthesise` counts. A code x transcript matrix (codings per code per transcript, and
  presence), and, for one metadata column, the prevalence of each code per group with an exact test
  of difference between the groups (Fisher's exact test for two groups, the Freeman-Halton extension
  for more; Holm-adjusted across the codes tested). Every number in quallm's outputs comes from here.
* :func:`study_summary` writes prose. The model reads each code's grounded quotes (map, batched under
  a token budget) and then the per-code statements (reduce). It only writes sentences and picks quotes
  by reference number; the figures are attached by code from :func:`synthesise`, and every quote is an
  existing grounded coding, so the summary can neither invent a number nor a quote.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import gammaln
from scipy.stats import fisher_exact

from quallm.codebook import Codebook, Kind, kind_sections
from quallm.codings import Coding
from quallm.csvsafe import Cell, to_csv
from quallm.errors import ConfigError, InputError, ModelError
from quallm.models.base import ChatModel, ChatRequest, Usage
from quallm.prompting import PromptTemplate, codebook_values, load_prompt
from quallm.reask import ask
from quallm.results import Failure, TranscriptResult, points_from_old_layout
from quallm.run.opening import OpenRun, open_run
from quallm.rundir import RunDir, atomic_write_text, now_iso

SMALL_GROUP = 5  # a group with fewer transcripts than this makes a comparison descriptive only
MAX_EXACT_TABLES = 1_000_000  # above this many candidate tables, the 2 x k test is done by Monte Carlo
MONTE_CARLO_DRAWS = 100_000
DEFAULT_MIN_GROUPS, DEFAULT_MAX_GROUPS = 2, 6
SMALL_NUMBERS = "small numbers: descriptive only"

TestName = Literal["fisher", "freeman-halton", "monte-carlo", "none"]


# --- values -------------------------------------------------------------------------------------


class CodeRow(BaseModel):
    """One code's row of the code x transcript matrix."""

    model_config = ConfigDict(frozen=True)

    code_id: str
    label: str
    kind: str
    counts: dict[str, int] = Field(description="transcript id -> number of codings of this code")
    present_in: tuple[str, ...] = Field(description="transcripts with at least one coding of this code")
    n_codings: int
    n_transcripts: int = Field(description="number of transcripts with the code")
    share: float | None = Field(description="n_transcripts / transcripts in the run (None when the run is empty)")


class GroupCount(BaseModel):
    """How many transcripts of one group have a code."""

    model_config = ConfigDict(frozen=True)

    group: str
    n_transcripts: int
    n_with_code: int
    share: float


class GroupSize(BaseModel):
    """A group of the comparison column and its number of transcripts."""

    model_config = ConfigDict(frozen=True)

    group: str
    n_transcripts: int


class ExactTest(BaseModel):
    """The result of one exact (or Monte Carlo) test of a 2 x k table."""

    model_config = ConfigDict(frozen=True)

    test: TestName
    p_value: float | None
    method: str
    n_tables: int | None = Field(default=None, description="tables enumerated, or random tables drawn (Monte Carlo)")


class CodeComparison(BaseModel):
    """Prevalence of one code per group, and the test of difference between the groups."""

    model_config = ConfigDict(frozen=True)

    code_id: str
    label: str
    kind: str
    groups: tuple[GroupCount, ...]
    test: TestName
    p_value: float | None
    p_holm: float | None = Field(description="Holm-adjusted over the codes tested for this column")
    method: str
    caution: str | None = None


class GroupComparison(BaseModel):
    """Prevalence of every code by the groups of one metadata column."""

    model_config = ConfigDict(frozen=True)

    column: str
    groups: tuple[GroupSize, ...]
    excluded: tuple[str, ...] = Field(description="transcripts with no value in the column (left out)")
    codes: tuple[CodeComparison, ...]
    n_tests: int = Field(description="number of codes actually tested (the Holm family size)")
    small_numbers: bool
    cautions: tuple[str, ...]


class Synthesis(BaseModel):
    """What :func:`synthesise` found in a run; JSON-ready with ``model_dump(mode="json")``."""

    model_config = ConfigDict(frozen=True)

    run_dir: str
    codebook_name: str
    codebook_version: str
    transcript_ids: tuple[str, ...]
    incomplete: tuple[str, ...] = Field(description="transcripts with failed units: their counts may be low")
    metadata_columns: tuple[str, ...]
    codes: tuple[CodeRow, ...]
    by: GroupComparison | None = None
    notes: tuple[str, ...] = ()

    def code(self, code_id: str) -> CodeRow | None:
        """The matrix row of ``code_id``, if any."""
        return next((c for c in self.codes if c.code_id == code_id), None)


# --- the run's codebook and metadata -------------------------------------------------------------


def run_codebook(run: str | Path | RunDir | OpenRun, codebook: Codebook | None = None) -> tuple[Codebook, list[str]]:
    """The codebook the run used (``codebook`` if given, else the file in its manifest), and notes."""
    return open_run(run, need_manifest=False).codebook(codebook)


def metadata_columns(results: Sequence[TranscriptResult]) -> list[str]:
    """Metadata columns in the order they first appear."""
    return list(dict.fromkeys(k for r in results for k in r.metadata))


def default_group_column(
    results: Sequence[TranscriptResult], min_groups: int = DEFAULT_MIN_GROUPS, max_groups: int = DEFAULT_MAX_GROUPS
) -> str | None:
    """The first metadata column with between ``min_groups`` and ``max_groups`` distinct values, if any."""
    for col in metadata_columns(results):
        values = {r.metadata.get(col, "").strip() for r in results} - {""}
        if min_groups <= len(values) <= max_groups:
            return col
    return None


# --- exact tests ----------------------------------------------------------------------------------


def _log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.asarray(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1), dtype=np.float64)


# Tables whose probability is within this relative distance of the observed one count as "as extreme"
# (floating-point ties), as in R's fisher.test.
_REL_TOL = 1e-7


def freeman_halton(
    present: Sequence[int],
    totals: Sequence[int],
    *,
    max_tables: int = MAX_EXACT_TABLES,
    draws: int = MONTE_CARLO_DRAWS,
    seed: int = 0,
) -> ExactTest:
    """Exact test of a 2 x k table (``present[j]`` of ``totals[j]`` transcripts in group j have the code).

    The Freeman-Halton extension of Fisher's exact test: with the margins fixed, the p-value is the
    total probability (multivariate hypergeometric) of the tables no more probable than the observed
    one. Every table is enumerated when there are at most ``max_tables`` of them; otherwise
    ``draws`` random tables with the same margins are drawn (seeded), and the method says so.
    """
    x = np.asarray(present, dtype=np.int64)
    n = np.asarray(totals, dtype=np.int64)
    if x.shape != n.shape or x.ndim != 1 or len(x) < 2 or (x < 0).any() or (x > n).any():
        raise ConfigError(f"not a valid 2 x k table: present={list(present)}, totals={list(totals)}")
    m, big_n = int(x.sum()), int(n.sum())
    log_denominator = float(_log_choose(np.array(big_n), np.array(m)))
    nf = n.astype(np.float64)

    def log_p(tables: np.ndarray) -> np.ndarray:
        return np.asarray(_log_choose(nf, tables.astype(np.float64)).sum(axis=-1) - log_denominator)

    observed = float(log_p(x[None, :])[0])
    threshold = observed + math.log1p(_REL_TOL)
    if count_tables(m, [int(v) for v in n]) <= max_tables:
        lp = _table_log_probs(m, [int(v) for v in n]) - log_denominator
        p = float(np.exp(lp[lp <= threshold]).sum())
        return ExactTest(
            test="freeman-halton",
            p_value=min(1.0, p),
            method=f"Freeman-Halton exact test (all {len(lp)} tables with these margins enumerated)",
            n_tables=len(lp),
        )
    rng = np.random.default_rng(seed)
    sims = rng.multivariate_hypergeometric(n, m, size=draws)
    hits = int((log_p(sims) <= threshold).sum())
    return ExactTest(
        test="monte-carlo",
        p_value=(hits + 1) / (draws + 1),
        method=f"Monte Carlo Freeman-Halton test ({draws} random tables with these margins, seed {seed}); "
        "too many tables to enumerate",
        n_tables=draws,
    )


def count_tables(m: int, sizes: Sequence[int]) -> int:
    """How many 2 x k tables have column totals ``sizes`` and first-row total ``m`` (exact, by counting)."""
    ways = [1] + [0] * m  # ways[s]: prefixes of the groups seen so far whose counts add up to s
    for size in sizes:
        ways = [sum(ways[s - x] for x in range(min(size, s) + 1)) for s in range(m + 1)]
    return ways[m]


def _table_log_probs(m: int, sizes: list[int]) -> np.ndarray:
    """``sum_j log C(sizes[j], t[j])`` for every table ``t`` with ``sum(t) == m``.

    Built group by group, keeping only prefixes that can still reach ``m``, so memory stays in
    proportion to the number of tables (the tables themselves are never stored, only their weights).
    """
    partial = np.zeros(1, dtype=np.int64)
    weight = np.zeros(1, dtype=np.float64)
    remaining = sum(sizes)
    for size in sizes:
        remaining -= size
        xs = np.arange(size + 1, dtype=np.int64)
        new_partial = (partial[:, None] + xs[None, :]).ravel()
        new_weight = (weight[:, None] + _log_choose(np.full(size + 1, float(size)), xs.astype(np.float64))).ravel()
        keep = (new_partial <= m) & (new_partial + remaining >= m)
        partial, weight = new_partial[keep], new_weight[keep]
    return weight


def two_by_k_test(present: Sequence[int], totals: Sequence[int], *, seed: int = 0) -> ExactTest:
    """Fisher's exact test (scipy) for two groups, Freeman-Halton for more; no test when nothing can differ."""
    m, big_n = sum(present), sum(totals)
    if len(totals) < 2:
        return ExactTest(test="none", p_value=None, method="not tested: fewer than two groups")
    if m == 0 or m == big_n:
        return ExactTest(test="none", p_value=None, method="not tested: the code is in all transcripts or in none")
    if len(totals) == 2:
        a, b = present
        res = fisher_exact([[a, totals[0] - a], [b, totals[1] - b]], alternative="two-sided")
        return ExactTest(test="fisher", p_value=min(1.0, float(res.pvalue)), method="Fisher's exact test, two-sided")
    return freeman_halton(present, totals, seed=seed)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; ``None`` entries are not tests and stay ``None``."""
    idx = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i] or 0.0)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(idx):
        p = p_values[i]
        assert p is not None
        running = max(running, min(1.0, (len(idx) - rank) * p))
        out[i] = running
    return out


# --- synthesis ----------------------------------------------------------------------------------


def _code_rows(codebook: Codebook, results: Sequence[TranscriptResult], notes: list[str]) -> list[CodeRow]:
    ids = [r.transcript_id for r in results]
    counts: dict[str, dict[str, int]] = {c.id: dict.fromkeys(ids, 0) for c in codebook.codes if c.codable}
    unknown: dict[str, int] = {}
    for r in results:
        for c in r.codings:
            if c.code_id not in counts:
                unknown[c.code_id] = unknown.get(c.code_id, 0) + 1
                counts[c.code_id] = dict.fromkeys(ids, 0)
            counts[c.code_id][r.transcript_id] += 1
    if unknown:
        notes.append("Codings of codes not in the codebook (kept, kind unknown): " + ", ".join(sorted(unknown)))
    rows = []
    for code_id, per in counts.items():
        code = codebook.get(code_id)
        present = tuple(t for t in ids if per[t] > 0)
        rows.append(
            CodeRow(
                code_id=code_id,
                label=code.label if code else code_id,
                kind=(code.kind or "") if code else "unknown",
                counts=per,
                present_in=present,
                n_codings=sum(per.values()),
                n_transcripts=len(present),
                share=len(present) / len(ids) if ids else None,
            )
        )
    return rows


def compare_groups(
    rows: Sequence[CodeRow], results: Sequence[TranscriptResult], column: str, *, seed: int = 0
) -> GroupComparison:
    """Prevalence of each code by the values of metadata ``column``, with exact tests and Holm-adjusted p."""
    available = metadata_columns(results)
    if column not in available:
        raise ConfigError(f"no metadata column {column!r}; the run has: {', '.join(available) or 'no metadata'}")
    members: dict[str, list[str]] = {}
    excluded = []
    for r in results:
        value = r.metadata.get(column, "").strip()
        if value:
            members.setdefault(value, []).append(r.transcript_id)
        else:
            excluded.append(r.transcript_id)
    names = sorted(members)
    sizes = [len(members[g]) for g in names]
    small = any(s < SMALL_GROUP for s in sizes)
    tests = []
    for row in rows:
        present = [sum(1 for t in members[g] if row.counts.get(t, 0) > 0) for g in names]
        tests.append((row, present, two_by_k_test(present, sizes, seed=seed)))
    adjusted = holm([t.p_value for _, _, t in tests])
    n_tests = sum(1 for _, _, t in tests if t.p_value is not None)
    codes = []
    for (row, present, test), p_holm in zip(tests, adjusted, strict=True):
        codes.append(
            CodeComparison(
                code_id=row.code_id,
                label=row.label,
                kind=row.kind,
                groups=tuple(
                    GroupCount(group=g, n_transcripts=s, n_with_code=k, share=k / s)
                    for g, s, k in zip(names, sizes, present, strict=True)
                ),
                test=test.test,
                p_value=test.p_value,
                p_holm=p_holm,
                method=test.method,
                caution=SMALL_NUMBERS if small and test.p_value is not None else None,
            )
        )
    cautions = [
        f"{n_tests} test(s) were run on this column, one per code found in some but not all transcripts; "
        "Holm-adjusted p-values allow for that number of tests.",
        "The tests ask whether the split of a code across groups would be surprising if these transcripts had "
        "been assigned to the groups at random. They say nothing about cause, and the interviews are not a "
        "random sample, so they do not generalise beyond these transcripts.",
        "A large p-value is not evidence that the groups are alike: with few transcripts the tests can only "
        "detect very large differences.",
    ]
    if small:
        cautions.insert(
            0,
            f"Small numbers: descriptive only. At least one group has fewer than {SMALL_GROUP} "
            "transcripts (" + ", ".join(f"{g}: {s}" for g, s in zip(names, sizes, strict=True)) + ").",
        )
    if len(names) < 2:
        cautions.insert(0, f"Only one group in {column!r}: nothing to compare.")
    if excluded:
        cautions.append(f"{len(excluded)} transcript(s) with no {column!r} value left out: {', '.join(excluded)}.")
    return GroupComparison(
        column=column,
        groups=tuple(GroupSize(group=g, n_transcripts=s) for g, s in zip(names, sizes, strict=True)),
        excluded=tuple(excluded),
        codes=tuple(codes),
        n_tests=n_tests,
        small_numbers=small,
        cautions=tuple(cautions),
    )


def synthesise(
    run_dir: str | Path | RunDir | OpenRun, by: str | None = None, *, codebook: Codebook | None = None, seed: int = 0
) -> Synthesis:
    """The code x transcript matrix of a run and, when ``by`` names a metadata column, prevalence by group.

    ``codebook`` defaults to the file named in the run's manifest. ``seed`` seeds the Monte Carlo test,
    used only when a 2 x k table has too many possible tables to enumerate.
    """
    run = open_run(run_dir, need_manifest=False)
    results = run.results
    cb, notes = run.codebook(codebook)
    rows = _code_rows(cb, results, notes)
    incomplete = tuple(r.transcript_id for r in results if not r.complete)
    if incomplete:
        notes.append(
            f"{len(incomplete)} transcript(s) have failed units, so their counts may be too low: "
            + ", ".join(incomplete)
            + "."
        )
    notes.append(
        "Counts are the model's grounded codings; quotes that could not be found in the transcript "
        "were dropped and are not counted."
    )
    return Synthesis(
        run_dir=str(run.path),
        codebook_name=cb.name,
        codebook_version=cb.version,
        transcript_ids=tuple(r.transcript_id for r in results),
        incomplete=incomplete,
        metadata_columns=tuple(metadata_columns(results)),
        codes=tuple(rows),
        by=compare_groups(rows, results, by, seed=seed) if by else None,
        notes=tuple(notes),
    )


def _num(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def safe_column_name(column: str) -> str:
    """``column`` made safe for a file name (``prevalence_by_<this>.csv``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", column).strip("._") or "column"


def write_synthesis(s: Synthesis, out_dir: str | Path) -> list[Path]:
    """Write ``synthesis.json``, ``matrix.csv`` and, with a group column, ``prevalence_by_<column>.csv``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create the output folder: {exc}") from exc
    paths = [out / "synthesis.json", out / "matrix.csv"]
    header = ["code_id", "label", "kind", *s.transcript_ids, "n_transcripts_with_code", "share", "n_codings"]
    matrix: list[list[Cell]] = [list(header)]
    for c in s.codes:
        matrix.append(
            [
                c.code_id,
                c.label,
                c.kind,
                *(c.counts[t] for t in s.transcript_ids),
                c.n_transcripts,
                _num(c.share),
                c.n_codings,
            ]
        )
    atomic_write_text(paths[0], json.dumps(s.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(paths[1], to_csv(matrix))
    if s.by is not None:
        rows: list[list[Cell]] = [
            [
                "code_id",
                "label",
                "kind",
                "group",
                "n_transcripts",
                "n_with_code",
                "share",
                "test",
                "p_value",
                "p_holm",
                "n_tests",
                "caution",
            ]
        ]
        for cc in s.by.codes:
            for g in cc.groups:
                rows.append(
                    [
                        cc.code_id,
                        cc.label,
                        cc.kind,
                        g.group,
                        g.n_transcripts,
                        g.n_with_code,
                        _num(g.share),
                        cc.test,
                        _num(cc.p_value),
                        _num(cc.p_holm),
                        s.by.n_tests,
                        cc.caution or "",
                    ]
                )
        paths.append(out / f"prevalence_by_{safe_column_name(s.by.column)}.csv")
        atomic_write_text(paths[-1], to_csv(rows))
    return paths


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


# --- study summary: files -------------------------------------------------------------------------


def format_p(p: float | None) -> str:
    """A p-value for reading: ``0.032``, ``<0.001``, or ``not tested``."""
    if p is None:
        return "not tested"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_share(k: int, n: int) -> str:
    """``3 of 5 (60%)``."""
    return f"{k} of {n} ({k / n:.0%})" if n else f"{k} of {n}"


def group_line(c: CodeComparison) -> str:
    """One code's prevalence by group and its test, in words."""
    parts = "; ".join(f"{g.group}: {g.n_with_code}/{g.n_transcripts}" for g in c.groups)
    if c.p_value is None:
        return f"{parts} ({c.method})"
    caution = f"; {c.caution}" if c.caution else ""
    return f"{parts} ({c.method}: p = {format_p(c.p_value)}, Holm-adjusted p = {format_p(c.p_holm)}{caution})"


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
    "SMALL_NUMBERS",
    "CodeComparison",
    "CodeRow",
    "ExactTest",
    "GroupComparison",
    "GroupCount",
    "GroupSize",
    "Prevalence",
    "StudyOptions",
    "StudyPoint",
    "StudyQuote",
    "StudySummary",
    "Synthesis",
    "compare_groups",
    "count_tables",
    "default_group_column",
    "format_p",
    "freeman_halton",
    "holm",
    "read_study_summary",
    "render_study_markdown",
    "run_codebook",
    "study_summary",
    "synthesise",
    "two_by_k_test",
    "write_study_summary",
    "write_synthesis",
]
