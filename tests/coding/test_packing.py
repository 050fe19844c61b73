"""Chunk strategy packing: short transcripts share a request, each coding stays in its own transcript."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import DEMO, SAMPLE, keyword_answer

from quallm.coding.extract import ExtractOptions, Extractor, plan_packs
from quallm.core.codebook import Codebook
from quallm.core.transcript import Transcript
from quallm.ingest.transcripts import load_transcript, load_transcripts
from quallm.models.base import ChatRequest, Completion, Usage
from quallm.models.fake import FakeModel
from quallm.models.fake_server import OpenAITestServer
from quallm.models.openai_compat import OpenAICompatModel
from quallm.run.batch_api import job_requests
from quallm.run.estimate import estimate
from quallm.run.runner import run_extraction


def _corpus(tmp_path: Path) -> list[Transcript]:
    texts = {
        "la_a": SAMPLE,
        "la_b": SAMPLE.replace("early help offer", "family support service").replace("budget", "money"),
        "la_c": "Interviewer: Anything else?\n\nRespondent: Honestly the funding is the hardest part of it.\n",
    }
    for name, text in texts.items():
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    return [load_transcript(tmp_path / f"{n}.txt") for n in texts]


def _responder(request: ChatRequest) -> str:
    return keyword_answer(list(request.messages))


def test_plan_packs_fills_up_to_the_budget_in_order() -> None:
    assert plan_packs([100, 200, 300, None, 50, 50], 300) == [[0, 1], [2], [3], [4, 5]]
    assert plan_packs([500], 300) == [[0]]  # a single transcript may be larger than the budget
    assert plan_packs([], 300) == []


def test_packed_codings_are_grounded_in_their_own_transcripts(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    transcripts = _corpus(tmp_path)
    cb = Codebook.load(tiny_codebook_yaml)
    model = FakeModel(_responder)
    extractor = Extractor(model, cb, ExtractOptions(strategy="chunk", summary=False))
    assert all(extractor.pack_size(t) for t in transcripts)
    results = extractor.extract_pack(transcripts)
    assert len(model.requests) == 1  # one shared request
    body = model.requests[0].messages[1].content
    assert "=== Interview 1 of 3: la_a ===" in body and "=== Interview 3 of 3: la_c ===" in body
    by_id = {r.transcript_id: r for r in results}
    assert by_id["la_a"].packed_with == ["la_b", "la_c"]
    for t in transcripts:
        r = by_id[t.id]
        assert r.complete and r.codings
        for c in r.codings:
            assert c.transcript_id == t.id and t.text[c.start : c.end] == c.quote
    assert {c.code_id for c in by_id["la_b"].codings} == {"C_money", "E_help"}
    assert {c.code_id for c in by_id["la_c"].codings} == {"C_money"}
    # The same codings as coding each transcript alone.
    alone = Extractor(FakeModel(_responder), cb, ExtractOptions(strategy="chunk", summary=False, pack=False))
    for t in transcripts:
        solo = alone.extract(t)
        assert [(c.code_id, c.start, c.end) for c in solo.codings] == [
            (c.code_id, c.start, c.end) for c in by_id[t.id].codings
        ]


def test_usage_is_shared_out_and_the_call_counted_once(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    transcripts = _corpus(tmp_path)

    def answer(request: ChatRequest) -> Completion:
        return Completion(content=_responder(request), usage=Usage(prompt_tokens=1001, completion_tokens=99))

    opts = ExtractOptions(strategy="chunk", summary=False)
    extractor = Extractor(FakeModel(answer), Codebook.load(tiny_codebook_yaml), opts)
    results = extractor.extract_pack(transcripts)
    assert sum(r.usage.prompt_tokens for r in results) == 1001
    assert sum(r.usage.completion_tokens for r in results) == 99
    assert [r.calls for r in results] == [1, 0, 0]


def test_a_quote_from_another_interview_is_not_moved_there(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    transcripts = _corpus(tmp_path)

    def misattribute(request: ChatRequest) -> str:
        # Segment 2 is la_a's respondent; the quote is la_c's words.
        quote = "Honestly the funding is the hardest part of it."
        coding = {"segment": 2, "code_id": "C_money", "quote": quote, "rationale": "r", "confidence": 0.9}
        return json.dumps({"codings": [coding]})

    opts = ExtractOptions(strategy="chunk", summary=False)
    extractor = Extractor(FakeModel(misattribute), Codebook.load(tiny_codebook_yaml), opts)
    results = {r.transcript_id: r for r in extractor.extract_pack(transcripts)}
    assert results["la_a"].codings == [] and len(results["la_a"].ungrounded) == 1
    assert results["la_c"].codings == []


def test_a_failed_pack_falls_back_to_one_request_per_transcript(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    transcripts = _corpus(tmp_path)

    def no_packs(request: ChatRequest) -> str:
        return "garbage" if "=== Interview" in request.messages[1].content else _responder(request)

    model = FakeModel(no_packs)
    extractor = Extractor(model, Codebook.load(tiny_codebook_yaml), ExtractOptions(strategy="chunk", summary=False))
    results = extractor.extract_pack(transcripts)
    assert all(r.complete and r.codings and r.packed_with == [] for r in results)
    assert len(model.requests) == 3 + 3  # the pack and its re-asks, then one each


def test_run_packs_short_transcripts_and_estimate_agrees(tmp_path: Path) -> None:
    cb = Codebook.load(DEMO / "codebook.yaml")
    keywords = {"C02_funding": ["budget", "overspent"], "E04_early_help": ["early help"]}

    def responder(body: dict[str, Any]) -> str:
        import tests.conftest as conftest

        saved = conftest.KEYWORDS
        conftest.KEYWORDS = keywords
        try:
            return keyword_answer(body["messages"])
        finally:
            conftest.KEYWORDS = saved

    opts = ExtractOptions(strategy="chunk", chunk_tokens=12000, summary=False)
    with OpenAITestServer(responder) as srv:
        model = OpenAICompatModel("gpt-4o-mini", base_url=srv.base_url)
        report = run_extraction([DEMO], cb, model, tmp_path / "run", options=opts)
        assert report.ok, (report.errors, report.incomplete)
        assert len(srv.chat_requests) == 1  # five demo interviews, one request
        model_name_requests = len(job_requests(Extractor(model, cb, opts), _demo()))
    assert model_name_requests == 1
    est = estimate(_demo(), cb, "gpt-4o-mini", opts)
    assert est.requests == 1 and sum(t.units for t in est.transcripts) == 5
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "results").glob("*.json"))]
    assert len(results) == 5 and all(r["packed_with"] for r in results)
    assert any(r["codings"] for r in results)
    # Without packing: one request per interview.
    opts_alone = opts.model_copy(update={"pack": False})
    assert estimate(_demo(), cb, "gpt-4o-mini", opts_alone).requests == 5


def _demo() -> list[Transcript]:
    return [t for t in load_transcripts([DEMO]) if isinstance(t, Transcript)]


def test_resume_after_a_partly_saved_pack_sends_nothing_again(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    from quallm.models.cache import CachedModel, ResponseCache

    _corpus(tmp_path)
    inputs = [tmp_path / f"{n}.txt" for n in ("la_a", "la_b", "la_c")]
    cb = Codebook.load(tiny_codebook_yaml)
    opts = ExtractOptions(strategy="chunk", chunk_tokens=3000)
    cache = ResponseCache(tmp_path / "cache.sqlite3")

    def responder(body: dict[str, Any]) -> str:
        return keyword_answer(body["messages"])

    with OpenAITestServer(responder) as srv:
        model = CachedModel(OpenAICompatModel("test-model", base_url=srv.base_url), cache)
        first = run_extraction(inputs, cb, model, tmp_path / "run", options=opts)
        assert first.ok and len(srv.chat_requests) == 1 + 3  # one pack, three summaries
        codings = (tmp_path / "run" / "codings.csv").read_text()
        (tmp_path / "run" / "results" / "la_b.json").unlink()  # as if killed while saving the pack
        again = run_extraction(inputs, cb, model, tmp_path / "run", options=opts)
        assert again.ok and again.skipped == ["la_a", "la_c"] and again.done == ["la_b"]
        assert len(srv.chat_requests) == 4  # the same pack, answered from the cache
    assert (tmp_path / "run" / "codings.csv").read_text() == codings
    cache.close()


def test_cli_remote_default_packs_and_no_pack_does_not(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    from typer.testing import CliRunner

    from quallm.cli import app

    def responder(body: dict[str, Any]) -> str:
        return keyword_answer(body["messages"])

    base = ["extract", str(DEMO), "-c", str(tiny_codebook_yaml), "-m", "test-model", "--no-summary", "--no-cache"]
    with OpenAITestServer(responder) as srv:
        r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "a"), "--base-url", srv.base_url])
        assert r.exit_code == 0, r.output
        assert len(srv.chat_requests) == 1  # 12,000 transcript tokens per request: the five interviews in one
        assert "=== Interview 5 of 5" in srv.chat_requests[0]["messages"][1]["content"]
        r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "b"), "--base-url", srv.base_url, "--no-pack"])
        assert r.exit_code == 0, r.output
        assert len(srv.chat_requests) == 1 + 5
