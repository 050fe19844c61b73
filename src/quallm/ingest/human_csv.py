"""Import human codings from a CSV file.

Required columns: ``transcript_id``, ``coder``, ``code_id``. Each row is located by any of
``start`` and ``end`` (character offsets into the transcript text), ``turn_index``, or ``quote``
(found in the transcript text, within the turn when ``turn_index`` is also given). Optional columns
``speaker``, ``rationale`` and ``confidence`` are carried over. Row numbers in problems count the
header as row 1, as a spreadsheet shows them. A cell that quallm neutralised against formula injection
(``'=...``, see :mod:`quallm.core.csvsafe`) is read back as the original text, so a run's own
``codings.csv`` reads back exactly.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from quallm.core.codings import Coding
from quallm.core.csvsafe import SafeDictReader
from quallm.core.errors import InputError
from quallm.core.spans import locate_quote, normalise_text
from quallm.core.transcript import Transcript

REQUIRED_COLUMNS = ("transcript_id", "coder", "code_id")
LOCATION_COLUMNS = ("start", "end", "turn_index", "quote")


def _int(raw: str, name: str) -> int:
    try:
        value = float(raw)  # spreadsheets write 12 as "12.0"
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a number") from None
    if not value.is_integer():
        raise ValueError(f"{name} {raw!r} is not a whole number")
    return int(value)


def _row_coding(row: Mapping[str, str], t: Transcript) -> Coding:
    """The coding a row describes; ``ValueError`` with the problem when it cannot be placed."""
    get = {k: (row.get(k) or "").strip() for k in (*REQUIRED_COLUMNS, *LOCATION_COLUMNS,
                                                       "speaker", "rationale", "confidence")}
    quote = row.get("quote") or ""  # not stripped: offsets must match the text exactly
    turn_index: int | None = None
    if get["turn_index"]:
        turn_index = _int(get["turn_index"], "turn_index")
        if not 0 <= turn_index < len(t.turns):
            raise ValueError(f"turn_index {turn_index} is out of range (transcript has {len(t.turns)} turns)")
    start = end = None
    if get["start"] or get["end"]:
        if not (get["start"] and get["end"]):
            raise ValueError("start and end must be given together")
        start, end = _int(get["start"], "start"), _int(get["end"], "end")
        if not 0 <= start < end <= len(t.text):
            raise ValueError(f"span {start}-{end} is empty or outside the text (length {len(t.text)})")
        if turn_index is not None:
            turn = t.turns[turn_index]
            if end <= turn.start or start >= turn.end:
                raise ValueError(f"span {start}-{end} is not in turn {turn_index} ({turn.start}-{turn.end})")
        if quote.strip() and normalise_text(quote) != normalise_text(t.text[start:end]):
            raise ValueError(f"quote does not match the text at {start}-{end}")
    elif quote.strip():
        lo, hi = (t.turns[turn_index].start, t.turns[turn_index].end) if turn_index is not None else (0, None)
        span, problem = locate_quote(t.text, quote, lo, hi)
        if span is None:
            where = f" in turn {turn_index}" if turn_index is not None else ""
            raise ValueError(f"{problem}{where}")
        start, end = span
    elif turn_index is None:
        raise ValueError("no location: give start and end, turn_index, or quote")
    if start is not None and end is not None:
        if turn_index is None:
            at = t.turn_at(start)
            turn_index = at.index if at is not None else None
        quote = t.text[start:end]
    speaker = get["speaker"] or (t.turns[turn_index].speaker if turn_index is not None else None)
    try:
        confidence = float(get["confidence"]) if get["confidence"] else None
    except ValueError:
        raise ValueError(f"confidence {get['confidence']!r} is not a number") from None
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence {confidence} is not between 0 and 1")
    return Coding(
        transcript_id=t.id, coder=get["coder"], code_id=get["code_id"], start=start, end=end,
        turn_index=turn_index, speaker=speaker, quote=quote if start is not None else None,
        alignment="human", rationale=get["rationale"] or None, confidence=confidence,
    )


def read_human_csv(
    path: Path | str,
    transcripts: Sequence[Transcript] | Mapping[str, Transcript],
    codebook_codes: Sequence[str] | None = None,
) -> tuple[list[Coding], list[str]]:
    """Human codings from the CSV at ``path`` and the problems found, one line each
    (``file: row N: problem``). Rows with a problem are skipped; an unreadable file or missing
    required columns raise :class:`~quallm.core.errors.InputError`."""
    path = Path(path)
    by_id = dict(transcripts) if isinstance(transcripts, Mapping) else {t.id: t for t in transcripts}
    known_codes = set(codebook_codes) if codebook_codes is not None else None
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = SafeDictReader(fh)  # takes off the ' that quallm's CSV writing puts before formulas
            fields = [f.strip() for f in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read the CSV: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (found: {', '.join(fields) or 'none'})")
    if not any(c in fields for c in LOCATION_COLUMNS):
        raise InputError(path, "no location column: give start and end, turn_index, or quote")
    codings: list[Coding] = []
    problems: list[str] = []
    for n, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v if isinstance(v, str) else "") for k, v in raw.items()}
        tid, coder, code = (row.get(c, "").strip() for c in REQUIRED_COLUMNS)
        if tid and not coder and not code:
            continue  # a row of the coders' template (quallm calibrate --suggest) left uncoded
        problem: str | None = None
        if not (tid and coder and code):
            problem = "transcript_id, coder and code_id must not be empty"
        elif tid not in by_id:
            problem = f"unknown transcript id {tid!r}"
        elif known_codes is not None and code not in known_codes:
            problem = f"code {code!r} is not in the codebook"
        else:
            try:
                codings.append(_row_coding(row, by_id[tid]))
            except ValidationError as exc:
                err = exc.errors()[0]
                problem = f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            problems.append(f"{path}: row {n}: {problem}")
    return codings, problems
