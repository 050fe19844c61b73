"""A synthetic run directory for the calibration tests: transcripts, a codebook, and hand-built results
whose proposals carry probabilities drawn from a seeded generator. These are test fixtures, not model
output: code A's probabilities are set low (a model under-confident about A, so the default 0.5 misses
it), B's are well separated around 0.5, and C is never coded by the human."""

from __future__ import annotations

import json
import random
from pathlib import Path

from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.core.csvsafe import SafeWriter
from quallm.core.results import TranscriptResult
from quallm.ingest.transcripts import load_transcript
from quallm.run.rundir import RunDir

CODER = "quallm (synthetic)"
CODEBOOK = """name: Calibration test
version: "1"
codes:
  - id: A
    kind: challenge
    label: Alpha
    definition: Alpha things.
  - id: B
    kind: challenge
    label: Beta
    definition: Beta things.
  - id: C
    kind: enabler
    label: Gamma
    definition: Gamma things.
"""
WORDS = ["budget", "staff", "families", "court", "placements", "early help", "schools", "police"]


def make_calibration_run(root: Path, n_transcripts: int = 6, turns: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """Write the run into ``root / "run"`` and the human coding CSV; returns (run dir, human CSV)."""
    rng = random.Random(seed)
    src = root / "transcripts"
    src.mkdir(parents=True, exist_ok=True)
    cb_path = root / "codebook.yaml"
    cb_path.write_text(CODEBOOK, encoding="utf-8")
    codebook = Codebook.load(cb_path)
    run = RunDir(root / "run")
    run.prepare()
    human_rows: list[list[str | int]] = []
    inputs = []
    for i in range(n_transcripts):
        tid = f"t{i:02d}"
        lines = []
        for k in range(turns):
            lines.append(f"Interviewer: Question {k} about {rng.choice(WORDS)}?")
            lines.append(f"Respondent: Answer {k} of {tid}, mostly about {rng.choice(WORDS)} and {rng.choice(WORDS)}.")
        path = src / f"{tid}.txt"
        path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
        t = load_transcript(path)
        codings: list[Coding] = []
        candidates: list[Coding] = []
        for turn in t.coded_turns():
            truth = {"A": rng.random() < 0.35, "B": rng.random() < 0.35, "C": False}
            for code, present in truth.items():
                if present:
                    human_rows.append([tid, "coder_a", code, turn.index])
                proposed = rng.random()
                if code == "A":
                    p = rng.uniform(0.22, 0.45) if present else (rng.uniform(0.02, 0.18) if proposed < 0.6 else None)
                elif code == "B":
                    p = rng.uniform(0.55, 0.95) if present else (rng.uniform(0.1, 0.5) if proposed < 0.5 else None)
                else:
                    p = rng.uniform(0.05, 0.6) if rng.random() < 0.2 else None
                if p is None:
                    continue
                c = Coding(transcript_id=tid, coder=CODER, code_id=code, start=turn.start, end=turn.end,
                           turn_index=turn.index, speaker=turn.speaker, quote=turn.text, alignment="exact",
                           probability=round(p, 4))
                (codings if p >= 0.5 else candidates).append(c)
        run.save_result(TranscriptResult(
            transcript_id=tid, source=str(path), format="text", fingerprint="synthetic",
            n_turns=len(t.turns), n_coded_units=len(t.coded_turns()), strategy="turn",
            codings=codings, candidates=candidates,
        ))
        inputs.append({"file": str(path), "transcript_id": tid, "sha256": "0"})
    manifest = {
        "model": {"name": "synthetic", "endpoint": "local:abc", "sha256": "abc"},
        "strategy": "turn",
        "prompts": {"code_turn": "p1", "code_chunk": "p2", "verify_turn": "p3", "summary": "p4"},
        "codebook": {"name": codebook.name, "hash": codebook.hash, "path": str(cb_path)},
        "parameters": {"min_confidence": 0.5},
        "inputs": inputs,
    }
    run.write_manifest(manifest)
    human = root / "human.csv"
    with human.open("w", encoding="utf-8", newline="") as fh:
        w = SafeWriter(fh)
        w.writerow(["transcript_id", "coder", "code_id", "turn_index"])
        w.writerows(human_rows)
    return run.path, human


def human_subset(human: Path, ids: set[str], out: Path) -> Path:
    """The rows of ``human`` for transcripts ``ids`` only."""
    rows = human.read_text(encoding="utf-8").splitlines()
    keep = [rows[0], *(r for r in rows[1:] if r.split(",")[0] in ids)]
    out.write_text("\n".join(keep) + "\n", encoding="utf-8")
    return out


def read_json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text(encoding="utf-8"))
