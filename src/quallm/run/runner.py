"""Runs a batch of transcripts into a run directory, resumably; one bad file never stops the batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quallm.coding.examples import LoadedExamples
from quallm.coding.extract import ExtractOptions, Extractor, fingerprint, plan_packs, proposals_fingerprint
from quallm.coding.prompting import load_prompt
from quallm.coding.thresholds import repartition
from quallm.core.codebook import Codebook
from quallm.core.results import TranscriptResult
from quallm.ingest.transcripts import InputOptions, load_metadata, load_transcript
from quallm.models.base import ChatModel
from quallm.models.limits import LimitedModel
from quallm.run.batch import BatchInputs, run_pool
from quallm.run.manifest import Manifest
from quallm.run.rundir import RunDir, locked


@dataclass
class RunReport:
    """What a run did, for the CLI to print and to decide the exit code."""

    out: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rethresholded: list[str] = field(default_factory=list)  # of skipped: re-split at new thresholds, no call
    incomplete: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    codings: int = 0
    ungrounded: int = 0

    @property
    def ok(self) -> bool:
        """True when every input was read and every transcript finished."""
        return not self.errors and not self.incomplete


class Progress:
    """Callbacks the CLI uses to show progress (the library prints nothing itself)."""

    def start(self, total_transcripts: int) -> None:
        """Called once with the number of input files."""

    def transcript_started(self, transcript_id: str, units: int) -> None:
        """Called before a transcript's units are sent."""

    def unit_done(self, transcript_id: str | None = None) -> None:
        """Called after each unit (turn or chunk) of ``transcript_id``."""

    def transcript_done(self, result: TranscriptResult | None, skipped: bool = False) -> None:
        """Called when a transcript is finished, skipped, or failed to load (``result`` None)."""



def run_extraction(
    inputs: Sequence[str | Path],
    codebook: Codebook,
    model: ChatModel,
    out: str | Path,
    *,
    options: ExtractOptions | None = None,
    metadata_path: str | Path | None = None,
    codebook_path: str | Path | None = None,
    model_info: dict[str, Any] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    input_options: InputOptions | None = None,
    calibration_path: str | Path | None = None,
    examples: LoadedExamples | None = None,
) -> RunReport:
    """Code every transcript in ``inputs`` into the run directory ``out``.

    Finished transcripts whose fingerprint matches are skipped; each result is saved the moment it is
    done. Bad files are reported (one line each) and the batch goes on. The run directory is locked
    for the run: a second process on the same ``out`` gets :class:`~quallm.core.errors.RunLockedError`.
    """
    with locked(out):
        return _run_extraction(
            inputs,
            codebook,
            model,
            out,
            options=options,
            metadata_path=metadata_path,
            codebook_path=codebook_path,
            model_info=model_info,
            progress=progress,
            should_stop=should_stop,
            input_options=input_options,
            calibration_path=calibration_path,
            examples=examples,
        )


