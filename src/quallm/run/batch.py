"""The one batch skeleton: reading the inputs of a run, and a pool of workers with a single writer.

Extraction (:func:`quallm.run.runner.run_extraction`), discovery (:func:`quallm.coding.discovery.run_discovery`)
and the Batch API path (:func:`quallm.run.batch_api.run_batch_extraction`) share it: a file that cannot
be read is one error line (logged, counted, in the manifest) and the batch goes on; warnings are
logged once; results are written by the calling thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

from quallm.core.errors import InputError, QuallmError
from quallm.core.hashing import sha256_file
from quallm.core.transcript import Transcript
from quallm.ingest.transcripts import InputOptions, gather_inputs, load_transcript, nothing_to_code
from quallm.run.manifest import InputEntry
from quallm.run.rundir import RunDir

J = TypeVar("J")
R = TypeVar("R")


class BatchInputs:
    """The input files of a batch, read one at a time, with the manifest entry and the lines each gives.

    Gathering happens at construction; :meth:`report_gathered` then reports what it refused (after the
    caller has started its progress display), and :meth:`read` reads the rest.

    ``run`` gets the log lines (``None``: read silently, as the Batch API path does before the run
    proper reports them). ``on_refused`` is called once per refused file (the progress display).
    """

    def __init__(
        self,
        run: RunDir | None,
        inputs: Sequence[str | Path],
        options: InputOptions | None = None,
        *,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.run = run
        self.gathered = gather_inputs(inputs, options)
        self.entries: list[InputEntry] = []
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._on_refused = on_refused

    def report_gathered(self) -> None:
        """The warnings and refusals of gathering (links skipped, files too large, duplicate ids)."""
        for w in self.gathered.warnings:
            self.warn(w)
        for err in self.gathered.errors:
            self.refuse(err.path, err)

    @property
    def total(self) -> int:
        """Files named by the inputs, read or refused."""
        return len(self.gathered.paths) + len(self.gathered.errors)

    def warn(self, message: str, transcript_id: str | None = None) -> None:
        """One warning line, kept and logged."""
        self.warnings.append(message)
        if self.run is not None:
            self.run.log("warning", **({"transcript_id": transcript_id} if transcript_id else {}), message=message)

    def refuse(self, file: str, exc: QuallmError) -> None:
        """One file that cannot be read: an error line, logged, in the manifest; the batch goes on."""
        self.errors.append(str(exc))
        if self.run is not None:
            self.run.log("input_error", file=file, message=str(exc))
        self.entries.append({"file": file, "error": str(exc)})
        if self._on_refused:
            self._on_refused()

    def read(
        self,
        *,
        metadata: Mapping[str, dict[str, str]] | None = None,
        coded_speakers: Sequence[str] = (),
        probe: Callable[[Transcript], int | None] | None = None,
        hash_files: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[Path, Transcript, int | None]]:
        """Each readable file with its transcript and ``probe(transcript)`` (a size); the rest are refused.

        An exception while reading or probing one file (a surprise included) is that file's error line,
        never the batch's end. ``hash_files`` puts each file's sha256 in its manifest entry.
        """
        meta = metadata or {}
        for p in self.gathered.paths:
            if should_stop and should_stop():
                break
            try:
                transcript = load_transcript(p, meta.get(p.stem))
                probed = probe(transcript) if probe else None
                digest = sha256_file(p) if hash_files else None
            except QuallmError as exc:
                self.refuse(str(p), exc)
                continue
            except Exception as exc:  # a surprise in one file is that file's error line, never the batch's end
                self.refuse(str(p), InputError(p, f"cannot read ({type(exc).__name__}: {exc})"))
                continue
            entry: InputEntry = {"file": str(p), "transcript_id": transcript.id}
            if digest is not None:
                entry["sha256"] = digest
            self.entries.append(entry)
            empty = nothing_to_code(transcript, coded_speakers)
            for w in (*transcript.warnings, *([empty] if empty else [])):
                self.warn(w, transcript.id)
            yield p, transcript, probed


def run_pool(
    jobs: Sequence[J],
    work: Callable[[J], R],
    finish: Callable[[R], None],
    concurrency: int,
    *,
    in_order: bool = False,
) -> None:
    """``finish(work(job))`` for every job, ``work`` on up to ``concurrency`` threads.

    ``finish`` runs on the calling thread only, so the run directory and the counts have a single
    writer. Results are finished as they come, from a sliding window of ``2 * concurrency``
    submissions (so finished work is written and freed early), or in job order with ``in_order``.
    """
    if concurrency <= 1:
        for job in jobs:
            finish(work(job))
        return
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        if in_order:
            for result in pool.map(work, jobs):
                finish(result)
            return
        pending: set[Future[R]] = set()
        for job in jobs:
            pending.add(pool.submit(work, job))
            if len(pending) >= 2 * concurrency:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finish(future.result())
        for future in list(pending):
            finish(future.result())
