"""Study-level synthesis of a run: who raised which code, and how that differs between groups.

:func:`synthesise` counts. A code x transcript matrix (codings per code per transcript, and
presence), and, for one metadata column, the prevalence of each code per group with an exact test
of difference between the groups (:mod:`quallm.analysis.exact_tests`; Holm-adjusted across the codes
tested). Every number in quallm's outputs comes from here; the study summary
(:mod:`quallm.outputs.study_summary`) attaches these figures to the model's prose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from quallm.analysis.exact_tests import TestName, holm, two_by_k_test
from quallm.core.codebook import Codebook
from quallm.core.csvsafe import Cell, to_csv
from quallm.core.errors import ConfigError, InputError
from quallm.core.results import TranscriptResult
from quallm.run.opening import OpenRun, open_run
from quallm.run.rundir import RunDir, atomic_write_text

SMALL_GROUP = 5  # a group with fewer transcripts than this makes a comparison descriptive only
DEFAULT_MIN_GROUPS, DEFAULT_MAX_GROUPS = 2, 6
SMALL_NUMBERS = "small numbers: descriptive only"



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


# --- numbers in words ----------------------------------------------------------------------------


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


__all__ = [
    "SMALL_NUMBERS",
    "CodeComparison",
    "CodeRow",
    "GroupComparison",
    "GroupCount",
    "GroupSize",
    "Synthesis",
    "compare_groups",
    "default_group_column",
    "format_p",
    "format_share",
    "group_line",
    "metadata_columns",
    "run_codebook",
    "safe_column_name",
    "synthesise",
    "write_synthesis",
]
