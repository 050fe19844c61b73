"""``quallm calibrate``: a run's machine proposals against human coding of some of its transcripts ->
``calibration.json``; and ``--suggest``: which uncoded transcripts to code next, with a CSV template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from quallm import __version__
from quallm.analysis.agreement.units import UnitKind, build_units
from quallm.analysis.calibration import maths
from quallm.analysis.calibration.labels import label_table, score_matrix
from quallm.analysis.calibration.model import (
    Calibration,
    CodeCalibration,
    read_calibration,
    validity_from_manifest,
    write_calibration,
)
from quallm.analysis.reconciling import RunInputs, load_coding_file, load_run
from quallm.coding.extract import ExtractOptions
from quallm.core.codings import Coding
from quallm.core.csvsafe import SafeWriter
from quallm.core.errors import ConfigError
from quallm.run.opening import open_run
from quallm.run.rundir import now_iso

#: ExtractOptions.min_confidence's default: the threshold "without calibration" is compared with.
DEFAULT_THRESHOLD: float = ExtractOptions.model_fields["min_confidence"].default  # extract's own default
CALIBRATION_FILE = "calibration.json"
TEMPLATE_FILE = "calibration_template.csv"


@dataclass
class CalibrationOutcome:
    """The calibration, where it was written, and the problems met (one line each)."""

    calibration: Calibration
    path: Path
    problems: list[str] = field(default_factory=list)


def _human(files: Sequence[str | Path], inputs: RunInputs, coder: str | None) -> tuple[list[Coding], str, list[str]]:
    problems: list[str] = []
    codings: list[Coding] = []
    for f in files:
        got, probs = load_coding_file(f, inputs.transcripts, inputs.codebook)
        codings.extend(got)
        problems.extend(probs)
    coders = sorted({c.coder for c in codings})
    if coder is not None:
        if coder not in coders:
            raise ConfigError(f"coder {coder!r} is not in the human coding (coders: {', '.join(coders) or 'none'})")
        return [c for c in codings if c.coder == coder], coder, problems
    if not coders:
        raise ConfigError("no human codings could be read from: " + ", ".join(str(f) for f in files))
    if len(coders) > 1:
        raise ConfigError(f"the human coding has {len(coders)} coders ({', '.join(coders)}); choose one with --coder")
    return codings, coders[0], problems


def calibrate_run(
    run_dir: str | Path,
    human: Sequence[str | Path],
    *,
    coder: str | None = None,
    unit: UnitKind = "turn",
    min_kappa: float = 0.6,
    min_positives: int = 3,
    k_folds: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_overlap: int = 1,
    out: str | Path | None = None,
) -> CalibrationOutcome:
    """Choose per-code thresholds on the human-coded transcripts of a run, by cross-validation over
    transcripts, and write ``calibration.json`` (default: into the run). See README "Calibrate"."""
    inputs = load_run(run_dir)
    if inputs.codebook is None:
        raise ConfigError(f"{run_dir}: calibration needs the run's codebook, which was not found")
    codings, coder_name, problems = _human(human, inputs, coder)
    coded_ids = {c.transcript_id for c in codings}
    transcripts = [t for t in inputs.transcripts if t.id in coded_ids]
    if len(transcripts) < 2:
        raise ConfigError(
            f"calibration needs human coding of at least 2 of the run's transcripts (cross-validation holds "
            f"one out); found {len(transcripts)}"
        )
    codes = list(inputs.codebook.ids)
    proposals = [c for c in (*inputs.codings, *inputs.candidates) if c.transcript_id in coded_ids]
    if not any(c.probability is not None for c in proposals):
        problems.append(
            "no machine proposal carries a probability (the backend gave none): thresholds cannot be chosen; "
            "the figures are those of the codings as reported"
        )
    table, issues = label_table(transcripts, proposals, codings, codes, unit, min_overlap)
    problems.extend(issues)
    params = open_run(run_dir, need_manifest=False).manifest.parameters
    default = float(params.get("min_confidence", DEFAULT_THRESHOLD))
    default = DEFAULT_THRESHOLD if default <= 0 else default  # a generous pass (0) is not "the default"
    oof, fold_thr = maths.out_of_fold(table, DEFAULT_THRESHOLD, k_folds)
    at_default = maths.predict(table.s, np.full(len(codes), default))
    figs = maths.agreement_figures(table, oof, n_boot, seed, label="calibrated")
    figs_default = maths.agreement_figures(table, at_default, n_boot, seed, label="default")
    final = maths.fit_thresholds(table.y, table.s, DEFAULT_THRESHOLD)
    rows: list[CodeCalibration] = []
    not_calibrated: list[str] = []
    for j, code in enumerate(codes):
        positives = int(table.y[:, j].sum())
        scored = table.s[:, j]
        note = ""
        if positives == 0:
            note = "no human positives: not calibrated (its threshold stays --min-confidence)"
        elif not np.isfinite(scored).any():
            note = "no proposal with a probability: not calibrated"
        if note:
            not_calibrated.append(code)
            problems.append(f"{code}: {note}")
        est = figs.per_code[j]
        rows.append(
            CodeCalibration(
                code=code,
                threshold=float(final[j]),
                verdict=maths.verdict(est["kappa"], positives, min_kappa, min_positives),
                positives=positives,
                proposals=int((scored > -np.inf).sum()),
                kappa=est["kappa"],
                precision=est["precision"],
                recall=est["recall"],
                default_kappa=figs_default.per_code[j]["kappa"],
                fold_thresholds=tuple(float(x) for x in fold_thr[:, j]),
                note=note,
            )
        )
    n_f = len(maths.folds(table.n_t, k_folds))
    cal = Calibration(
        quallm_version=__version__,
        created=now_iso(),
        run_dir=str(run_dir),
        human_files=tuple(str(h) for h in human),
        coder=coder_name,
        unit=unit,
        transcripts=tuple(table.transcripts),
        folds=(f"leave-one-transcript-out ({n_f} folds)" if n_f == table.n_t else f"{n_f}-fold over transcripts"),
        default_threshold=default,
        min_kappa=min_kappa,
        min_positives=min_positives,
        n_boot=n_boot,
        seed=seed,
        codes=tuple(rows),
        pooled=figs.pooled,
        pooled_default=figs_default.pooled,
        not_calibrated=tuple(not_calibrated),
        problems=tuple(problems),
        validity=validity_from_manifest(open_run(run_dir, need_manifest=False).manifest.model_dump(mode="json")),
    )
    path = write_calibration(cal, Path(out) if out else Path(run_dir) / CALIBRATION_FILE)
    return CalibrationOutcome(cal, path, problems)


@dataclass
class Suggestion:
    """An uncoded transcript worth coding next, and why."""

    transcript_id: str
    score: float
    codes: list[str]  # the weak codes with proposals near their thresholds in it


def suggest_transcripts(run_dir: str | Path, calibration: Calibration | str | Path, n: int) -> list[Suggestion]:
    """The ``n`` transcripts not yet human-coded whose coding would most narrow the widest intervals.

    Each code weighs by its out-of-fold kappa interval width (:func:`maths.suggest_weight`); a transcript
    scores by its units whose probability lies near the code's threshold (:func:`maths.near_threshold`).
    Picks are greedy (:func:`maths.greedy_picks`), so they spread over the weak codes."""
    cal = calibration if isinstance(calibration, Calibration) else read_calibration(calibration)[0]
    unit = cast(UnitKind, cal.unit)
    inputs = load_run(run_dir)
    codes = [c.code for c in cal.codes]
    thr = np.array([c.threshold for c in cal.codes], dtype=np.float64)
    weights = np.array([maths.suggest_weight(c.kappa, c.verdict) for c in cal.codes], dtype=np.float64)
    pool = [t for t in inputs.transcripts if t.id not in set(cal.transcripts)]
    proposals = [*inputs.codings, *inputs.candidates]
    near: dict[str, np.ndarray] = {}
    for t in pool:
        _, _, s, _ = score_matrix([t], [c for c in proposals if c.transcript_id == t.id], codes, unit)
        near[t.id] = maths.near_threshold(s, thr)
    return [Suggestion(tid, score, [codes[j] for j in informed][:5])
            for tid, score, informed in maths.greedy_picks(near, weights, n)]


def write_template(run_dir: str | Path, transcript_ids: Sequence[str], path: str | Path | None = None,
                   speakers: frozenset[str] | None = None) -> Path:
    """A CSV for the coders: one row per coded turn of each transcript (its text included), with empty
    ``coder`` and ``code_id`` to fill (add a row per further code on the same turn). Rows left without a
    code are skipped when it is read back as human coding. Cells go through the safe CSV writer."""
    inputs = load_run(run_dir)
    by_id = {t.id: t for t in inputs.transcripts}
    p = Path(path) if path else Path(run_dir) / TEMPLATE_FILE
    with p.open("w", encoding="utf-8", newline="") as fh:
        w = SafeWriter(fh)
        w.writerow(["transcript_id", "turn_index", "speaker", "text", "coder", "code_id"])
        for tid in transcript_ids:
            t = by_id.get(tid)
            if t is None:
                continue
            for u in build_units(t, "turn", speakers):
                w.writerow([tid, u.turn_index, t.turns[u.turn_index or 0].speaker, u.text, "", ""])
    return p
