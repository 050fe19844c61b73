"""Runs discovery over a batch into a directory, resumably: candidates per transcript and run, then themes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from quallm.coding.discovery.candidates import Candidate, CandidateFinder, CandidateSet, DiscoverOptions
from quallm.coding.discovery.consolidate import Theme, consolidate
from quallm.coding.discovery.merge import model_grouper
from quallm.coding.discovery.outputs import draft_codebook, draft_yaml, in_codebook, render_themes_md
from quallm.coding.prompting import load_prompt
from quallm.core.codebook import DEFAULT_KINDS
from quallm.core.transcript import Transcript
from quallm.ingest.transcripts import InputOptions
from quallm.models.base import ChatModel
from quallm.models.embeddings import Embedder
from quallm.models.limits import LimitedModel
from quallm.run.batch import BatchInputs, run_pool
from quallm.run.manifest import Manifest
from quallm.run.rundir import RunDir, atomic_write_text, locked
from quallm.run.runner import Progress

_PROMPTS = ("discover_chunk", "discover_merge")


@dataclass
class DiscoveryReport:
    """What a discovery run did, for the CLI to print and to decide the exit code."""

    out: Path
    themes: list[Theme] = field(default_factory=list)
    in_codebook: int = 0
    candidates: int = 0
    transcripts: int = 0
    done: int = 0
    skipped: int = 0
    incomplete: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input was read and every chunk of every run answered."""
        return not self.errors and not self.incomplete


