"""Write an :class:`AgreementReport` to files, and format it for people.

Undefined values are ``null`` in JSON, an empty cell in CSV and the word ``undefined`` in text. CSV
text cells are neutralised against formula injection (:mod:`quallm.core.csvsafe`); numbers stay numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from quallm.analysis.agreement.reconcile import AgreementReport, Estimate, GroupCodeStats, PairCodeStats
from quallm.core.csvsafe import Cell, to_csv
from quallm.core.errors import InputError

UNDEFINED = "undefined"
STAT_COLUMNS = ("percent", "kappa", "alpha", "ac1", "precision", "recall", "f1")
AGREEMENT_HEADER = ["pair", "kind", "code", "n_units"] + [
    col for s in STAT_COLUMNS for col in (s, f"{s}_ci_low", f"{s}_ci_high")
]


def format_value(value: float | None, digits: int = 3) -> str:
    """``value`` rounded for reading, or ``undefined``."""
    return UNDEFINED if value is None else f"{value:.{digits}f}"


def format_estimate(est: Estimate, digits: int = 3) -> str:
    """``0.712 [0.650, 0.770]``, ``0.712`` without a CI, or ``undefined``."""
    if est.value is None:
        return UNDEFINED
    if est.ci_low is None or est.ci_high is None:
        return format_value(est.value, digits)
    return f"{est.value:.{digits}f} [{est.ci_low:.{digits}f}, {est.ci_high:.{digits}f}]"


def _cell(value: float | int | None) -> Cell:
    # Numbers stay numbers (a negative kappa is not a formula); text cells are neutralised on writing.
    if value is None or isinstance(value, int):
        return value
    return round(value, 6)


def _pair_row(pair: str, kind: str, s: PairCodeStats) -> list[Cell]:
    row: list[Cell] = [pair, kind, s.code, s.n_units]
    for name in STAT_COLUMNS:
        e: Estimate = getattr(s, name)
        row += [_cell(e.value), _cell(e.ci_low), _cell(e.ci_high)]
    return row


def _group_row(pair: str, s: GroupCodeStats) -> list[Cell]:
    # All-coders rows reuse the pair columns: kappa holds Fleiss' kappa, precision/recall/F1 are empty.
    stats = {"percent": s.percent, "kappa": s.fleiss_kappa, "alpha": s.alpha, "ac1": s.ac1}
    row: list[Cell] = [pair, "all-coders", s.code, s.n_units]
    for name in STAT_COLUMNS:
        e = stats.get(name, Estimate(value=None))
        row += [_cell(e.value), _cell(e.ci_low), _cell(e.ci_high)]
    return row


def agreement_rows(report: AgreementReport) -> list[list[Cell]]:
    """Rows of ``agreement.csv`` (header first): one per pair x code, plus pooled and all-coders rows."""
    rows: list[list[Cell]] = [list(AGREEMENT_HEADER)]
    for p in report.pairs:
        for s in [*p.codes, p.micro, p.macro]:
            rows.append(_pair_row(p.pair, p.kind, s))
    if report.group is not None:
        label = "all: " + ", ".join(report.group.coders)
        for g in [*report.group.codes, report.group.micro, report.group.macro]:
            rows.append(_group_row(label, g))
    return rows


def disagreement_rows(report: AgreementReport) -> list[list[Cell]]:
    """Rows of ``disagreements.csv`` (header first); a coder's vote is yes, no, or empty if not coded."""
    header = ["transcript_id", "unit_id", "turn_index", "start", "end", "code_id",
              *report.coders, "machine_coder", "machine_confidence", "machine_quote",
              "machine_rationale", "unit_text"]
    rows: list[list[Cell]] = [list(header)]
    for d in report.disagreements:
        votes = [("" if d.votes.get(c) is None else "yes" if d.votes[c] else "no") for c in report.coders]
        rows.append([d.transcript_id, d.unit_id, _cell(d.turn_index), d.start, d.end, d.code_id,
                     *votes, d.machine_coder or "", _cell(d.machine_confidence), d.machine_quote or "",
                     d.machine_rationale or "", d.unit_text])
    return rows


def _write_csv(path: Path, rows: list[list[Cell]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write(to_csv(rows))


def write_agreement(report: AgreementReport, out_dir: Path | str) -> list[Path]:
    """Write ``agreement.json``, ``agreement.csv``, ``disagreements.csv`` and ``disagreements.json``
    into ``out_dir`` (created if needed); returns the paths written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create the output folder: {exc}") from exc
    paths = [out / n for n in ("agreement.json", "agreement.csv", "disagreements.csv", "disagreements.json")]
    body = report.model_dump(mode="json", exclude={"disagreements"})
    body["n_disagreements"] = len(report.disagreements)
    try:
        paths[0].write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _write_csv(paths[1], agreement_rows(report))
        _write_csv(paths[2], disagreement_rows(report))
        rows = [d.model_dump(mode="json") for d in report.disagreements]
        paths[3].write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(out, f"cannot write the agreement files: {exc}") from exc
    return paths


def format_report(report: AgreementReport, digits: int = 3) -> str:
    """A plain-text summary: pooled then per-code figures per pair, all-coders figures, then issues."""
    lines = [f"Agreement on {report.n_units} {report.unit} units in {report.n_transcripts} transcripts, "
             f"{len(report.codes)} codes, coders: {', '.join(report.coders)}"]
    for p in report.pairs:
        lines.append(f"{p.pair} ({p.kind}, {p.n_units} units):")
        for s in (p.micro, p.macro, *p.codes):
            lines.append(
                f"  {s.code:8} percent {format_estimate(s.percent, digits)}  kappa {format_estimate(s.kappa, digits)}"
                f"  alpha {format_estimate(s.alpha, digits)}  AC1 {format_estimate(s.ac1, digits)}"
                f"  F1 {format_estimate(s.f1, digits)}"
            )
    if report.group is not None:
        g = report.group
        lines.append(f"all coders ({g.n_units} units):")
        for s2 in (g.micro, g.macro):
            lines.append(
                f"  {s2.code:8} Fleiss kappa {format_estimate(s2.fleiss_kappa, digits)}"
                f"  alpha {format_estimate(s2.alpha, digits)}  AC1 {format_estimate(s2.ac1, digits)}"
            )
    lines.append(f"{len(report.disagreements)} disagreement(s); {len(report.issues)} issue(s)")
    lines += [f"  issue: {i}" for i in report.issues[:20]]
    if len(report.issues) > 20:
        lines.append(f"  ... and {len(report.issues) - 20} more")
    return "\n".join(lines)
