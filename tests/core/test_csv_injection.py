"""Spreadsheet formula injection: no CSV quallm writes starts a text cell with = + - @ tab or CR.

The inputs in tests/data/hostile/formulas/ put formula-looking text everywhere text comes from
outside: a transcript's words and its file name (``=evil.txt``), metadata, the codebook's labels and
a human coder's name. Each CSV quallm writes must neutralise such cells with a leading ``'`` (OWASP),
numbers quallm computed (a negative kappa) must stay numbers, JSON must stay exact, and quallm's own
CSV readers must take the ``'`` off again so that ``quote == text[start:end]`` survives the round trip.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import keyword_answer
from typer.testing import CliRunner

from quallm.analysis.agreement import read_human_csv
from quallm.core.csvsafe import SafeDictReader, neutralise, restore, to_csv
from quallm.ingest.transcripts import load_metadata, load_transcript
from quallm.models.fake_server import OpenAITestServer

DATA = Path(__file__).parents[1] / "data" / "hostile" / "formulas"
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
runner = CliRunner()


def _cells(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [cell for row in csv.reader(fh) for cell in row]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _assert_no_formula(path: Path) -> list[str]:
    cells = _cells(path)
    bad = [c for c in cells if c.startswith(TRIGGERS) and not _is_number(c)]
    assert not bad, (path.name, bad)
    return cells


@pytest.mark.parametrize(
    "text", ["", "plain", "=1+1", "+x", "-", "-5", "@SUM(A1)", "\tTab", "\rCR", "'", "'quoted", "'=x", "''-x",
             "=cmd|' /C calc'!A0", "a=b"],
)
def test_neutralise_and_restore_round_trip(text: str) -> None:
    written = neutralise(text)
    assert not written.startswith(TRIGGERS)
    assert restore(written) == text
    # Through a real CSV file and the reader quallm uses.
    body = to_csv([["transcript_id", "value"], [text or "x", text]])
    rows = list(SafeDictReader(io.StringIO(body, newline="")))
    assert rows == [{"transcript_id": text or "x", "value": text}]


def test_numbers_stay_numbers() -> None:
    assert to_csv([["k", -0.25, 3, None]]).strip() == "k,-0.25,3,"


def test_every_csv_neutralises_outside_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quallm.cli import app

    src = tmp_path / "in"
    shutil.copytree(DATA, src)
    monkeypatch.setenv("QUALLM_CACHE", str(tmp_path / "cache.sqlite3"))
    run = tmp_path / "run"

    def responder(body: dict[str, Any]) -> str:
        return keyword_answer(body["messages"])

    with OpenAITestServer(responder) as srv:
        r = runner.invoke(app, [
            "extract", str(src), "-c", str(src / "codebook.yaml"), "-o", str(run), "--metadata",
            str(src / "metadata.csv"), "-m", "test-model", "--base-url", srv.base_url,
        ])
    assert r.exit_code == 0, r.output
    for args in (["reconcile", str(run), "--human", str(src / "human.csv"), "--bootstrap", "20"],
                 ["synthesise", str(run), "--by", "care_trend"],
                 ["export", str(run), "--format", "csv", "-o", str(tmp_path / "csv")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)

    written = sorted([*run.glob("*.csv"), *(tmp_path / "csv").glob("*.csv")])
    names = {p.name for p in written}
    assert {"codings.csv", "agreement.csv", "disagreements.csv", "matrix.csv", "prevalence_by_care_trend.csv",
            "summaries.csv"} <= names
    cells = [c for p in written for c in _assert_no_formula(p)]
    joined = "\n".join(cells)
    for neutralised in ("'=evil", "'=HYPERLINK(", "'=cmd|' /C calc'!A0", "'=2+3", "'@SUM(1+1)", "'-Early help",
                        "'+bob vs quallm"):
        assert neutralised in joined, neutralised
    assert any(c.startswith("-") and _is_number(c) for c in _cells(run / "agreement.csv"))  # a negative kappa

    # JSON stays exact.
    result = json.loads((run / "results" / "=evil.json").read_text(encoding="utf-8"))
    quotes = {c["code_id"]: c["quote"] for c in result["codings"]}
    assert quotes["C_money"].startswith('=HYPERLINK("http://x/y","budget")')
    units = [d["unit_text"] for d in json.loads((run / "disagreements.json").read_text(encoding="utf-8"))]
    assert any(u.startswith("=cmd|' /C calc'!A0") for u in units)

    # quallm's own readers take the ' off again: the run's codings.csv reads back exactly.
    t = load_transcript(src / "=evil.txt")
    back, problems = read_human_csv(run / "codings.csv", [t], ["C_money", "E_help"])
    assert problems == []
    assert {c.code_id: c.quote for c in back} == quotes
    assert all(c.quote == t.text[c.start : c.end] for c in back if c.start is not None and c.end is not None)
    meta = tmp_path / "meta_roundtrip.csv"
    meta.write_text(to_csv([["transcript_id", "care_trend"], ["=evil", "=2+3"], ["'=odd", "'quoted"]]),
                    encoding="utf-8")
    assert load_metadata(meta) == {"=evil": {"care_trend": "=2+3"}, "'=odd": {"care_trend": "'quoted"}}