def candidate_fingerprint(transcript: Transcript, model: ChatModel, options: DiscoverOptions, repeat: int) -> str:
    """Hash of everything that determines one transcript's candidates in one run."""
    blob = json.dumps(
        {
            "text": hashlib.sha256(transcript.text.encode()).hexdigest(),
            "model": model.name,
            "endpoint": model.endpoint,
            "prompt": load_prompt("discover_chunk").hash,
            "options": options.model_dump(
                mode="json",
                include={"focus", "chunk_tokens", "context_tokens", "max_themes_per_chunk", "min_themes_per_chunk"}
                | {"max_tokens", "coded_speakers", "max_reasks"},
            ),
            # Left out at the default so that candidates found before categories were configurable resume.
            **({"kinds": [k.model_dump() for k in options.kinds]} if options.kinds != DEFAULT_KINDS else {}),
            "temperature": options.temperature_for(repeat),
            "seed": options.seed_for(repeat),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class DiscoveryDir(RunDir):
    """A discovery directory: ``candidates/<transcript>.r<run>.json`` plus the consolidated outputs."""

    def candidates_path(self, transcript_id: str, repeat: int) -> Path:
        """Where one transcript's candidates of one run live."""
        return self.path / "candidates" / f"{transcript_id}.r{repeat + 1}.json"

    def load_candidates(self, transcript_id: str, repeat: int) -> CandidateSet | None:
        """Saved candidates, or None (a corrupt file counts as none)."""
        p = self.candidates_path(transcript_id, repeat)
        if not p.is_file():
            return None
        try:
            return CandidateSet.model_validate_json(p.read_text(encoding="utf-8"))
        except (ValidationError, ValueError):
            return None

    def save_candidates(self, cs: CandidateSet) -> None:
        """Write one candidate set atomically."""
        atomic_write_text(self.candidates_path(cs.transcript_id, cs.repeat), cs.model_dump_json(indent=2) + "\n")


def run_discovery(
    inputs: Sequence[str | Path],
    model: ChatModel,
    out: str | Path,
    embedder: Embedder,
    *,
    options: DiscoverOptions | None = None,
    model_info: dict[str, Any] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    input_options: InputOptions | None = None,
) -> DiscoveryReport:
    """Discover themes in ``inputs``: candidates per chunk (saved as they finish), then consolidation.

    Re-running the same command skips transcripts whose candidates are saved with a matching
    fingerprint, and the response cache answers any chunk already answered, so a killed run loses
    nothing. Consolidation is recomputed each time from everything saved. The directory is locked
    for the run, as :func:`~quallm.run.runner.run_extraction` locks its own.
    """
    with locked(out):
        return _run_discovery(
            inputs,
            model,
            out,
            embedder,
            options=options,
            model_info=model_info,
            progress=progress,
            should_stop=should_stop,
            input_options=input_options,
        )


def _run_discovery(
    inputs: Sequence[str | Path],
    model: ChatModel,
    out: str | Path,
    embedder: Embedder,
    *,
    options: DiscoverOptions | None,
    model_info: dict[str, Any] | None,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    input_options: InputOptions | None,
) -> DiscoveryReport:
    opts = options or DiscoverOptions()
    prog = progress or Progress()
    run = DiscoveryDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    report = DiscoveryReport(out=run.path)
    chat = LimitedModel(model, opts.concurrency) if opts.concurrency > 1 else model
    finder = CandidateFinder(chat, opts)
    manifest = Manifest.begin(
        model,
        model_info,
        output_mode=False,
        command="discover",
        embedder=embedder.name,
        prompts={n: load_prompt(n).hash for n in _PROMPTS},
        parameters=opts.model_dump(mode="json"),
    )
    run.write_manifest(manifest.dumps())
    def refused() -> None:
        for _ in range(opts.repeats):  # a refused file is one finished step per repeat
            prog.transcript_done(None)

    batch = BatchInputs(run, inputs, input_options, on_refused=refused)
    prog.start(batch.total * opts.repeats)
    batch.report_gathered()
    loaded: list[Transcript] = [t for _, t, _ in batch.read(coded_speakers=opts.coded_speakers)]
    report.errors.extend(batch.errors)
    report.warnings.extend(batch.warnings)
    report.transcripts = len(loaded)

    jobs: list[tuple[Transcript, int, str]] = []
    fingerprints = {(t.id, r): candidate_fingerprint(t, model, opts, r) for t in loaded for r in range(opts.repeats)}
    for t in loaded:
        for r in range(opts.repeats):
            fp = fingerprints[(t.id, r)]
            prev = run.load_candidates(t.id, r)
            if prev is not None and prev.complete and prev.fingerprint == fp:
                report.skipped += 1
                prog.transcript_done(None, skipped=True)
                continue
            jobs.append((t, r, fp))

    def work(job: tuple[Transcript, int, str]) -> CandidateSet | None:
        t, r, fp = job
        if should_stop and should_stop():
            return None
        name = t.id if opts.repeats == 1 else f"{t.id} (run {r + 1})"
        prog.transcript_started(name, len(finder.chunks(t)))
        return finder.run(t, r, fp, on_unit=lambda: prog.unit_done(name))

    def finish(cs: CandidateSet | None) -> None:
        if cs is None:
            return
        run.save_candidates(cs)
        for f in cs.failures:
            run.log("failure", transcript_id=cs.transcript_id, run=cs.repeat + 1, **f.model_dump(mode="json"))
        report.done += 1
        prog.transcript_done(None)

    run_pool(jobs, work, finish, opts.concurrency, in_order=True)  # each set is saved on this thread

    # Consolidate everything saved for the current inputs (also what earlier runs of the command saved).
    sets = [
        cs
        for (tid, r), fp in fingerprints.items()
        if (cs := run.load_candidates(tid, r)) is not None and cs.fingerprint == fp
    ]
    report.incomplete = [f"{cs.transcript_id} run {cs.repeat + 1}" for cs in sets if not cs.complete]
    missing = len(fingerprints) - len(sets)
    if missing:
        report.incomplete.append(f"{missing} transcript run(s) not done (stopped early)")
    candidates: list[Candidate] = [c for cs in sets for c in cs.candidates]
    report.candidates = len(candidates)
    notes: list[str] = []
    grouper = model_grouper(chat, opts, notes) if opts.merge == "embedding+model" else None
    themes = consolidate(
        candidates, embedder, similarity=opts.similarity, group_with_model=grouper, kinds=[k.name for k in opts.kinds]
    )
    report.themes = themes
    report.notes = notes
    for n in notes:
        run.log("note", message=n)
    info = {
        "focus": opts.focus,
        "model": model.name,
        "transcripts": len(loaded),
        "repeats": opts.repeats,
        "min_transcripts": opts.min_transcripts,
        "candidates": len(candidates),
        "merge": opts.merge,
        "similarity": opts.similarity,
        "embedder": embedder.name,
        "incomplete": report.incomplete,
    }
    atomic_write_text(
        run.path / "themes.json",
        json.dumps({"info": info, "themes": [t.model_dump(mode="json") for t in themes]}, indent=2, ensure_ascii=False)
        + "\n",
    )
    atomic_write_text(run.path / "themes.md", render_themes_md(themes, info, opts.kinds))
    report.in_codebook = sum(in_codebook(t, opts.min_transcripts, len(loaded)) for t in themes)
    draft = run.path / "codebook.draft.yaml"
    if report.in_codebook:
        cb = draft_codebook(
            themes, focus=opts.focus, min_transcripts=opts.min_transcripts, n_transcripts=len(loaded), kinds=opts.kinds
        )
        atomic_write_text(draft, draft_yaml(cb))
    else:
        report.notes.append("no theme was found in enough transcripts: codebook.draft.yaml not written")
        draft.unlink(missing_ok=True)
    manifest.finish(
        report.ok,
        batch.entries,
        {
            "inputs": batch.total,
            "transcripts": len(loaded),
            "runs_done": report.done,
            "runs_skipped_already_done": report.skipped,
            "runs_incomplete": len(report.incomplete),
            "runs_not_done": missing,
            "input_errors": len(report.errors),
            "candidates": len(candidates),
            "themes": len(themes),
            "themes_in_codebook": report.in_codebook,
            "model_calls": sum(cs.calls for cs in sets),
            "prompt_tokens": sum(cs.usage.prompt_tokens for cs in sets),
            "completion_tokens": sum(cs.usage.completion_tokens for cs in sets),
        },
        report.errors,
    )
    run.write_manifest(manifest.dumps())
    return report
