"""Transcript readers: plain text / markdown, WebVTT, SRT, DOCX and JSON, all into :class:`Transcript`."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from quallm.csvsafe import SafeDictReader
from quallm.errors import InputError, QuallmError
from quallm.transcripts.decode import read_text
from quallm.transcripts.model import Transcript, Turn
from quallm.transcripts.structured import parse_captions, parse_json, read_docx_text
from quallm.transcripts.text import parse_labelled_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".vtt", ".srt", ".docx", ".json")

__all__ = [
    "SUPPORTED_SUFFIXES",
    "Transcript",
    "Turn",
    "expand_paths",
    "load_metadata",
    "load_transcript",
    "load_transcripts",
]


def load_transcript(path: str | Path, metadata: dict[str, str] | None = None) -> Transcript:
    """Read one transcript file; its id is the file name without the extension.

    Raises :class:`~quallm.errors.InputError` naming the file and the problem.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    tid = p.stem
    source = str(p)
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a directory, not a transcript file")
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(p, f"unknown extension {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    warnings: list[str] = []
    if suffix == ".docx":
        text = read_docx_text(p)
        t = parse_labelled_text(text, transcript_id=tid, source=source, fmt="docx", warnings=warnings)
    else:
        text, warnings = read_text(p)
        if suffix in (".vtt", ".srt"):
            t = parse_captions(text, transcript_id=tid, source=source, fmt=suffix[1:], warnings=warnings)
        elif suffix == ".json":
            t = parse_json(text, transcript_id=tid, source=source, warnings=warnings)
        else:
            t = parse_labelled_text(text, transcript_id=tid, source=source, fmt="text", warnings=warnings)
    if not t.turns:
        raise InputError(p, "no turns found")
    if metadata:
        t = t.model_copy(update={"metadata": dict(metadata)})
    return t


def load_metadata(path: str | Path) -> dict[str, dict[str, str]]:
    """A metadata sidecar CSV: ``transcript_id`` plus any columns -> {transcript_id: {column: value}}."""
    p = Path(path)
    text, _ = read_text(p)
    rows = list(SafeDictReader(io.StringIO(text)))  # takes off the ' quallm puts before formulas
    if not rows or "transcript_id" not in rows[0]:
        raise InputError(p, "metadata CSV needs a 'transcript_id' column")
    out: dict[str, dict[str, str]] = {}
    for n, row in enumerate(rows, start=2):
        tid = (row.get("transcript_id") or "").strip()
        if not tid:
            raise InputError(p, f"row {n}: empty transcript_id")
        if tid in out:
            raise InputError(p, f"row {n}: transcript_id {tid!r} appears twice")
        out[tid] = {k: (v or "").strip() for k, v in row.items() if k and k != "transcript_id"}
    return out


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files given directly, plus the supported files inside any directories given (sorted)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES))
        else:
            out.append(p)
    return out


def load_transcripts(
    paths: Iterable[str | Path], metadata: dict[str, dict[str, str]] | None = None
) -> Iterator[Transcript | QuallmError]:
    """Load many files; yields each Transcript, or the error for a bad file, so a batch goes on."""
    for p in expand_paths(paths):
        try:
            yield load_transcript(p, (metadata or {}).get(p.stem))
        except QuallmError as exc:
            yield exc
