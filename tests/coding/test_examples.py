"""Worked examples from the coded sample (extract --examples-from): selection, requests, fingerprints."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import DEMO, keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.coding.examples import ExampleBank, WorkedUnit, nearest, render_examples
from quallm.coding.extract import ExtractOptions, Extractor, fingerprint, proposals_fingerprint
from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError
from quallm.ingest.transcripts import load_transcript
from quallm.models.fake import FakeModel
from quallm.models.fake_server import OpenAITestServer
from quallm.outputs.examples_from import load_example_bank, read_examples

runner = CliRunner()

DEMO_IDS = ["la01_northshire", "la02_eastbury", "la03_westmoor", "la04_southvale", "la05_highfield"]


class WordsEmbedder:
    """A fake embedder: hashed bag of words, L2-normalised (texts sharing words are similar)."""

    name = "words (test)"

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, int(hashlib.sha256(w.encode()).hexdigest(), 16) % 64] += 1.0
        return out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)


def _demo_transcripts() -> list:
    return [load_transcript(next(DEMO.glob(f"{i}.*"))) for i in DEMO_IDS]


def _coder_a_csv(tmp_path: Path, ids: set[str]) -> Path:
    """Coder A's rows of the demo's human coding, for the transcripts ``ids``."""
    with (DEMO / "human_coding.csv").open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = tmp_path / "sample.csv"
    with out.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["coder"] == "coder_a" and r["transcript_id"] in ids)
    return out


def test_nearest_is_most_similar_first_and_never_the_same_transcript() -> None:
    bank = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    tids = ["a", "b", "b", "c"]
    q = np.array([1.0, 0.0], dtype=np.float32)
    assert nearest(q, bank, tids, exclude="x", k=3) == [0, 3, 1]  # the tie (rows 0 and 3) keeps bank order
    assert nearest(q, bank, tids, exclude="a", k=3) == [3, 1, 2]
    assert nearest(q, bank, tids, exclude="b", k=5) == [0, 3]  # fewer than k allowed: all of them
    assert nearest(q, bank, tids, exclude="a", k=0) == []


def test_worked_units_keep_uncoded_turns_as_none(tmp_path: Path) -> None:
    transcripts = _demo_transcripts()
    cb = Codebook.load(DEMO / "codebook.yaml")
    units, problems = read_examples(_coder_a_csv(tmp_path, {"la01_northshire"}), transcripts, cb)
    assert not problems
    t = transcripts[0]
    assert {u.transcript_id for u in units} == {"la01_northshire"}
    assert [u.text for u in units] == [turn.text for turn in t.coded_turns()]
    human = {(r["turn_index"], r["code_id"]) for r in csv.DictReader((tmp_path / "sample.csv").open())}
    for turn, u in zip(t.coded_turns(), units, strict=True):
        assert set(u.codes) == {c for i, c in human if int(i) == turn.index}
    assert any(not u.codes for u in units) and any(u.codes for u in units)


def test_examples_file_naming_transcripts_not_in_the_run_says_so_in_one_line(tmp_path: Path) -> None:
    sample = _coder_a_csv(tmp_path, {"la01_northshire", "la02_eastbury"})
    only = [p for p in DEMO.iterdir() if p.stem in ("la01_northshire", "la03_westmoor")]
    loaded = load_example_bank(sample, only, Codebook.load(DEMO / "codebook.yaml"), embedder=WordsEmbedder())
    assert loaded.transcripts == ["la01_northshire"]
    assert len(loaded.problems) == 1 and "la02_eastbury" in loaded.problems[0]
    assert loaded.sha256 == hashlib.sha256(sample.read_bytes()).hexdigest()


def test_several_coders_need_one_chosen() -> None:
    cb = Codebook.load(DEMO / "codebook.yaml")
    with pytest.raises(ConfigError, match="--examples-coder"):
        read_examples(DEMO / "human_coding.csv", _demo_transcripts(), cb)
    units, _ = read_examples(DEMO / "human_coding.csv", _demo_transcripts(), cb, coder="coder_b")
    assert units


def _keyword_model() -> FakeModel:
    return FakeModel(lambda r: keyword_answer(list(r.messages)))  # type: ignore[arg-type]


def test_turn_request_holds_examples_in_the_user_message_only(tmp_path: Path) -> None:
    transcripts = _demo_transcripts()
    cb = Codebook.load(DEMO / "codebook.yaml")
    sample = _coder_a_csv(tmp_path, {"la01_northshire", "la02_eastbury"})
    units, _ = read_examples(sample, transcripts, cb)
    bank = ExampleBank(units, WordsEmbedder(), k=3)
    opts = ExtractOptions(strategy="turn")
    plain = Extractor(_keyword_model(), cb, opts)
    shown = Extractor(_keyword_model(), cb, opts.model_copy(update={"examples_sha256": "ab" * 32}), bank)
    by_text = {u.text: u for u in units}
    for t in transcripts:
        for seg in [s for ch in plain._chunk(t, opts.unit_tokens) for s in ch.coded_segments]:
            a, b = plain.turn_request(t, seg), shown.turn_request(t, seg)
            assert a.messages[0] == b.messages[0]  # the system message: KV prefix reuse holds
            examples = bank.examples_for(t.id, seg.text)
            assert len(examples) == 3 and all(e.transcript_id != t.id for e in examples)
            assert b.messages[1].content == render_examples(examples) + a.messages[1].content
            for e in examples:
                assert by_text[e.text] is e
                codes = ", ".join(e.codes) if e.codes else "none"
                assert f"Human codes: {codes}" in b.messages[1].content
            # The transcript's own coded turns never appear as examples.
            own = {turn.text for turn in t.coded_turns()}
            assert not own & {e.text for e in examples}


def test_without_examples_requests_and_fingerprints_are_as_before() -> None:
    t = load_transcript(DEMO / "la01_northshire.txt")
    cb = Codebook.load(DEMO / "codebook.yaml")
    m = FakeModel()
    # Pinned (re-pinned when the summary prompt and the none, max-codes and min-words options came):
    # the examples options add nothing to the fingerprint when unused.
    assert fingerprint(t, cb, m, ExtractOptions()) == "e8a0f7e260ba8c936a50d48c0e1855b8"
    assert proposals_fingerprint(t, cb, m, ExtractOptions(min_confidence=0)) == "4d763b844b050c42de29987cdb328aaf"
    with_ex = ExtractOptions(examples_sha256="ab" * 32)
    assert fingerprint(t, cb, m, with_ex) != fingerprint(t, cb, m, ExtractOptions())
    assert proposals_fingerprint(t, cb, m, with_ex) != proposals_fingerprint(t, cb, m, ExtractOptions())
    e = Extractor(m, cb, ExtractOptions(strategy="turn"))
    seg = e._chunk(t, 1200)[0].coded_segments[0]
    assert "Worked examples" not in e.turn_request(t, seg).messages[1].content


def test_bank_and_hash_go_together() -> None:
    cb = Codebook.load(DEMO / "codebook.yaml")
    bank = ExampleBank([WorkedUnit("x", "R", "text", ())], WordsEmbedder())
    with pytest.raises(ConfigError):
        Extractor(FakeModel(), cb, ExtractOptions(strategy="turn"), bank)
    with pytest.raises(ConfigError):
        Extractor(FakeModel(), cb, ExtractOptions(strategy="turn", examples_sha256="ab" * 32))


def test_cli_extract_with_examples_records_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.conftest as conftest

    import quallm.models.embeddings

    monkeypatch.setattr(quallm.models.embeddings, "MiniLMEmbedder", WordsEmbedder)
    monkeypatch.setattr(conftest, "KEYWORDS", {"C02_funding": ["budget", "funding"], "E04_early_help": ["early help"]})
    sample = _coder_a_csv(tmp_path, {"la01_northshire", "la02_eastbury"})
    inputs = [str(next(DEMO.glob(f"{i}.*"))) for i in DEMO_IDS[:3]]
    out = tmp_path / "run"
    seen: list[str] = []

    def answer(body: dict[str, Any]) -> str:
        seen.append(body["messages"][1]["content"])
        return keyword_answer(body["messages"])

    with OpenAITestServer(answer) as srv:
        args = ["extract", *inputs, "-c", str(DEMO / "codebook.yaml"), "-o", str(out), "-m", "test-model",
                "--base-url", srv.base_url, "--strategy", "turn", "--no-summary", "--no-cache",
                "--examples-from", str(sample)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert seen and all(m.startswith("Worked examples:") for m in seen)
        manifest = json.loads((out / "manifest.json").read_text())
        digest = hashlib.sha256(sample.read_bytes()).hexdigest()
        assert manifest["parameters"]["examples_sha256"] == digest
        assert manifest["examples"]["sha256"] == digest
        assert manifest["examples"]["transcripts"] == ["la01_northshire", "la02_eastbury"]
        # Resumed with the same examples: nothing to do; with other examples: coded again.
        again = runner.invoke(app, args)
        assert "0 coded, 3 already done" in again.output, again.output
        sample.write_text(sample.read_text() + "\n", encoding="utf-8")
        changed = runner.invoke(app, args)
        assert "3 coded, 0 already done" in changed.output, changed.output
