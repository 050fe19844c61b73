"""Reconcile a run (or any coding files) with human coding: load inputs, compare, write the tables.

The statistics live in :mod:`quallm.analysis.agreement`; this module only gathers transcripts, the codebook and
codings from a run directory and coding files (CSV, REFI-QDA), and writes the results next to the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quallm.analysis.agreement import AgreementReport, read_human_csv, reconcile, write_agreement
from quallm.analysis.agreement.probability import ProbabilityCalibration, probability_calibration
from quallm.analysis.agreement.units import UnitKind
from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.core.errors import ConfigError, InputError, QuallmError
from quallm.core.transcript import Transcript
from quallm.ingest.codebooks import load_codebook
from quallm.ingest.transcripts import InputOptions, gather_inputs, load_transcript
from quallm.run.opening import open_run
from quallm.run.rundir import atomic_write_text


@dataclass
class RunInputs:
    """What a run directory knows: its transcripts, codebook, machine codings (and the candidates below
    the probability threshold, kept for review) and coverage."""

    transcripts: list[Transcript]
    codebook: Codebook | None
    codings: list[Coding]
    coverage: dict[str, set[str]] = field(default_factory=dict)
    candidates: list[Coding] = field(default_factory=list)


def load_run(run_dir: str | Path) -> RunInputs:
    """Transcripts (re-read from the files the manifest names), codebook and machine codings of a run."""
    run = open_run(run_dir)
    results = run.results
    transcripts = run.transcripts()
    cb_path = run.codebook_path()
    codebook = load_codebook(cb_path) if cb_path else None
    codings = [c for r in results for c in r.codings]
    candidates = [c for r in results for c in r.candidates]
    coverage: dict[str, set[str]] = {}
    for r in results:
        if r.complete:  # a finished transcript with no codings is a real "nothing applies", not missing
            for coder in {c.coder for c in r.codings} or {f"quallm ({run.manifest.model.name})"}:
                coverage.setdefault(coder, set()).add(r.transcript_id)
    return RunInputs(transcripts, codebook, codings, coverage, candidates)


def load_coding_file(
    path: str | Path, transcripts: Sequence[Transcript], codebook: Codebook | None
) -> tuple[list[Coding], list[str]]:
    """Codings from a CSV (human format or a run's codings.csv) or a REFI-QDA .qdpx / .qde project."""
    p = Path(path)
    ids = codebook.ids if codebook else None
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return read_human_csv(p, transcripts, ids)
    if suffix in (".qdpx", ".qde"):
        from quallm.ingest.qdpx import read_qdpx

        imported = read_qdpx(p, transcripts, codebook)
        return imported.codings, imported.problems
    raise InputError(p, f"unknown coding file type {suffix or '(none)'!r}; use .csv, .qdpx or .qde")


def roll_up(codings: Sequence[Coding], codebook: Codebook) -> list[Coding]:
    """``codings`` plus, for each coding of a child code, the same coding of each of its ancestors.

    A coding of a child counts for its parent: agreement on the parent is then agreement on "anything
    under it". Codings of codes not in the codebook are kept as they are.
    """
    out = list(codings)
    for c in codings:
        out.extend(c.model_copy(update={"code_id": a}) for a in codebook.ancestors(c.code_id))
    return out


def _codes_compared(codebook: Codebook | None, rollup: bool) -> list[str] | None:
    if codebook is None:
        return None
    return codebook.all_ids if rollup else codebook.ids


def reconcile_run(
    run_dir: str | Path,
    human: Sequence[str | Path],
    *,
    unit: UnitKind = "turn",
    rollup: bool = False,
    coders: Sequence[str] | None = None,
    min_overlap: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> tuple[AgreementReport, list[str]]:
    """Compare a run's machine codings with human coding files and reviewed machine codings; write the
    tables into the run.

    Reviewers' codings (``quallm review``: ``RUN_DIR/review.jsonl``, on the transcripts each marked
    reviewed) join as their own coders, labelled reviewed machine codings, never as human coders.
    With ``rollup`` (a codebook with parents), every code is compared, and a coding of a child also counts
    for its parents (:func:`roll_up`). Returns the report and the problems met while importing (one line each).
    """
    from quallm.analysis.reviewed import reviewed_codings

    inputs = load_run(run_dir)
    if rollup and inputs.codebook is None:
        raise ConfigError(f"{run_dir}: --rollup needs the run's codebook, which was not found")
    problems: list[str] = []
    human_codings: list[Coding] = []
    for f in human:
        got, probs = load_coding_file(f, inputs.transcripts, inputs.codebook)
        human_codings.extend(got)
        problems.extend(probs)
    reviewed = reviewed_codings(run_dir)
    problems.extend(reviewed.problems)
    if not human_codings and not reviewed.codings and not reviewed.coverage:
        raise ConfigError(
            "no human codings could be read from: " + (", ".join(str(h) for h in human) or "(no files given)")
            + "; and no transcript is marked reviewed in review.jsonl"
        )
    machine = sorted({c.coder for c in inputs.codings} | set(inputs.coverage))
    compared = inputs.codings + human_codings + reviewed.codings
    if rollup and inputs.codebook is not None:
        compared = roll_up(compared, inputs.codebook)
    report = reconcile(
        inputs.transcripts,
        compared,
        _codes_compared(inputs.codebook, rollup),
        unit=unit,
        coders=coders,
        n_boot=n_boot,
        seed=seed,
        min_overlap=min_overlap,
        machine_coders=machine,
        coverage={**_coverage(inputs.coverage, human_codings), **reviewed.coverage},
        reviewed_coders=sorted(reviewed.coverage),
    )
    if inputs.codebook is not None:
        calibration = probability_calibration_of(inputs, human_codings, inputs.codebook.ids, unit, min_overlap)
        report = report.model_copy(update={"probability_calibration": calibration})
    out = Path(out_dir) if out_dir else Path(run_dir)
    write_agreement(report, out)
    atomic_write_text(
        Path(run_dir) / "human_codings.json",
        json.dumps([c.model_dump(mode="json") for c in human_codings], indent=1, ensure_ascii=False) + "\n",
    )
    return report, problems


def probability_calibration_of(
    inputs: RunInputs, human: Sequence[Coding], codes: Sequence[str], unit: UnitKind = "turn", min_overlap: int = 1
) -> list[ProbabilityCalibration]:
    """Per human coder: Brier score, ECE and reliability bins of the machine's probabilities.

    A forecast is a unit and code the machine proposed with a probability (reported or a candidate; the
    highest where several proposals fall in one unit), on the transcripts that coder coded; its outcome
    is whether the coder marked that unit with that code."""
    from quallm.analysis.calibration.labels import label_table

    out = []
    for coder in sorted({c.coder for c in human}):
        mine = [c for c in human if c.coder == coder]
        ids = {c.transcript_id for c in mine}
        transcripts = [t for t in inputs.transcripts if t.id in ids]
        proposals = [c for c in (*inputs.codings, *inputs.candidates) if c.transcript_id in ids]
        table, _ = label_table(transcripts, proposals, mine, codes, unit, min_overlap)
        scored = np.isfinite(table.s)
        out.append(probability_calibration(coder, table.s[scored], table.y[scored]))
    return out


def reconcile_files(
    transcripts: Sequence[str | Path],
    coding_files: Sequence[str | Path],
    *,
    codebook_path: str | Path | None = None,
    unit: UnitKind = "turn",
    rollup: bool = False,
    coders: Sequence[str] | None = None,
    min_overlap: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
    out_dir: str | Path = ".",
    input_options: InputOptions | None = None,
) -> tuple[AgreementReport, list[str]]:
    """The general form: compare any coding files (two or more coders in all) on the given transcripts."""
    loaded: list[Transcript] = []
    gathered = gather_inputs(transcripts, input_options)
    problems: list[str] = [*gathered.warnings, *(str(e) for e in gathered.errors)]
    for p in gathered.paths:
        try:
            loaded.append(load_transcript(p))
        except QuallmError as exc:
            problems.append(str(exc))
    codebook = load_codebook(codebook_path) if codebook_path else None
    codings: list[Coding] = []
    for f in coding_files:
        got, probs = load_coding_file(f, loaded, codebook)
        codings.extend(got)
        problems.extend(probs)
    if rollup:
        if codebook is None:
            raise ConfigError("--rollup needs a codebook (--codebook)")
        codings = roll_up(codings, codebook)
    report = reconcile(
        loaded,
        codings,
        _codes_compared(codebook, rollup),
        unit=unit,
        coders=coders,
        n_boot=n_boot,
        seed=seed,
        min_overlap=min_overlap,
    )
    write_agreement(report, out_dir)
    return report, problems


def _coverage(machine: dict[str, set[str]], human: list[Coding]) -> dict[str, set[str]]:
    cov = {k: set(v) for k, v in machine.items()}
    for c in human:  # a human coder covers the transcripts where they applied any code
        cov.setdefault(c.coder, set()).add(c.transcript_id)
    return cov
