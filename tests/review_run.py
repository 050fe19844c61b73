"""A small hand-made run directory for the review tests: non-ASCII turns (an emoji included), codings
with and without probabilities, and a candidate below the threshold."""

from __future__ import annotations

from pathlib import Path

from quallm.core.codings import Coding
from quallm.core.results import TranscriptResult
from quallm.ingest.transcripts import load_transcript
from quallm.run.rundir import RunDir

CODER = "quallm (fake-model)"
CODEBOOK = """name: Review test
version: "1"
codes:
  - id: C_money
    kind: challenge
    label: Funding pressure
    definition: Budgets and money are short.
    include: [ "cuts to budgets" ]
    exclude: [ "families' own incomes" ]
  - id: C_staff
    kind: challenge
    label: Staff turnover
    definition: Social workers leave; posts stay empty.
  - id: E_help
    kind: enabler
    label: Early help
    definition: Early help and family support keep children at home.
"""
# Turn 1 holds an astral-plane character (the emoji counts 2 UTF-16 units, 1 code point) before the
# words a reviewer adds; turn 3 has accented letters. Markup in the text must show as text.
T1 = (
    "Interviewer: How are things with the budget?\n\n"
    "Respondent: Le café a fermé 😀 — the budget was cut again. Staff leave every month, "
    "and the équipe is tired. <b>Not bold</b>\n\n"
    "Interviewer: Anything that helps?\n\n"
    "Respondent: Family support keeps niños at home; early help works when it's there.\n"
)
T2 = (
    "Interviewer: Tell me about your role.\n\n"
    "Respondent: I lead the front door. Money is tight and we lose staff to agencies.\n"
)


def _coding(t_text: str, tid: str, code: str, quote: str, turn: int, p: float | None) -> Coding:
    start = t_text.index(quote)
    return Coding(transcript_id=tid, coder=CODER, code_id=code, start=start, end=start + len(quote),
                  turn_index=turn, speaker="Respondent", quote=quote, alignment="exact",
                  rationale=f"model says {code}", probability=p)


def make_review_run(root: Path) -> Path:
    """Write transcripts, a codebook and a finished run into ``root``; returns the run directory."""
    src = root / "transcripts"
    src.mkdir(parents=True, exist_ok=True)
    (src / "t1.txt").write_text(T1, encoding="utf-8")
    (src / "t2.txt").write_text(T2, encoding="utf-8")
    cb = root / "codebook.yaml"
    cb.write_text(CODEBOOK, encoding="utf-8")
    run = RunDir(root / "run")
    run.prepare()
    for tid, text in (("t1", T1), ("t2", T2)):
        t = load_transcript(src / f"{tid}.txt")
        assert t.text == text
        if tid == "t1":
            codings = [
                _coding(text, tid, "C_money", "the budget was cut again.", 1, 0.42),
                _coding(text, tid, "E_help", "Staff leave every month", 1, 0.91),
                _coding(text, tid, "E_help", "Family support keeps niños at home", 3, None),
            ]
            candidates = [_coding(text, tid, "C_money", "Le café a fermé", 1, 0.08)]
        else:
            codings = [_coding(text, tid, "C_money", "Money is tight", 1, 0.66)]
            candidates = []
        run.save_result(TranscriptResult(
            transcript_id=tid, source=str(src / f"{tid}.txt"), format="text", fingerprint="x",
            n_turns=len(t.turns), n_coded_units=2, strategy="turn", codings=codings, candidates=candidates,
        ))
    run.write_manifest({
        "status": "finished", "model": {"name": "fake-model"}, "strategy": "turn",
        "codebook": {"path": str(cb), "name": "Review test"},
        "inputs": [{"file": str(src / f"{tid}.txt"), "transcript_id": tid} for tid in ("t1", "t2")],
    })
    return run.path
