"""The calibration loop through the CLI against the local test server: a generous extract, calibrate,
then extract --calibration with the server gone (so any model call would fail), and a refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import DEMO, keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.models.fake_server import OpenAITestServer

runner = CliRunner()


def _scorer(body: dict[str, Any]) -> dict[str, float]:
    # Stands in for the endpoint's token probabilities: funding checks 0.3 (under-confident), the rest 0.9.
    code_line = body["messages"][1]["content"].split("Check one code only:\n", 1)[1]
    p = 0.3 if code_line.startswith("C02_funding") else 0.9
    return {"yes": p, "no": 1 - p}


def test_extract_calibrate_apply_and_refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "KEYWORDS", {"C02_funding": ["budget", "overspent", "funding"],
                                               "E04_early_help": ["early help"]})
    out = tmp_path / "run"
    args = ["extract", str(DEMO), "-c", str(DEMO / "codebook.yaml"), "-o", str(out), "-m", "test-model",
            "--strategy", "turn", "--no-summary", "--max-codes", "3", "--scoring", "yesno"]
    with OpenAITestServer(lambda body: keyword_answer(body["messages"]), scorer=_scorer) as srv:
        base = [*args, "--base-url", srv.base_url]
        r = runner.invoke(app, [*base, "--min-confidence", "0"])
        assert r.exit_code == 0, r.output
        url = srv.base_url
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["parameters"]["min_confidence"] == 0 and manifest["parameters"]["max_codes_per_unit"] == 3
    r = runner.invoke(app, ["calibrate", str(out), "--human", str(DEMO / "human_coding.csv"), "--coder", "coder_a",
                            "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    assert "C02_funding" in r.output and "(pooled)" in r.output and "leave-one-transcript-out" in r.output
    cal = json.loads((out / "calibration.json").read_text(encoding="utf-8"))
    funding = next(c for c in cal["codes"] if c["code"] == "C02_funding")
    assert funding["threshold"] <= 0.3  # the 0.3s are right far more often than not: kept
    # The server is gone: the calibration is applied from the stored probabilities or not at all.
    r = runner.invoke(app, [*args, "--base-url", url, "--calibration", str(out / "calibration.json")])
    assert r.exit_code == 0, r.output
    assert "re-split at the calibration's thresholds (no model call)" in r.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["calibration"]["sha256"] and manifest["parameters"]["code_thresholds"]
    # A calibration made for another codebook is refused in one line saying so.
    cal["validity"]["codebook_hash"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(cal), encoding="utf-8")
    r = runner.invoke(app, [*args, "--base-url", url, "--calibration", str(other)])
    assert r.exit_code == 2 and "does not apply here: codebook (calibrated on 000000000000" in r.output
