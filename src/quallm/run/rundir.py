"""A run is a directory: manifest, one result file per transcript, codings.csv, summaries.md, a log.

Each transcript's result is written atomically (temp file + rename) the moment it is done, so a crash
or kill never loses finished work, and a re-run skips results whose input fingerprint matches.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from quallm.core.codebook import Codebook, Kind, kind_sections
from quallm.core.csvsafe import SafeWriter
from quallm.core.errors import InputError, RunLockedError
from quallm.core.files import atomic_write_text
from quallm.core.redact import redact_value
from quallm.core.results import TranscriptResult

CODINGS_COLUMNS = [
    "transcript_id",
    "turn_index",
    "speaker",
    "code_id",
    "start",
    "end",
    "quote",
    "alignment",
    "coder",
    "rationale",
    "confidence",
    "probability",
    "needs_review",
]


LOCK_FILE = ".quallm.lock"
_held: dict[str, int] = {}  # run directories this process holds, with how many holders (re-entrant)
_held_guard = threading.Lock()


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an OS file lock on the run directory ``path`` for the block; refuse if another process holds it.

    The lock belongs to the open file, so the OS releases it when the process ends however it ends
    (kill -9 included): a stale lock file never blocks a later run. Re-entrant within one process.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fh = open(directory / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's life
    try:
        if not _try_lock(fh):
            try:
                fh.seek(0)
                holder = fh.read().strip()
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = ""
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunLockedError(
                f"{directory}: another quallm process{who} is using this directory; "
                "wait for it to finish or choose another --out"
            )
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
    finally:
        fh.close()  # closing the file releases the lock


def _try_lock(fh: TextIO) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.results_dir = self.path / "results"

    def prepare(self) -> None:
        """Create the directory layout."""
        self.results_dir.mkdir(parents=True, exist_ok=True)

    def result_path(self, transcript_id: str) -> Path:
        """Where a transcript's result lives."""
        return self.results_dir / f"{transcript_id}.json"

    def load_result(self, transcript_id: str) -> TranscriptResult | None:
        """A finished or partial result, or None (a corrupt file counts as none)."""
        p = self.result_path(transcript_id)
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            data.pop("complete", None)
            return TranscriptResult.model_validate(data)
        except (json.JSONDecodeError, ValueError):
            return None

    def finished_result(self, transcript_id: str, fingerprint: str) -> TranscriptResult | None:
        """The saved result of ``transcript_id`` when it is complete and made from the same inputs, else None."""
        previous = self.load_result(transcript_id)
        if previous is not None and previous.complete and previous.fingerprint == fingerprint:
            return previous
        return None

    def save_result(self, result: TranscriptResult) -> None:
        """Write one result atomically."""
        atomic_write_text(
            self.result_path(result.transcript_id),
            json.dumps(result.model_dump_result(), indent=2, ensure_ascii=False) + "\n",
        )

    def iter_results(self) -> Iterator[TranscriptResult]:
        """Every result in the run, sorted by transcript id, read one at a time."""
        if not self.results_dir.is_dir():
            raise InputError(self.path, "not a quallm run directory (no results/)")
        for p in sorted(self.results_dir.glob("*.json")):
            r = self.load_result(p.stem)
            if r is not None:
                yield r

    def results(self) -> list[TranscriptResult]:
        """Every result in the run, sorted by transcript id."""
        return list(self.iter_results())

    def log(self, event: str, **fields: Any) -> None:
        """Append one JSON line to ``log.jsonl`` (warnings, ungrounded quotes, failures)."""
        self.path.mkdir(parents=True, exist_ok=True)
        line = redact_value({"time": now_iso(), "event": event, **fields})  # no key lands on disk
        with open(self.path / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")

    def write_manifest(self, manifest: str | Mapping[str, Any]) -> None:
        """Write manifest.json atomically: the text of :meth:`quallm.run.Manifest.dumps`, or a JSON object."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        atomic_write_text(self.path / "manifest.json", text)


    def write_outputs(self, results: Iterable[TranscriptResult], codebook: Codebook | None = None) -> OutputTotals:
        """Regenerate codings.csv and summaries.md from all results, streaming: one result in memory at a time."""
        totals = OutputTotals()
        with _atomic_file(self.path / "codings.csv") as codings_fh, _atomic_file(self.path / "summaries.md") as md_fh:
            w = SafeWriter(codings_fh)  # text cells neutralised against formula injection
            w.writerow(CODINGS_COLUMNS)
            md_fh.write("# Summaries\n")
            for r in results:
                totals.add(r)
                for c in r.codings:
                    w.writerow(
                        [
                            c.transcript_id,
                            c.turn_index,
                            c.speaker,
                            c.code_id,
                            c.start,
                            c.end,
                            c.quote,
                            c.alignment,
                            c.coder,
                            c.rationale or "",
                            c.confidence,
                            c.probability,
                            "yes" if c.needs_review else "",
                        ]
                    )
                md_fh.write("\n" + render_summary(r, codebook.categories if codebook else ()))
        return totals


@dataclass
class OutputTotals:
    """Counts over every result of a run, gathered while the outputs are written."""

    results: int = 0
    codings: int = 0
    ungrounded: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, r: TranscriptResult) -> None:
        """Count one result."""
        self.results += 1
        self.codings += len(r.codings)
        self.ungrounded += len(r.ungrounded)
        self.calls += r.calls
        self.prompt_tokens += r.usage.prompt_tokens
        self.completion_tokens += r.usage.completion_tokens


@contextmanager
def _atomic_file(path: Path) -> Iterator[TextIO]:
    """A text file written under a temporary name and renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def render_summary(r: TranscriptResult, kinds: Sequence[Kind] = ()) -> str:
    """One transcript's summary as a markdown section, a heading per category of ``kinds`` (or of its points)."""
    out = [f"## {r.transcript_id}"]
    if r.metadata:
        out.append("*" + ", ".join(f"{k}: {v}" for k, v in sorted(r.metadata.items())) + "*")
    out.append("")
    if r.summary is None:
        out.append("_No summary (failed or switched off)._")
        out.append("")
    else:
        out.append(r.summary.narrative)
        out.append("")
        for title, points in kind_sections(r.summary.points, kinds):
            out.append(f"### {title}")
            for p in points:
                prose = p.summary if p.by_model and p.summary else "_(quotes only: the model wrote no summary)_"
                out.append(f"- **{p.label}** (`{p.code_id}`): {prose}")
                for q in p.quotes:
                    where = f"turn {q.turn_index}, " if q.turn_index is not None else ""
                    out.append(f'  > "{" ".join(q.text.split())}" ({where}chars {q.start}-{q.end})')
            out.append("")
    if not r.complete:
        out.append(f"_Incomplete: {len(r.failures)} unit(s) failed; see results/{r.transcript_id}.json._")
        out.append("")
    return "\n".join(out)


def render_summaries(results: Iterable[TranscriptResult], kinds: Sequence[Kind] = ()) -> str:
    """All per-transcript summaries as one markdown document (as written to summaries.md)."""
    return "# Summaries\n" + "".join("\n" + render_summary(r, kinds) for r in results)
