"""The Batch API path against the test server's /v1/files and /v1/batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import DEMO, keyword_answer

from quallm.coding.extract import ExtractOptions, Extractor
from quallm.core.codebook import Codebook
from quallm.ingest.transcripts import load_transcript
from quallm.models.base import Completion, OutputMode
from quallm.models.fake import FakeModel
from quallm.models.fake_server import BatchBehaviour, OpenAITestServer, body_key
from quallm.models.openai_compat import OpenAICompatModel
from quallm.run.batch_api import (
    BatchAnswersModel,
    BatchInfo,
    batch_errors,
    chat_body,
    collect_unit_requests,
    run_batch_extraction,
    to_batch_jsonl,
)
from quallm.run.runner import run_extraction

INPUTS = [DEMO / "la01_northshire.txt", DEMO / "la02_eastbury.txt", DEMO / "la05_highfield.txt"]


def responder(body: dict[str, Any]) -> str:
    return keyword_answer(body["messages"])


def _is_summary(body: dict[str, Any]) -> bool:
    return "one key per code id" in body["messages"][0]["content"]


@pytest.fixture
def cb(tiny_codebook_yaml: Path) -> Codebook:
    return Codebook.load(tiny_codebook_yaml)


@pytest.mark.parametrize("mode", list(OutputMode))
def test_batch_body_is_what_the_backend_sends(cb: Codebook, mode: OutputMode) -> None:
    with OpenAITestServer(responder) as srv:
        m = OpenAICompatModel("test-model", base_url=srv.base_url, output_mode=mode)
        t = load_transcript(INPUTS[0])
        req = collect_unit_requests(Extractor(m, cb, ExtractOptions(strategy="chunk")), [t])[0]
        m.complete(req)
        assert srv.chat_requests[0] == chat_body(req)


def test_jsonl_lines_are_keyed_and_distinct(cb: Codebook) -> None:
    m = FakeModel(name="test-model", endpoint="api.openai.com")
    reqs = collect_unit_requests(Extractor(m, cb, ExtractOptions(strategy="turn")), [load_transcript(INPUTS[0])])
    lines = [json.loads(x) for x in to_batch_jsonl(reqs + reqs[:3]).decode().splitlines()]
    assert len(lines) == len(reqs) > 5
    assert [x["custom_id"] for x in lines] == [r.key() for r in reqs]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"} and {x["method"] for x in lines} == {"POST"}
    assert lines[0]["body"]["response_format"]["json_schema"]["strict"] is True


def test_answers_model_answers_by_key_and_forwards_the_rest() -> None:
    fallback = FakeModel(lambda r: '{"codes": []}', name="test-model")
    from quallm.models.base import ChatRequest, Message

    a = ChatRequest(model="test-model", endpoint="fake", messages=(Message(role="user", content="a"),))
    b = a.with_messages((Message(role="user", content="b"),))
    model = BatchAnswersModel({a.key(): Completion(content="from batch")}, fallback)
    assert model.complete(a).content == "from batch" and model.complete(b).content == '{"codes": []}'
    assert (model.from_batch, model.forwarded, len(fallback.requests)) == (1, 1, 1)


@pytest.mark.parametrize("strategy", ["turn", "chunk"])
def test_batch_run_equals_a_normal_run(tmp_path: Path, cb: Codebook, strategy: str) -> None:
    opts = ExtractOptions(strategy=strategy, chunk_tokens=400, concurrency=4)  # type: ignore[arg-type]
    with OpenAITestServer(responder, batch=BatchBehaviour(polls_before_complete=3, fail_every=4)) as srv:
        m = OpenAICompatModel("test-model", base_url=srv.base_url, timeout=5)
        normal = run_extraction(INPUTS, cb, m, tmp_path / "normal", options=opts)
        n_normal = len(srv.chat_requests)
        units = collect_unit_requests(Extractor(m, cb, opts), [load_transcript(p) for p in INPUTS])
        polls: list[str] = []
        res = run_batch_extraction(
            INPUTS, cb, m, tmp_path / "batch", options=opts, poll_interval=0, sleep=lambda _s: None,
            on_poll=lambda i: polls.append(i.status),
        )  # fmt: skip
        chat = srv.chat_requests[n_normal:]
        assert len(srv.state.batches) == 1 and len(srv.state.batch_requests) == len(units) > 5
        assert polls == ["in_progress", "in_progress", "completed"] and res.status == "finished"
    assert normal.ok and res.report is not None and res.report.ok
    failed = {body_key(line["body"]) for i, line in enumerate(srv.state.batch_requests, 1) if i % 4 == 0}
    # The yes/no checks of the proposed codings depend on the batch's answers, so they are sent
    # directly afterwards, as scoring requests (one token, logprobs).
    scoring = [b for b in chat if b.get("max_tokens") == 1]
    assert all(b.get("logprobs") for b in scoring)
    chat = [b for b in chat if b.get("max_tokens") != 1]
    direct_units = [b for b in chat if not _is_summary(b)]
    # Only the lines that failed in the batch were asked directly, each once; plus the summaries.
    assert sorted(body_key(b) for b in direct_units) == sorted(failed)
    assert len(chat) - len(direct_units) == len(INPUTS)
    assert res.from_batch == len(units) - len(failed) and res.sent_directly == len(chat) + len(scoring)
    assert res.failed_lines == len(failed)  # kept in batch_errors-<id>.jsonl; asked again directly (above)
    assert (tmp_path / "batch" / "codings.csv").read_text() == (tmp_path / "normal" / "codings.csv").read_text()
    assert (tmp_path / "batch" / "summaries.md").read_text() == (tmp_path / "normal" / "summaries.md").read_text()
    info = BatchInfo.load(tmp_path / "batch")
    assert info is not None and info.collected and info.request_counts["failed"] == len(failed)
    manifest = json.loads((tmp_path / "batch" / "manifest.json").read_text())
    assert manifest["model"]["batch"]["batch_id"] == info.batch_id


def test_submit_now_collect_later_and_nothing_twice(tmp_path: Path, cb: Codebook) -> None:
    opts = ExtractOptions(strategy="turn", concurrency=2)
    out = tmp_path / "run"
    with OpenAITestServer(responder, batch=BatchBehaviour(polls_before_complete=3)) as srv:
        m = OpenAICompatModel("test-model", base_url=srv.base_url, timeout=5)
        first = run_batch_extraction(INPUTS, cb, m, out, options=opts, wait=False)
        assert first.status == "pending" and first.report is None and not srv.chat_requests
        saved = BatchInfo.load(out)
        assert first.batch is not None and saved is not None and saved.batch_id == first.batch.batch_id
        # A later command (a new model object, as after a restart) resumes the same batch: no resubmission.
        m2 = OpenAICompatModel("test-model", base_url=srv.base_url, timeout=5)
        second = run_batch_extraction(INPUTS, cb, m2, out, options=opts, wait=False)
        assert second.status == "pending" and len(srv.state.batches) == 1 and len(srv.state.files) == 1
        third = run_batch_extraction(INPUTS, cb, m2, out, options=opts, wait=False)
        assert third.status == "finished" and third.report is not None and third.report.ok
        assert len(srv.state.batches) == 1 and all(
            _is_summary(b) or b.get("max_tokens") == 1 for b in srv.chat_requests
        )
        n_chat = len(srv.chat_requests)
        again = run_batch_extraction(INPUTS, cb, m2, out, options=opts)
        assert again.status == "finished" and again.batch is None  # everything done: no new batch
        assert again.report is not None and len(again.report.skipped) == len(INPUTS)
        assert len(srv.state.batches) == 1 and len(srv.chat_requests) == n_chat
    errors = batch_errors(out)
    assert errors == {}


def test_failed_lines_are_kept_in_the_run_dir(tmp_path: Path, cb: Codebook) -> None:
    opts = ExtractOptions(strategy="turn", concurrency=2, summary=False)
    with OpenAITestServer(responder, batch=BatchBehaviour(polls_before_complete=1, fail_every=3)) as srv:
        m = OpenAICompatModel("test-model", base_url=srv.base_url, timeout=5)
        res = run_batch_extraction(INPUTS[:1], cb, m, tmp_path / "r", options=opts, poll_interval=0)
        n_lines = len(srv.state.batch_requests)
        n_scoring = sum(b.get("max_tokens") == 1 for b in srv.chat_requests)
    files = sorted(p.name for p in (tmp_path / "r").glob("batch_*.jsonl"))
    assert [f.split("-")[0] for f in files] == ["batch_errors", "batch_output"]
    err_lines = (tmp_path / "r" / files[0]).read_text().splitlines()
    assert len(err_lines) == n_lines // 3 and '"status_code": 500' in err_lines[0]
    assert res.sent_directly == n_lines // 3 + n_scoring and res.report is not None and res.report.ok
