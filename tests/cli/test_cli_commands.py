"""The CLI's other commands on a run made against the local test server: reconcile, synthesise,
report, export (qdpx, csv, json), estimate, cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import DEMO, keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.models.fake_server import OpenAITestServer

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tests.conftest as conftest

    out = tmp_path_factory.mktemp("cli") / "run"
    keywords = {"C02_funding": ["budget", "overspent", "funding"], "E04_early_help": ["early help"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conftest, "KEYWORDS", keywords)
        mp.setenv("QUALLM_CACHE", str(out.parent / "cache.sqlite3"))

        def responder(body: dict[str, Any]) -> str:
            return keyword_answer(body["messages"])

        with OpenAITestServer(responder) as srv:
            r = runner.invoke(
                app,
                [
                    "extract",
                    str(DEMO),
                    "-c",
                    str(DEMO / "codebook.yaml"),
                    "-o",
                    str(out),
                    "--metadata",
                    str(DEMO / "metadata.csv"),
                    "-m",
                    "test-model",
                    "--base-url",
                    srv.base_url,
                ],
            )
    assert r.exit_code == 0, r.output
    return out


def test_reconcile_synthesise_report_export(run_dir: Path) -> None:
    r = runner.invoke(app, ["reconcile", str(run_dir), "--human", str(DEMO / "human_coding.csv"), "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    assert "human-human" in r.output and "machine-human" in r.output
    agreement = json.loads((run_dir / "agreement.json").read_text())
    assert {p["kind"] for p in agreement["pairs"]} == {"human-human", "machine-human"}

    r = runner.invoke(app, ["synthesise", str(run_dir), "--by", "care_trend"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((run_dir / "prevalence_by_care_trend.csv").open()))
    assert rows and (run_dir / "matrix.csv").is_file()

    r = runner.invoke(app, ["report", str(run_dir), "--by", "care_trend"])
    assert r.exit_code == 0, r.output
    assert "coder_a" in (run_dir / "report.html").read_text()

    r = runner.invoke(app, ["export", str(run_dir)])
    assert r.exit_code == 0 and (run_dir / "project.qdpx").is_file(), r.output
    r = runner.invoke(app, ["export", str(run_dir), "--format", "json", "-o", str(run_dir / "json")])
    assert r.exit_code == 0, r.output
    codings = json.loads((run_dir / "json" / "codings.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(codings) == manifest["counts"]["codings"] > 0
    summaries = json.loads((run_dir / "json" / "summaries.json").read_text())
    assert {c["transcript_id"] for c in codings} <= {s["transcript_id"] for s in summaries}
    assert len(summaries) == 5
    r = runner.invoke(app, ["export", str(run_dir), "--format", "csv", "-o", str(run_dir / "csv")])
    assert r.exit_code == 0, r.output
    srows = list(csv.DictReader((run_dir / "csv" / "summaries.csv").open()))
    assert {r["section"] for r in srows} >= {"narrative", "challenge"}
    assert (run_dir / "csv" / "codings.csv").read_text() == (run_dir / "codings.csv").read_text()
    r = runner.invoke(app, ["export", str(run_dir), "--format", "pdf"])
    assert r.exit_code == 2 and "--format must be" in r.output


def test_estimate_makes_no_call_and_cache_commands(tmp_path: Path) -> None:
    r = runner.invoke(app, ["estimate", str(DEMO), "-c", str(DEMO / "codebook.yaml"), "--model", "gpt-4o-mini"])
    assert r.exit_code == 0, r.output
    assert "gpt-4o-mini" in r.output and "token" in r.output.lower()
    cache = tmp_path / "c.sqlite3"
    r = runner.invoke(app, ["cache", "stats", "--cache", str(cache)])
    assert r.exit_code == 0 and '"entries": 0' in r.output, r.output
    r = runner.invoke(app, ["cache", "clear", "--cache", str(cache)])
    assert r.exit_code == 0 and "Cleared" in r.output


def test_progress_bar_shows_tokens_and_cost_so_far() -> None:
    from io import StringIO

    from rich.console import Console
    from rich.progress import Progress

    from quallm.cli.app import _price_of, _RichProgress
    from quallm.core.results import TranscriptResult
    from quallm.models.base import Usage

    price = _price_of("gpt-4o-mini")
    assert price is not None and price.input > 0
    with Progress(console=Console(file=StringIO())) as progress:
        tracker = _RichProgress(progress, price)
        tracker.start(2)
        result = TranscriptResult(
            transcript_id="t1", source="t1.txt", format="txt", fingerprint="f", n_turns=1, n_coded_units=1,
            strategy="chunk", usage=Usage(prompt_tokens=1_000_000, completion_tokens=0),
        )  # fmt: skip
        tracker.transcript_started("t1", 1)
        tracker.transcript_done(result)
        description = progress.tasks[0].description
    assert "1,000,000 tokens" in description
    assert f"${price.input:.4f}" in description  # a million input tokens cost the input price per million