def _run_extraction(
    inputs: Sequence[str | Path],
    codebook: Codebook,
    model: ChatModel,
    out: str | Path,
    *,
    options: ExtractOptions | None,
    metadata_path: str | Path | None,
    codebook_path: str | Path | None,
    model_info: dict[str, Any] | None,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    input_options: InputOptions | None,
    calibration_path: str | Path | None,
    examples: LoadedExamples | None,
) -> RunReport:
    opts = options or ExtractOptions()
    prog = progress or Progress()
    run = RunDir(out)
    run.prepare()
    report = RunReport(out=run.path)
    metadata = load_metadata(metadata_path) if metadata_path else {}
    extractor = Extractor(
        LimitedModel(model, opts.concurrency) if opts.concurrency > 1 else model, codebook, opts,
        examples.bank if examples else None,
    )
    batch = BatchInputs(run, inputs, input_options, on_refused=lambda: prog.transcript_done(None))
    manifest = Manifest.begin(
        model,
        model_info,
        strategy=extractor.strategy,
        prompts={n: load_prompt(n).hash for n in ("code_turn", "code_chunk", "summary", "verify_turn")},
        codebook={
            "name": codebook.name,
            "version": codebook.version,
            "hash": codebook.hash,
            "path": str(codebook_path) if codebook_path else None,
            "codes": len(codebook.codes),
        },
        parameters=opts.model_dump(mode="json"),
        calibration=(
            {"path": str(calibration_path) if calibration_path else None, "sha256": opts.calibration_sha256,
             "codes_calibrated": sorted(opts.code_thresholds), "codes_needing_review": list(opts.review_codes)}
            if opts.calibration_sha256 else None
        ),
        metadata_file=str(metadata_path) if metadata_path else None,
    )
    if examples:  # set only with examples (unset fields are not written): other manifests stay as they were
        manifest.examples = examples.manifest_record()
    run.write_manifest(manifest.dumps())
    prog.start(batch.total)
    batch.report_gathered()
    loaded: list[Path] = []  # paths, not transcripts: memory stays flat in the number of inputs
    sizes: list[int | None] = []  # for packing short transcripts into shared requests (chunk strategy)
    finished: set[str] = set()  # transcripts already done in an earlier run (by path)
    for p, transcript, size in batch.read(
        metadata=metadata, coded_speakers=opts.coded_speakers, probe=extractor.pack_size, hash_files=True,
        should_stop=should_stop,
    ):
        fp = fingerprint(transcript, codebook, model, opts)
        previous = run.load_result(transcript.id)
        if previous is not None and run.finished_result(transcript.id, fp) is not None:
            report.skipped.append(transcript.id)
            prog.transcript_done(previous, skipped=True)
            finished.add(str(p))
        elif (
            previous
            and previous.complete
            and previous.proposals_fingerprint == proposals_fingerprint(transcript, codebook, model, opts)
        ):
            # Only the thresholds changed (e.g. a calibration applied): re-split the stored proposals.
            run.save_result(repartition(previous, opts.code_thresholds, opts.min_confidence, opts.review_codes, fp))
            report.skipped.append(transcript.id)
            report.rethresholded.append(transcript.id)
            prog.transcript_done(previous, skipped=True)
            finished.add(str(p))
        loaded.append(p)
        sizes.append(size)
    report.errors.extend(batch.errors)
    report.warnings.extend(batch.warnings)
    # Packs are planned over every input, finished or not, so a resumed run sends the very requests
    # the first run sent (answered from the cache) rather than new packs of what is left.
    jobs = [
        [loaded[i] for i in pack]
        for pack in plan_packs(sizes, opts.chunk_tokens)
        if any(str(loaded[i]) not in finished for i in pack)
    ]

    def code(paths: list[Path]) -> list[TranscriptResult]:
        if should_stop and should_stop():
            return []
        transcripts = [load_transcript(p, metadata.get(p.stem)) for p in paths]
        todo_ids = {t.id for p, t in zip(paths, transcripts, strict=True) if str(p) not in finished}
        for t in transcripts:
            if t.id in todo_ids:
                prog.transcript_started(t.id, 1 if len(transcripts) > 1 else len(extractor.units(t)))
        results = extractor.extract_pack(transcripts, on_unit=lambda tid: prog.unit_done(tid))
        return [r for r in results if r.transcript_id in todo_ids]

    def finish(results: list[TranscriptResult]) -> None:
        # Called on this thread only, so the run directory and the report have a single writer.
        for result in results:
            run.save_result(result)
            for u in result.ungrounded:
                run.log("ungrounded", transcript_id=result.transcript_id, **u.model_dump(mode="json"))
            for f in result.failures:
                run.log("failure", transcript_id=result.transcript_id, **f.model_dump(mode="json"))
            (report.incomplete if result.failures else report.done).append(result.transcript_id)
            prog.transcript_done(result)

    # Transcripts run concurrently too, so many short transcripts keep the endpoint busy; one
    # semaphore around the model caps the requests in flight for the whole run.
    run_pool(jobs, code, finish, opts.concurrency)
    totals = run.write_outputs(run.iter_results(), codebook)  # streamed: flat memory in the run's size
    report.codings = totals.codings
    report.ungrounded = totals.ungrounded
    manifest.finish(
        report.ok,
        batch.entries,
        {
            "inputs": batch.total,
            "transcripts_done": len(report.done),
            "transcripts_skipped_already_done": len(report.skipped),
            "transcripts_incomplete": len(report.incomplete),
            "input_errors": len(report.errors),
            "results_in_run": totals.results,
            "codings": report.codings,
            "ungrounded_dropped": report.ungrounded,
            "model_calls": totals.calls,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
        },
        report.errors,
    )
    run.write_manifest(manifest.dumps())
    return report
