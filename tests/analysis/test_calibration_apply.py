"""Applying a calibration: thresholds re-split stored proposals without a model call, codings of codes
that are not reliable are marked, the manifest records the file's hash, and a calibration made for
another setup is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SAMPLE, keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.coding.extract import ExtractOptions
from quallm.coding.thresholds import repartition
from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError
from quallm.models.base import ChatRequest
from quallm.models.fake import FakeModel
from quallm.outputs.calibrate import calibrate_run
from quallm.outputs.calibrated import calibrated_options
from quallm.run.rundir import RunDir
from quallm.run.runner import run_extraction

# These runs score with the yes/no check (the fake model's scorer) at the former 0.5 threshold.
YESNO: dict[str, Any] = {"scoring": "yesno", "min_confidence": 0.5}


def _scorer(r: ChatRequest) -> dict[str, float]:
    # Stands in for the backend's token probabilities: money checks say 0.2 (under-confident), help 0.8.
    code_line = r.messages[1].content.split("Check one code only:\n", 1)[1].splitlines()[0]
    p = 0.2 if code_line.startswith("C_money") else 0.8
    return {"yes": p, "no": 1 - p}


def _model() -> FakeModel:
    return FakeModel(lambda r: keyword_answer(list(r.messages)), scorer=_scorer)  # type: ignore[arg-type]


@pytest.fixture
def coded(tmp_path: Path, tiny_codebook_yaml: Path) -> tuple[Path, Path, Path]:
    """Three transcripts extracted generously (--min-confidence 0), and a human coding of all three that
    agrees with the machine on both codes (turn 3: money; turn 5: early help)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"t{i}.txt").write_text(SAMPLE, encoding="utf-8")
    cb = Codebook.load(tiny_codebook_yaml)
    out = tmp_path / "run"
    opts = ExtractOptions(strategy="turn", summary=False, min_confidence=0.0, scoring="yesno")
    report = run_extraction([src], cb, _model(), out, options=opts, codebook_path=tiny_codebook_yaml)
    assert len(report.done) == 3
    human = tmp_path / "human.csv"
    rows = ["transcript_id,coder,code_id,turn_index"]
    rows += [f"t{i},ann,{code},{turn}" for i in range(3) for code, turn in (("C_money", 3), ("E_help", 5))]
    human.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return src, out, human


def test_calibration_applied_to_answered_results_makes_no_model_call(
    coded: tuple[Path, Path, Path], tiny_codebook_yaml: Path
) -> None:
    src, out, human = coded
    cal = calibrate_run(out, [human], min_positives=4, n_boot=100).calibration
    assert {c.code: c.verdict for c in cal.codes} == {"C_money": "insufficient", "E_help": "insufficient"}
    assert cal.thresholds()["C_money"] <= 0.2  # the model's 0.2 for money is right: keep those codings
    cb = Codebook.load(tiny_codebook_yaml)
    model = _model()
    base = ExtractOptions(strategy="turn", summary=False, **YESNO)  # default threshold 0.5 would drop money
    opts = calibrated_options(base, out / "calibration.json", cb, model)
    report = run_extraction([src], cb, model, out, options=opts, codebook_path=tiny_codebook_yaml,
                            calibration_path=out / "calibration.json")
    assert model.requests == []  # re-split from the stored probabilities
    assert sorted(report.rethresholded) == ["t0", "t1", "t2"]
    r = RunDir(out).load_result("t0")
    assert r is not None
    assert sorted((c.code_id, c.needs_review) for c in r.codings) == [("C_money", True), ("E_help", True)]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["calibration"]["sha256"] == opts.calibration_sha256 and len(opts.calibration_sha256 or "") == 64
    with (out / "codings.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["needs_review"] for row in rows} == {"yes"} and {row["probability"] for row in rows} == {"0.2", "0.8"}
    # Without the calibration, at the default 0.5, money goes back to the candidates (again no call).
    report = run_extraction([src], cb, model, out, options=base, codebook_path=tiny_codebook_yaml)
    r = RunDir(out).load_result("t0")
    assert r is not None and model.requests == []
    assert [c.code_id for c in r.codings] == ["E_help"] and not r.codings[0].needs_review
    assert [c.code_id for c in r.candidates] == ["C_money"]


def test_a_calibration_for_another_setup_is_refused(coded: tuple[Path, Path, Path], tiny_codebook_yaml: Path,
                                                     tmp_path: Path) -> None:
    _, out, human = coded
    path = calibrate_run(out, [human], n_boot=0).path
    body = json.loads(path.read_text(encoding="utf-8"))
    body["validity"]["codebook_hash"] = "f" * 64
    body["validity"]["strategy"] = "chunk"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(body), encoding="utf-8")
    cb = Codebook.load(tiny_codebook_yaml)
    with pytest.raises(ConfigError, match=r"codebook \(calibrated on ffffffffffff.*strategy \(calibrated on chunk"):
        calibrated_options(ExtractOptions(strategy="turn", **YESNO), other, cb, _model())
    body["validity"] = json.loads(path.read_text(encoding="utf-8"))["validity"]
    body["validity"]["prompts"]["verify_turn"] = "0" * 64
    other.write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(ConfigError, match="prompt verify_turn") as err:
        calibrated_options(ExtractOptions(strategy="turn", **YESNO), other, cb, _model())
    assert "\n" not in str(err.value)
    # Options that change the proposals or their scores (codes an answer may get, worked examples, scoring)
    # must match too.
    assert json.loads(path.read_text(encoding="utf-8"))["validity"]["proposals"]["max_codes_per_unit"] == "2"
    calibrated_options(ExtractOptions(strategy="turn", **YESNO), path, cb, _model())
    with pytest.raises(ConfigError, match="option max_codes_per_unit"):
        calibrated_options(ExtractOptions(strategy="turn", max_codes_per_unit=3, **YESNO), path, cb, _model())
    with pytest.raises(ConfigError, match="option examples_sha256"):
        calibrated_options(ExtractOptions(strategy="turn", examples_sha256="ab" * 32, **YESNO), path, cb, _model())
    # Thresholds on P(yes) mean nothing for another probability (the product of --scoring both).
    with pytest.raises(ConfigError, match="option scoring"):
        calibrated_options(ExtractOptions(strategy="turn", **{**YESNO, "scoring": "both"}), path, cb, _model())


