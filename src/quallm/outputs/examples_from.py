"""Worked examples read from a human coding file: the loading half of ``--examples-from``.

* :func:`worked_units` turns human coding of transcripts into example units (every coded turn, so a
  turn the human left uncoded is a "none" example);
* :func:`read_examples` reads a human coding file (CSV or .qdpx, the reader ``calibrate --human`` uses)
  against the run's transcripts;
* :func:`load_example_bank` does both for a run's inputs (the transcripts the file names).

It sits above analysis because it places codings on turns with the agreement layer's unit mapping;
the bank itself (``quallm.coding.examples``) is what extraction uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quallm.analysis.agreement.units import mark_units
from quallm.analysis.reconciling import load_coding_file
from quallm.coding.examples import DEFAULT_K, ExampleBank, LoadedExamples, WorkedUnit
from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.core.csvsafe import SafeDictReader
from quallm.core.errors import ConfigError, QuallmError
from quallm.core.hashing import sha256_file
from quallm.core.transcript import Transcript
from quallm.ingest.transcripts import InputOptions, gather_inputs, load_transcript
from quallm.models.embeddings import Embedder


def worked_units(
    transcripts: Sequence[Transcript], human: Sequence[Coding], codes: Sequence[str],
    speakers: frozenset[str] | None = None,
) -> tuple[list[WorkedUnit], list[str]]:
    """Every coded turn of ``transcripts`` with the codes (of ``codes``) the human gave it, and the codings
    that could not be placed on a turn. Turns the human left uncoded are kept: they show "none"."""
    marked = mark_units(transcripts, human, "turn", speakers=speakers)
    known = set(codes)
    given: dict[int, set[str]] = {}
    for k, c in marked.hits:
        if c.code_id in known:
            given.setdefault(k, set()).add(c.code_id)
    speaker_of: dict[tuple[str, int | None], str] = {(t.id, turn.index): turn.speaker for t in transcripts
                                                     for turn in t.turns}
    units = [
        WorkedUnit(u.transcript_id, speaker_of.get((u.transcript_id, u.turn_index), ""), u.text,
                   tuple(c for c in codes if c in given.get(k, set())))
        for k, u in enumerate(marked.units)
    ]
    return units, list(marked.issues)


def _csv_transcript_ids(path: Path) -> set[str]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return {(row.get("transcript_id") or "").strip() for row in SafeDictReader(fh)} - {""}


def read_examples(
    path: str | Path, transcripts: Sequence[Transcript], codebook: Codebook, coder: str | None = None,
    speakers: frozenset[str] | None = None,
) -> tuple[list[WorkedUnit], list[str]]:
    """The worked units of a human coding file (CSV or .qdpx) on ``transcripts`` (the run's inputs), and
    the problems met, one line each: transcripts the file names that are not among the inputs are named
    in one line and skipped. Several coders in the file need ``coder``."""
    p = Path(path)
    codings, problems = load_coding_file(p, transcripts, codebook)
    run_ids = {t.id for t in transcripts}
    if p.suffix.lower() == ".csv":
        missing = sorted(_csv_transcript_ids(p) - run_ids)
        drop = {f"unknown transcript id {t!r}" for t in missing}
        problems = [line for line in problems if not any(line.endswith(d) for d in drop)]
        if missing:
            problems.insert(0, f"{p}: transcripts not among the inputs, not used as examples: {', '.join(missing)}")
    coders = sorted({c.coder for c in codings})
    if coder is not None:
        if coder not in coders:
            raise ConfigError(f"{p}: coder {coder!r} is not in the file (coders: {', '.join(coders) or 'none'})")
        codings = [c for c in codings if c.coder == coder]
    elif len(coders) > 1:
        raise ConfigError(f"{p}: the file has {len(coders)} coders ({', '.join(coders)}); choose one with "
                          "--examples-coder")
    if not codings:
        raise ConfigError(f"{p}: no human coding of the run's transcripts could be read for worked examples")
    coded = {c.transcript_id for c in codings}
    units, issues = worked_units([t for t in transcripts if t.id in coded], codings, codebook.ids, speakers)
    return units, [*problems, *issues]


def load_example_bank(
    path: str | Path,
    inputs: Sequence[str | Path],
    codebook: Codebook,
    *,
    coder: str | None = None,
    k: int = DEFAULT_K,
    speakers: frozenset[str] | None = None,
    input_options: InputOptions | None = None,
    embedder: Embedder | None = None,
) -> LoadedExamples:
    """The worked examples of a human coding file for a run over ``inputs`` (transcript files or folders).

    Only the run's inputs are read (a CSV's transcripts alone; a .qdpx needs them all to place its
    codings); unreadable inputs are left to the run to report. The embedder defaults to MiniLM.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: examples file not found")
    files = gather_inputs(inputs, input_options).paths
    if p.suffix.lower() == ".csv":
        named = {t.casefold() for t in _csv_transcript_ids(p)}
        files = [f for f in files if f.stem.casefold() in named]
    transcripts: list[Transcript] = []
    for f in files:
        try:
            transcripts.append(load_transcript(f))
        except QuallmError:
            continue
    units, problems = read_examples(p, transcripts, codebook, coder, speakers)
    if embedder is None:
        from quallm.models.embeddings import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    bank = ExampleBank(units, embedder, k)
    return LoadedExamples(bank, str(p), sha256_file(p), sorted({u.transcript_id for u in units}), problems)


