"""Transcript readers: plain text / markdown, WebVTT, SRT, DOCX and JSON, all into :class:`Transcript`."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quallm.core.csvsafe import SafeDictReader
from quallm.core.decode import read_text
from quallm.core.errors import InputError, QuallmError
from quallm.core.transcript import Transcript, Turn
from quallm.ingest.transcripts.structured import parse_captions, parse_json, read_docx_text
from quallm.ingest.transcripts.text import parse_labelled_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".vtt", ".srt", ".docx", ".json")

#: Transcript files larger than this are refused before they are read (``--max-file-mb``): a
#: transcript is text, and reading one costs many times its size in memory.
DEFAULT_MAX_FILE_MB = 20.0

__all__ = [
    "DEFAULT_MAX_FILE_MB",
    "SUPPORTED_SUFFIXES",
    "Gathered",
    "InputOptions",
    "Transcript",
    "Turn",
    "expand_paths",
    "gather_inputs",
    "load_metadata",
    "load_transcript",
    "load_transcripts",
    "nothing_to_code",
]


def load_transcript(path: str | Path, metadata: dict[str, str] | None = None) -> Transcript:
    """Read one transcript file; its id is the file name without the extension.

    Raises :class:`~quallm.core.errors.InputError` naming the file and the problem.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.exists():
        raise InputError(p, _missing(p))
    if p.is_dir():
        raise InputError(p, "is a directory, not a transcript file")
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(p, f"unknown extension {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        t = _parse(p, suffix)
    except QuallmError:
        raise
    except RecursionError as exc:
        raise InputError(p, "nested too deeply to read") from exc
    except MemoryError as exc:
        raise InputError(p, "too large to read into memory") from exc
    except Exception as exc:  # one bad file must never stop a batch: any surprise becomes its error line
        raise InputError(p, f"cannot read ({type(exc).__name__}: {exc})") from exc
    if metadata:
        t = t.model_copy(update={"metadata": dict(metadata)})
    return t


def _missing(p: Path) -> str:
    """Why ``p`` cannot be found: a symlink loop, a broken symlink, or no such file."""
    if p.is_symlink():
        try:
            p.resolve(strict=True)
        except RuntimeError:
            return "symlink loop"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symlink loop"
        return f"broken symlink (points to {os.readlink(p)}, which does not exist)"
    try:
        p.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
    return "file not found"


def _parse(p: Path, suffix: str) -> Transcript:
    tid = p.stem
    source = str(p)
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
    return t


def nothing_to_code(transcript: Transcript, speakers: Iterable[str] = ()) -> str | None:
    """A warning when no turn of ``transcript`` would be coded (only the interviewer speaks), else None."""
    wanted = frozenset(speakers)
    if transcript.coded_turns(wanted or None):
        return None
    if wanted:
        return f"{transcript.source}: no turn by {', '.join(sorted(wanted))}; nothing to code"
    return f"{transcript.source}: only the interviewer speaks; nothing to code"


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


@dataclass(frozen=True)
class InputOptions:
    """How transcript files are gathered from the paths a user gives."""

    follow_symlinks: bool = False  # follow links in a folder that point outside it
    max_file_mb: float | None = DEFAULT_MAX_FILE_MB  # None: no limit


@dataclass
class Gathered:
    """The transcript files to read, and a one-line error or warning for each one refused or skipped."""

    paths: list[Path] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def gather_inputs(paths: Iterable[str | Path], options: InputOptions | None = None) -> Gathered:
    """The transcript files named by ``paths`` (files, or folders of supported files), checked before reading.

    A link inside a folder that leads outside it is skipped with a warning unless
    ``follow_symlinks``; files over ``max_file_mb`` are refused; two files with one transcript id
    (``a.txt`` and ``a.vtt``) are both refused, since either result would overwrite the other.
    Files named directly are taken as given (links included); errors about them come from reading.
    """
    opts = options or InputOptions()
    out = Gathered()
    seen: set[str] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                if f.is_symlink():
                    if not f.exists():
                        out.errors.append(InputError(f, _missing(f)))
                        continue
                    if not opts.follow_symlinks and not f.resolve().is_relative_to(p.resolve()):
                        out.warnings.append(
                            f"{f}: skipped, a symlink to {f.resolve()} outside {p} (--follow-symlinks to read it)"
                        )
                        continue
                if f.is_file():
                    _take(f, out, seen, opts)
        else:
            _take(p, out, seen, opts)
    by_id: dict[str, list[Path]] = {}
    for f in out.paths:
        by_id.setdefault(f.stem.casefold(), []).append(f)  # casefold: a.txt and A.vtt collide on macOS and Windows
    clashes = [group for group in by_id.values() if len(group) > 1]
    for group in clashes:
        names = ", ".join(str(f) for f in group)
        out.errors.append(
            InputError(
                names, f"{len(group)} files with one transcript id {group[0].stem!r}; rename all but one (none is read)"
            )
        )
    refused = {f for group in clashes for f in group}
    out.paths = [f for f in out.paths if f not in refused]
    return out


def _take(p: Path, out: Gathered, seen: set[str], opts: InputOptions) -> None:
    key = str(p.resolve()) if p.exists() else str(p)
    if key in seen:  # the same file named twice (directly and through its folder) is read once
        return
    seen.add(key)
    if opts.max_file_mb is not None and p.is_file():
        size = p.stat().st_size
        if size > opts.max_file_mb * 1_000_000:
            out.errors.append(
                InputError(p, f"file is {size / 1e6:.1f} MB, over the {opts.max_file_mb:g} MB limit (--max-file-mb)")
            )
            return
    out.paths.append(p)


def expand_paths(paths: Iterable[str | Path], options: InputOptions | None = None) -> list[Path]:
    """The files :func:`gather_inputs` accepts (files given directly, supported files in folders)."""
    return gather_inputs(paths, options).paths


def load_transcripts(
    paths: Iterable[str | Path],
    metadata: dict[str, dict[str, str]] | None = None,
    options: InputOptions | None = None,
) -> Iterator[Transcript | QuallmError]:
    """Load many files; yields each Transcript, or the error for a bad file, so a batch goes on.

    Files refused while gathering (see :func:`gather_inputs`) come first as errors; skip warnings
    are not yielded (use :func:`gather_inputs` to see them).
    """
    gathered = gather_inputs(paths, options)
    yield from gathered.errors
    for p in gathered.paths:
        try:
            yield load_transcript(p, (metadata or {}).get(p.stem))
        except QuallmError as exc:
            yield exc
