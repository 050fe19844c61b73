"""A run opens from anywhere: the typed manifest, and every command on a moved project folder.

The project (transcripts, codebook, metadata and the run directory inside it) is coded from its own
folder with relative paths, moved as a whole, and every command is then run from another folder.
Before the run had one way to be opened, ``reconcile`` and ``export`` failed here with
``fixtures/demo/la01_northshire.txt: file not found``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import DEMO, keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.core.codebook import Codebook
from quallm.models.fake import FakeModel
from quallm.outputs.review.session import ReviewSession
from quallm.outputs.study_summary import study_summary
from quallm.run import Manifest, open_run
from quallm.run.runner import run_extraction

runner = CliRunner()


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo project, coded (keyword coder) with paths relative to its folder, then moved elsewhere."""
    base = tmp_path_factory.mktemp("moving")
    project = base / "project"
    shutil.copytree(DEMO, project / "fixtures" / "demo")
    with pytest.MonkeyPatch.context() as mp:
        import tests.conftest as conftest

        mp.setattr(conftest, "KEYWORDS", {"C02_funding": ["budget", "funding"], "E04_early_help": ["early help"]})
        mp.chdir(project)
        model = FakeModel(lambda r: keyword_answer(list(r.messages)), endpoint="local:keywords")  # type: ignore[arg-type]
        report = run_extraction(
            [Path("fixtures/demo")], Codebook.load("fixtures/demo/codebook.yaml"), model, Path("out/run"),
            metadata_path=Path("fixtures/demo/metadata.csv"), codebook_path=Path("fixtures/demo/codebook.yaml"),
        )
    assert report.ok, (report.errors, report.incomplete)
    manifest = json.loads((project / "out" / "run" / "manifest.json").read_text())
    assert manifest["inputs"][0]["file"] == "fixtures/demo/la01_northshire.txt"  # relative, as given
    shutil.move(str(project), str(base / "moved"))
    (base / "elsewhere").mkdir()
    return base / "moved"


def test_every_command_works_on_a_moved_project(moved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = moved / "out" / "run"
    monkeypatch.chdir(moved.parent / "elsewhere")
    assert not Path("fixtures/demo/la01_northshire.txt").exists()  # nothing found by the old path

    r = runner.invoke(app, ["reconcile", str(run), "--human", str(moved / "fixtures/demo/human_coding.csv"),
                            "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "agreement.json").read_text())["pairs"]
    r = runner.invoke(app, ["export", str(run)])
    assert r.exit_code == 0, r.output
    assert "5 sources" in r.output and (run / "project.qdpx").is_file()
    for fmt in ("csv", "json"):
        r = runner.invoke(app, ["export", str(run), "-f", fmt, "-o", str(run / fmt)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["synthesise", str(run), "--by", "care_trend"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(run), "--by", "care_trend"])
    assert r.exit_code == 0, r.output
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "was not found" not in html  # every transcript's text was found and shown
    session = ReviewSession(run, "tester")
    assert len(session.transcripts) == 5 and session.items
    summary = study_summary(run, FakeModel())
    assert summary.n_transcripts == 5 and summary.points


def test_the_manifest_is_typed_and_locates_files_from_the_run(moved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(moved.parent / "elsewhere")
    opened = open_run(moved / "out" / "run")
    assert isinstance(opened.manifest, Manifest)
    assert opened.manifest.strategy == "turn" and opened.manifest.counts["codings"] > 5
    cb_path = opened.codebook_path()
    assert cb_path is not None and cb_path.resolve() == (moved / "fixtures/demo/codebook.yaml").resolve()
    found = [opened.transcript_file(r)[1] for r in opened.results]
    assert all(p is not None and p.is_file() for p in found)
    assert opened.metadata["la01_northshire"]  # the sidecar moved with it, and is found too
    # Written back, the manifest keeps the very fields it was read with.
    raw = json.loads((moved / "out" / "run" / "manifest.json").read_text())
    assert opened.manifest.to_json() == raw


def test_a_folder_that_is_not_a_run_is_refused_naming_it(tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", str(tmp_path)])
    assert r.exit_code != 0
    assert "no manifest.json" in r.output and tmp_path.name in r.output
