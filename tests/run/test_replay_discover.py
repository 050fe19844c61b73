"""Replay of a real discovery run of the embedded 1.5B model over the demo interviews.

The recordings (fixtures/recordings/discover) were made by ``quallm discover fixtures/demo ... --record``
with the default local model, then the model merge step was recorded the same way; see
fixtures/recordings/README.md. Replaying them runs open coding, grounding, consolidation with the real
embedding model and the outputs on real model answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import DEMO, ROOT

from quallm.coding.discovery import DiscoverOptions
from quallm.coding.extract import ExtractOptions, Extractor
from quallm.core.codebook import Codebook
from quallm.ingest.transcripts import load_transcript
from quallm.models.embeddings import MiniLMEmbedder
from quallm.models.fake import FakeModel
from quallm.models.recording import ReplayModel
from quallm.run.discovery import DiscoveryReport, run_discovery

RECORDINGS = ROOT / "fixtures" / "recordings" / "discover"
FOCUS = "Safely reducing the need for children to enter care"


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def _run(out: Path, embedder: MiniLMEmbedder, merge: bool = False) -> tuple[DiscoveryReport, ReplayModel]:
    model = ReplayModel(RECORDINGS)
    # As `quallm discover` runs the in-process model: at least two themes per chunk.
    opts = DiscoverOptions(
        focus=FOCUS, min_themes_per_chunk=2, merge="embedding+model" if merge else "embedding"
    )
    return run_discovery([DEMO], model, out, embedder, options=opts), model


def test_replayed_discovery_grounds_every_quote_and_drafts_a_usable_codebook(
    tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    report, _ = _run(tmp_path / "disc", embedder)
    assert report.ok, (report.errors, report.incomplete)
    out = tmp_path / "disc"
    texts = {p.stem: load_transcript(p).text for p in DEMO.iterdir() if p.stem.startswith("la")}
    data = json.loads((out / "themes.json").read_text())
    assert data["info"]["model"].startswith("qwen2.5-coder-1.5b")
    n_candidates = 0
    for f in sorted((out / "candidates").glob("*.json")):
        cs = json.loads(f.read_text())
        n_candidates += len(cs["candidates"])
        for c in cs["candidates"]:
            for q in c["quotes"]:
                assert texts[c["transcript_id"]][q["start"] : q["end"]] == q["text"]
        for u in cs["ungrounded"]:  # what the model quoted wrongly is logged, and found nowhere in the outputs
            assert u["quote"] not in (out / "themes.md").read_text()
    assert n_candidates == data["info"]["candidates"] > 0
    for t in data["themes"]:
        assert t["prevalence"] == len(t["transcripts"]) >= 1
        for q in t["quotes"]:
            assert texts[q["transcript_id"]][q["quote"]["start"] : q["quote"]["end"]] == q["quote"]["text"]
    cb = Codebook.load(out / "codebook.draft.yaml")
    assert cb.codes and all(c.examples for c in cb.codes)
    t = load_transcript(DEMO / "la01_northshire.txt")
    assert Extractor(FakeModel(), cb, ExtractOptions(strategy="chunk", summary=False)).extract(t).complete
    md = (out / "themes.md").read_text()
    assert all(t["label"] in md for t in data["themes"])


def test_replayed_model_merge_step(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    plain, _ = _run(tmp_path / "a", embedder)
    merged, model = _run(tmp_path / "b", embedder, merge=True)
    assert model.unused() == []  # the open coding and the merge step were all recorded
    assert merged.ok and merged.notes == []
    # The merge step only joins: fewer or as many themes, the same candidates.
    assert len(merged.themes) <= len(plain.themes)
    assert merged.candidates == plain.candidates
