"""Integration: the OpenAI-compatible backend and the CLI against a local test server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.coding.reask import ask
from quallm.coding.schemas import TurnAnswer, turn_schema
from quallm.core.errors import NetworkDisabledError
from quallm.models.base import ChatRequest, Message, OutputMode
from quallm.models.fake_server import Faults, OpenAITestServer
from quallm.models.openai_compat import OpenAICompatModel

runner = CliRunner()


def responder(body: dict[str, Any]) -> str:
    return keyword_answer(body["messages"])


def _request(model: OpenAICompatModel) -> ChatRequest:
    return ChatRequest(
        model=model.name,
        endpoint=model.endpoint,
        output_mode=model.output_mode,
        messages=(
            Message(role="system", content='Reply {"codes": [...]}'),
            Message(
                role="user",
                content="Interviewer's question: x\n\nAnswer to code (R), sentence by sentence:\n"
                "[1] The budget is tiny.",
            ),
        ),
        json_schema=turn_schema(["C_money", "E_help"], 3, 1),
    )


def test_strict_json_schema_sent_and_no_key_in_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUALLM_TEST_KEY", "dummy-test-key")
    with OpenAITestServer(responder) as srv:
        m = OpenAICompatModel("test-model", base_url=srv.base_url, api_key_env="QUALLM_TEST_KEY")
        ans, _completion, _attempts, usage = ask(m, _request(m), TurnAnswer)
        body = srv.chat_requests[0]
        assert body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["strict"]
        assert [c.code_id for c in ans.codes] == ["C_money"] and usage.prompt_tokens > 0
        assert srv.state.headers[0]["authorization"] == "Bearer dummy-test-key"
        assert "127.0.0.1" in m.endpoint and "sk-" not in m.endpoint


def test_falls_back_to_json_object_with_schema_in_prompt() -> None:
    with OpenAITestServer(responder, Faults(refuse_json_schema=True)) as srv:
        m = OpenAICompatModel("test-model", base_url=srv.base_url)
        ans, *_ = ask(m, _request(m), TurnAnswer)
        assert m.output_mode == OutputMode.JSON_OBJECT
        second = srv.chat_requests[1]
        assert second["response_format"] == {"type": "json_object"}
        assert '"maxItems":3' in second["messages"][0]["content"]  # the schema went into the prompt
        assert [c.code_id for c in ans.codes] == ["C_money"]


def test_invalid_json_is_reasked_and_rate_limit_retried_with_retry_after() -> None:
    with OpenAITestServer(responder, Faults(invalid_json=1, rate_limited=1, retry_after=0.01, server_error=1)) as srv:
        m = OpenAICompatModel("test-model", base_url=srv.base_url)
        ans, _, attempts, _ = ask(m, _request(m), TurnAnswer)
        assert attempts == 2  # one re-ask for the invalid JSON; the 429 and 500 were transport retries
        assert len(srv.chat_requests) == 4 and [c.code_id for c in ans.codes] == ["C_money"]
        assert len(srv.chat_requests[-1]["messages"]) == 4  # re-ask carries the bad answer and the errors


def test_remote_requests_are_blocked_in_tests() -> None:
    m = OpenAICompatModel("gpt-4o-mini", base_url="https://api.example.invalid/v1", api_key_env="PATH")
    with pytest.raises(NetworkDisabledError):
        m.complete(_request(m))


def _demo_codebook(tmp_path: Path) -> Path:
    p = tmp_path / "cb.yaml"
    p.write_text(
        "name: Tiny\ncodes:\n"
        "  - {id: C_money, kind: challenge, label: Funding, definition: Money is short.}\n"
        "  - {id: E_help, kind: enabler, label: Early help, definition: Early help works.}\n",
        encoding="utf-8",
    )
    return p


def test_cli_extract_end_to_end_resume_and_bad_file(
    tmp_path: Path, sample_txt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "dummy-secret-value-for-test")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    meta = tmp_path / "meta.csv"
    meta.write_text("transcript_id,care_trend\nla_sample,decreasing\n", encoding="utf-8")
    out = tmp_path / "run"
    with OpenAITestServer(responder) as srv:
        args = [
            "extract",
            str(sample_txt),
            str(tmp_path / "empty.txt"),
            str(tmp_path / "notes.pdf"),
            "--codebook",
            str(_demo_codebook(tmp_path)),
            "--out",
            str(out),
            "--model",
            "test-model",
            "--base-url",
            srv.base_url,
            "--metadata",
            str(meta),
            "--record",
            str(tmp_path / "rec"),
        ]
        r1 = runner.invoke(app, args)
        n_first = len(srv.chat_requests)
        assert r1.exit_code == 1, r1.output  # two unreadable files -> non-zero exit, the rest done
        assert "empty.txt: file is empty" in r1.output and "unknown extension '.pdf'" in r1.output
        assert " tokens" in r1.output  # the progress bar reports tokens used so far
        r2 = runner.invoke(app, args)
        assert len(srv.chat_requests) == n_first  # resume: the finished transcript is not sent again
        assert "already done" in r2.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "test-model" and manifest["model"]["endpoint_host"] == "127.0.0.1"
    assert manifest["codebook"]["hash"] and manifest["prompts"]["code_chunk"]
    assert manifest["counts"]["input_errors"] == 2 and manifest["counts"]["codings"] == 2
    result = json.loads((out / "results" / "la_sample.json").read_text())
    assert result["complete"] and result["metadata"] == {"care_trend": "decreasing"}
    rows = (out / "codings.csv").read_text().splitlines()
    assert rows[0].startswith("transcript_id,turn_index,speaker,code_id,start,end,quote,alignment")
    assert len(rows) == 3
    assert "Honestly the budget is the big thing" in (out / "summaries.md").read_text()
    recs = list((tmp_path / "rec").glob("*.json"))
    assert recs and all("authorization" not in r.read_text().lower() for r in recs)
    written = [*recs, *out.rglob("*")]
    assert all("dummy-secret-value" not in f.read_text(errors="ignore") for f in written if f.is_file())


def test_cli_replay_reproduces_and_reports_miss(tmp_path: Path, sample_txt: Path) -> None:
    cb = _demo_codebook(tmp_path)
    with OpenAITestServer(responder) as srv:
        r = runner.invoke(
            app,
            [
                "extract",
                str(sample_txt),
                "-c",
                str(cb),
                "-o",
                str(tmp_path / "a"),
                "-m",
                "test-model",
                "--base-url",
                srv.base_url,
                "--record",
                str(tmp_path / "rec"),
            ],
        )
        assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["extract", str(sample_txt), "-c", str(cb), "-o", str(tmp_path / "b"), "--replay", str(tmp_path / "rec")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "codings.csv").read_text() == (tmp_path / "b" / "codings.csv").read_text()
    changed = tmp_path / "changed.txt"
    changed.write_text(sample_txt.read_text().replace("transformative", "a lifeline"), encoding="utf-8")
    r = runner.invoke(
        app, ["extract", str(changed), "-c", str(cb), "-o", str(tmp_path / "c"), "--replay", str(tmp_path / "rec")]
    )
    assert r.exit_code == 1
    result = json.loads((tmp_path / "c" / "results" / "changed.json").read_text())
    miss = [f for f in result["failures"] if f["error_type"] == "ReplayMissError"]
    assert miss and "-Respondent: Our early help offer has been transformative" not in miss[0]["message"]
    assert "a lifeline" in miss[0]["message"] and "transformative" in miss[0]["message"]


def test_cli_bad_codebook_is_one_line(tmp_path: Path, sample_txt: Path) -> None:
    bad = tmp_path / "cb.yaml"
    bad.write_text("codes:\n  - {id: X, kind: barrier, label: x, definition: y}\n", encoding="utf-8")
    r = runner.invoke(
        app,
        [
            "extract",
            str(sample_txt),
            "-c",
            str(bad),
            "-o",
            str(tmp_path / "o"),
            "--model",
            "m",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
    )
    assert r.exit_code == 2 and "codes[0] (id 'X'): kind 'barrier' is not declared" in r.output


def test_transcripts_run_concurrently_under_one_cap(tmp_path: Path) -> None:
    import threading
    import time

    from tests.conftest import SAMPLE

    from quallm.coding.extract import ExtractOptions
    from quallm.core.codebook import Codebook
    from quallm.run.runner import run_extraction

    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(body: dict[str, Any]) -> str:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return responder(body)

    inputs = []
    for i in range(6):  # six short transcripts of three answers each
        p = tmp_path / f"t{i}.txt"
        p.write_text(SAMPLE, encoding="utf-8")
        inputs.append(p)
    with OpenAITestServer(slow) as srv:
        m = OpenAICompatModel("test-model", base_url=srv.base_url)
        report = run_extraction(
            inputs,
            Codebook.load(_demo_codebook(tmp_path)),
            m,
            tmp_path / "run",
            options=ExtractOptions(strategy="turn", summary=False, concurrency=5),
        )
    assert report.ok and sorted(report.done) == [f"t{i}" for i in range(6)]
    assert 3 < state["max"] <= 5  # more than one transcript's three answers at once, never over the cap
