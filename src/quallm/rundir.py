"""A run is a directory: manifest, one result file per transcript, codings.csv, summaries.md, a log.

Each transcript's result is written atomically (temp file + rename) the moment it is done, so a crash
or kill never loses finished work, and a re-run skips results whose input fingerprint matches.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from quallm.codebook import Codebook
from quallm.errors import InputError
from quallm.results import TranscriptResult

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
]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


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

    def save_result(self, result: TranscriptResult) -> None:
        """Write one result atomically."""
        atomic_write_text(
            self.result_path(result.transcript_id),
            json.dumps(result.model_dump_result(), indent=2, ensure_ascii=False) + "\n",
        )

    def results(self) -> list[TranscriptResult]:
        """Every result in the run, sorted by transcript id."""
        if not self.results_dir.is_dir():
            raise InputError(self.path, "not a quallm run directory (no results/)")
        out = []
        for p in sorted(self.results_dir.glob("*.json")):
            r = self.load_result(p.stem)
            if r is not None:
                out.append(r)
        return out

    def log(self, event: str, **fields: Any) -> None:
        """Append one JSON line to ``log.jsonl`` (warnings, ungrounded quotes, failures)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": now_iso(), "event": event, **fields}, ensure_ascii=False) + "\n")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write manifest.json atomically."""
        atomic_write_text(self.path / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    def read_manifest(self) -> dict[str, Any]:
        """The run's manifest (empty if missing)."""
        p = self.path / "manifest.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    def write_outputs(self, results: list[TranscriptResult], codebook: Codebook | None = None) -> None:
        """Regenerate codings.csv and summaries.md from all results."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CODINGS_COLUMNS)
        for r in results:
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
                        "" if c.confidence is None else c.confidence,
                    ]
                )
        atomic_write_text(self.path / "codings.csv", buf.getvalue())
        atomic_write_text(self.path / "summaries.md", render_summaries(results, codebook))


def render_summaries(results: list[TranscriptResult], codebook: Codebook | None) -> str:
    """All per-transcript summaries as one markdown document."""
    out = ["# Summaries", ""]
    for r in results:
        out.append(f"## {r.transcript_id}")
        if r.metadata:
            out.append("*" + ", ".join(f"{k}: {v}" for k, v in sorted(r.metadata.items())) + "*")
        out.append("")
        if r.summary is None:
            out.append("_No summary (failed or switched off)._")
            out.append("")
            continue
        out.append(r.summary.narrative)
        out.append("")
        for title, points in (("Challenges", r.summary.challenges), ("Enablers", r.summary.enablers)):
            if not points:
                continue
            out.append(f"### {title}")
            for p in points:
                out.append(f"- **{p.label}** (`{p.code_id}`): {p.summary}")
                for q in p.quotes:
                    where = f"turn {q.turn_index}, " if q.turn_index is not None else ""
                    out.append(f'  > "{" ".join(q.text.split())}" ({where}chars {q.start}-{q.end})')
            out.append("")
        if not r.complete:
            out.append(f"_Incomplete: {len(r.failures)} unit(s) failed; see results/{r.transcript_id}.json._")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
