"""Replay of a real run of the embedded 1.5B model over the demo interviews (fixtures/recordings/demo).

The recordings were made by ``quallm extract fixtures/demo ... --record fixtures/recordings/demo`` with
the default local model; see fixtures/recordings/README.md. Replaying them exercises the whole pipeline
on real model output, then reconciles, synthesises, reports and exports the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import DEMO, ROOT

from quallm.analysis.reconciling import reconcile_run
from quallm.core.codebook import Codebook
from quallm.ingest.qdpx import read_qdpx
from quallm.ingest.transcripts import load_transcript
from quallm.models.recording import ReplayModel
from quallm.outputs.qdpx import export_run
from quallm.outputs.report import render_report
from quallm.run.runner import run_extraction

RECORDINGS = ROOT / "fixtures" / "recordings" / "demo"


@pytest.fixture(scope="module")
def replayed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReplayModel]:
    model = ReplayModel(RECORDINGS)
    out = tmp_path_factory.mktemp("replay") / "run"
    report = run_extraction(
        [DEMO], Codebook.load(DEMO / "codebook.yaml"), model, out,
        metadata_path=DEMO / "metadata.csv", codebook_path=DEMO / "codebook.yaml",
    )
    assert report.ok, (report.errors, report.incomplete)
    return out, model


def test_replay_uses_every_recording_and_grounds_every_coding(replayed_run: tuple[Path, ReplayModel]) -> None:
    out, model = replayed_run
    assert model.unused() == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["strategy"] == "turn" and manifest["model"]["name"].startswith("qwen2.5-coder-1.5b")
    n = 0
    for f in sorted((out / "results").glob("*.json")):
        result = json.loads(f.read_text())
        src = next(DEMO.glob(result["transcript_id"] + ".*"))
        t = load_transcript(src)
        assert result["complete"] and result["summary"]["narrative"]
        for c in result["codings"]:
            assert t.text[c["start"] : c["end"]] == c["quote"]
            assert not t.turns[c["turn_index"]].is_interviewer
            n += 1
        assert [p["kind"] for p in result["summary"]["points"]] == sorted(
            (p["kind"] for p in result["summary"]["points"]), key=["challenge", "enabler"].index
        )  # challenges first, as before categories were configurable
        for p in result["summary"]["points"]:
            for q in p["quotes"]:
                assert t.text[q["start"] : q["end"]] == q["text"]
    assert n == manifest["counts"]["codings"] > 20


def test_reconcile_report_and_export_on_the_replayed_run(replayed_run: tuple[Path, ReplayModel]) -> None:
    out, _ = replayed_run
    report, problems = reconcile_run(out, [DEMO / "human_coding.csv"], n_boot=200)
    assert problems == []
    kinds = {p.kind for p in report.pairs}
    assert kinds == {"human-human", "machine-human"}
    machine_vs_a = next(p for p in report.pairs if p.kind == "machine-human" and "coder_a" in p.pair)
    assert machine_vs_a.micro.kappa.value is not None and machine_vs_a.micro.kappa.value > 0.3
    assert (out / "agreement.csv").is_file() and (out / "disagreements.csv").is_file()
    html = render_report(out, by="care_trend").read_text(encoding="utf-8")
    assert "Agreement" in html and "coder_a" in html
    exported = export_run(out, out / "project.qdpx")
    assert exported.skipped == []
    back = read_qdpx(out / "project.qdpx")
    assert len(back.codings) == exported.selections
