"""The evaluation sets in fixtures/eval/ stay consistent: quotes placeable, codes known, presence agreeing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EVAL = Path(__file__).resolve().parents[2] / "fixtures" / "eval"
SETS = ("synth-la", "synth-open")


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_sets", EVAL / "check_sets.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", SETS)
def test_eval_set_is_consistent(name: str) -> None:
    rep = _checker().check_set(EVAL / name)
    assert rep.problems == []
    assert rep.transcripts >= 5
    assert rep.gold_rows > 0 and rep.coded_turns > 0


def test_checker_catches_a_bad_quote(tmp_path: Path) -> None:
    # A check that never fails proves nothing: break one quote and expect it to be reported.
    import shutil

    src = EVAL / "synth-la"
    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    gold = dst / "gold_coding.csv"
    lines = gold.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace("The rent", "The mortgage")
    gold.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = _checker().check_set(dst)
    assert any("quote occurs 0 times" in p for p in rep.problems)
    assert any("gold_presence.csv" in p for p in rep.problems)


def test_open_set_shape() -> None:
    # synth-open mimics a one-question expert study: one question, one answer, 1-4 themes each.
    rep = _checker().check_set(EVAL / "synth-open")
    assert rep.transcripts == 14 and rep.respondent_turns == 14
    assert all(1 <= n <= 4 for n in rep.codes_per_turn.values())
    assert len(rep.codes_per_turn) == 14


def test_checker_catches_a_misread_interviewer(tmp_path: Path) -> None:
    # First-name labels: the reader takes whoever asks more questions as the interviewer. Make the
    # respondent the questioner and the label scan must disagree with the reader.
    import shutil

    dst = tmp_path / "swapped"
    shutil.copytree(EVAL / "synth-la", dst)
    sla_c = dst / "transcripts" / "sla_c.txt"
    text = sla_c.read_text(encoding="utf-8").replace("?", ".")
    sla_c.write_text(text.replace("Dev: ", "Dev: Really? ", 8), encoding="utf-8")
    rep = _checker().check_set(dst)
    assert any(p.startswith("sla_c.txt: reader gives") for p in rep.problems)


def test_la_set_has_two_respondents_somewhere() -> None:
    # One interview has two respondents (R1, R2), as real joint interviews do.
    mod = _checker()
    files = sorted((EVAL / "synth-la" / "transcripts").glob("*.txt"))
    counts = [
        len({s for s, interviewer in mod.intended_turns(f.read_text(encoding="utf-8")) if not interviewer})
        for f in files
    ]
    assert max(counts) == 2 and len(files) == 6
