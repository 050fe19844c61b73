"""Opening a run directory: the one way every command reads a run back.

A run names its transcripts, codebook and metadata by the paths it was given, which are relative to
the folder the run was started from. :meth:`OpenRun.locate` holds the one rule for finding them again:
as given (absolute, or from the current folder), then from the run directory and each folder above it,
so a project folder moved as a whole (run and transcripts together) opens from anywhere. When several
candidates exist, the one whose sha256 matches the manifest wins.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError, InputError
from quallm.core.hashing import sha256_file
from quallm.core.results import TranscriptResult
from quallm.core.transcript import Transcript
from quallm.ingest.codebooks import load_codebook
from quallm.ingest.transcripts import load_metadata, load_transcript
from quallm.run.manifest import Manifest
from quallm.run.rundir import RunDir


def read_manifest(path: str | Path) -> Manifest | None:
    """The manifest of the run directory ``path``, or None when it has none."""
    p = Path(path) / "manifest.json"
    if not p.is_file():
        return None
    try:
        return Manifest.model_validate(json.loads(p.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as exc:
        raise InputError(p, f"is not a readable run manifest ({type(exc).__name__})") from None


class OpenRun:
    """A run directory opened for reading: manifest, results, and the files the manifest names."""

    def __init__(self, path: str | Path, manifest: Manifest) -> None:
        self.dir = RunDir(path)
        self.path = self.dir.path
        self.manifest = manifest

    # -- the one rule for files the manifest names

    def candidates(self, raw: str) -> list[Path]:
        """Where a manifest path may be now: as given, then from the run directory and each folder above."""
        p = Path(raw)
        if p.is_absolute():
            return [p]
        found = [p]
        for base in (self.path, *self.path.resolve().parents):
            found.append(base / p)
        return found

    def locate(self, raw: str | None, sha256: str | None = None) -> Path | None:
        """The file a manifest path names, found by :meth:`candidates`; one matching ``sha256`` first."""
        if not raw:
            return None
        existing = list(dict.fromkeys(c for c in self.candidates(raw) if c.is_file()))
        if sha256 and len(existing) > 1:
            for c in existing:
                if sha256_file(c) == sha256:
                    return c
        return existing[0] if existing else None

    # -- results and transcripts

    @cached_property
    def results(self) -> list[TranscriptResult]:
        """Every result of the run, sorted by transcript id."""
        return self.dir.results()

    @cached_property
    def metadata(self) -> dict[str, dict[str, str]]:
        """The run's metadata sidecar as found by :meth:`locate` (empty when gone: results keep their own)."""
        path = self.locate(self.manifest.metadata_file)
        return load_metadata(path) if path else {}

    def transcript_file(self, result: TranscriptResult) -> tuple[str, Path | None]:
        """The path the manifest gives for ``result``'s transcript, and where it is now (None if not found)."""
        entry = self.manifest.input_for(result.transcript_id)
        raw = (entry["file"] if entry else None) or result.source
        return raw, self.locate(raw, entry.get("sha256") if entry else None)

    def transcript(self, result: TranscriptResult) -> Transcript:
        """``result``'s transcript read again; :class:`InputError` naming the file when it cannot be."""
        raw, path = self.transcript_file(result)
        return load_transcript(path or raw, self.metadata.get(result.transcript_id) or result.metadata)

    def transcript_changed(self, result: TranscriptResult, path: Path) -> bool:
        """True when the file at ``path`` is not the one the run read (its sha256 differs)."""
        entry = self.manifest.input_for(result.transcript_id)
        digest = entry.get("sha256") if entry else None
        return bool(digest and digest != sha256_file(path))

    def transcripts(self) -> list[Transcript]:
        """Every result's transcript, in the order of :attr:`results`; the first unreadable one raises."""
        return [self.transcript(r) for r in self.results]

    # -- the codebook

    def codebook_path(self) -> Path | None:
        """Where the run's codebook file is now, or None."""
        info = self.manifest.codebook
        return self.locate(info.path if info else None)

    def codebook(self, given: Codebook | None = None) -> tuple[Codebook, list[str]]:
        """The codebook the run used (``given`` if any, else its file) and notes; :class:`ConfigError` if gone."""
        info = self.manifest.codebook
        notes: list[str] = []
        if given is None:
            path = self.codebook_path()
            if path is None:
                raw = info.path if info else None
                raise ConfigError(
                    f"{self.path}: the run's codebook file {raw!r} was not found (as given, nor from the run "
                    "directory or a folder above it); pass the codebook explicitly (--codebook)"
                )
            given = load_codebook(path)
        if info and info.hash and info.hash != given.hash:
            notes.append(
                "The codebook given differs from the one the run used (hash mismatch): labels may have changed."
            )
        return given, notes



def open_run(path: str | Path | RunDir | OpenRun, *, need_manifest: bool = True) -> OpenRun:
    """Open the run directory ``path``; :class:`InputError` when it is not one (no ``manifest.json``).

    With ``need_manifest=False`` a folder of results alone opens too (an empty manifest: the codebook
    must then be given), as the synthesis and the report allow.
    """
    if isinstance(path, OpenRun):
        return path
    where = path.path if isinstance(path, RunDir) else Path(path)
    manifest = read_manifest(where)
    if manifest is None:
        if need_manifest:
            raise InputError(where, "not a quallm run directory (no manifest.json)")
        manifest = Manifest()
    return OpenRun(where, manifest)