def test_repartition_drops_summary_points_of_codes_no_longer_reported(coded: tuple[Path, Path, Path]) -> None:
    from quallm.core.results import Summary, SummaryPoint

    _, out, _ = coded
    r = RunDir(out).load_result("t0")
    assert r is not None
    r = r.model_copy(update={"summary": Summary(narrative="n", points=(
        SummaryPoint(code_id="C_money", kind="challenge", label="m", summary="money"),
        SummaryPoint(code_id="E_help", kind="enabler", label="h", summary="help"),
    ))})
    high = repartition(r, {"C_money": 0.5}, 0.0)
    assert [c.code_id for c in high.codings] == ["E_help"] and [c.code_id for c in high.candidates] == ["C_money"]
    assert high.summary is not None and [p.code_id for p in high.summary.points] == ["E_help"]
    none = repartition(r.model_copy(update={"summary": high.summary}), {}, 0.0)
    assert any("no point for C_money" in w for w in none.warnings)


def test_cli_calibrate_prints_the_table_and_suggests(coded: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, out, human = coded
    sample = tmp_path / "sample.csv"
    sample.write_text("\n".join(human.read_text(encoding="utf-8").splitlines()[:5]) + "\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["calibrate", str(out), "--human", str(sample), "--suggest", "1",
                                   "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    assert "C_money" in res.output and "insufficient" in res.output and "(pooled)" in res.output
    assert "Code next (1)" in res.output and "t2" in res.output
    assert (out / "calibration_template.csv").read_text(encoding="utf-8").startswith("transcript_id,turn_index")
    bad = CliRunner().invoke(app, ["calibrate", str(out), "--human", str(tmp_path / "missing.csv")])
    assert bad.exit_code == 2 and "missing.csv" in bad.output


def test_needs_review_reaches_the_report_and_the_qdpx_export(coded: tuple[Path, Path, Path],
                                                              tiny_codebook_yaml: Path) -> None:
    import zipfile

    from quallm.analysis.reconciling import reconcile_run
    from quallm.outputs.qdpx import NEEDS_REVIEW_NOTE, export_run
    from quallm.outputs.report import render_report

    src, out, human = coded
    calibrate_run(out, [human], min_positives=4, n_boot=0)
    cb = Codebook.load(tiny_codebook_yaml)
    base = ExtractOptions(strategy="turn", summary=False, **YESNO)
    opts = calibrated_options(base, out / "calibration.json", cb, _model())
    run_extraction([src], cb, _model(), out, options=opts, codebook_path=tiny_codebook_yaml)
    report, _ = reconcile_run(out, [human], n_boot=0)
    pc = report.probability_calibration
    assert [p.coder for p in pc] == ["ann"] and pc[0].n == 6 and pc[0].positives == 6
    assert pc[0].brier == pytest.approx((3 * 0.8**2 + 3 * 0.2**2) / 6)
    assert json.loads((out / "agreement.json").read_text(encoding="utf-8"))["probability_calibration"][0]["ece"] \
        == pytest.approx(0.5)
    html = render_report(out).read_text(encoding="utf-8")
    assert "Calibration of the machine" in html and "Brier score 0.340" in html and "<svg" in html
    assert "coding(s) of this code need review" in html
    path = out / "project.qdpx"
    export_run(out, path)
    with zipfile.ZipFile(path) as z:
        project = z.read("project.qde").decode("utf-8")
    assert NEEDS_REVIEW_NOTE in project
