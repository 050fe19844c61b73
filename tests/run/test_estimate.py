"""Cost estimates: the exact unit requests, counted with the model's tokenizer, priced from a dated table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import DEMO

from quallm.coding.extract import ExtractOptions
from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError
from quallm.ingest.tokenizers import tokenizer_for_model
from quallm.ingest.transcripts import load_transcript
from quallm.models.base import ChatRequest, Message
from quallm.models.fake_server import OpenAITestServer
from quallm.models.openai_compat import OpenAICompatModel
from quallm.run.estimate import Assumptions, estimate, load_prices, prompt_tokens
from quallm.run.runner import run_extraction

INPUTS = [DEMO / "la01_northshire.txt", DEMO / "la02_eastbury.txt"]


@pytest.fixture
def cb() -> Codebook:
    return Codebook.load(DEMO / "codebook.yaml")


def _is_summary(body: dict[str, Any]) -> bool:
    return body["response_format"]["json_schema"]["name"] == "summary"


@pytest.mark.parametrize("strategy", ["chunk", "turn"])
def test_counts_exactly_the_requests_a_run_sends(tmp_path: Path, cb: Codebook, strategy: str) -> None:
    opts = ExtractOptions(strategy=strategy, chunk_tokens=800, summary=False)  # type: ignore[arg-type]
    ts = [load_transcript(p) for p in INPUTS]
    with OpenAITestServer() as srv:  # schema-minimal answers: always valid, so no re-asks
        m = OpenAICompatModel("gpt-4o-mini", base_url=srv.base_url)
        run_extraction(INPUTS, cb, m, tmp_path / "run", options=opts)
        est = estimate(ts, cb, "gpt-4o-mini", opts, endpoint=m.endpoint)
        bodies = [b for b in srv.chat_requests if not _is_summary(b)]
    assert est.requests == len(bodies) == sum(t.units for t in est.transcripts) and est.strategy == strategy
    tok = tokenizer_for_model("gpt-4o-mini")
    sent = sum(
        3 + sum(3 + tok.count(x["role"]) + tok.count(x["content"]) for x in b["messages"])
        + tok.count(json.dumps(b["response_format"]["json_schema"]["schema"], separators=(",", ":")))
        for b in bodies
    )  # fmt: skip
    assert est.prompt_tokens == sent  # the same requests, counted the same way


def test_prompt_tokens_counts_the_schema_in_the_prompt_for_json_object() -> None:
    from quallm.models.base import OutputMode

    tok = tokenizer_for_model("gpt-4o")
    msgs = (Message(role="system", content="Code it."), Message(role="user", content="Text"))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    strict = ChatRequest(model="gpt-4o", endpoint="x", messages=msgs, json_schema=schema)
    obj = strict.model_copy(update={"output_mode": OutputMode.JSON_OBJECT})
    none = strict.model_copy(update={"json_schema": None})
    assert prompt_tokens(none, tok) < prompt_tokens(strict, tok)
    assert prompt_tokens(obj, tok) > prompt_tokens(none, tok)


def test_cost_summary_and_assumptions(cb: Codebook) -> None:
    ts = [load_transcript(p) for p in INPUTS]
    est = estimate(ts, cb, "gpt-4o-mini-2024-07-18")
    assert est.price_model == "gpt-4o-mini" and est.price is not None and est.cost_usd is not None
    expected = (est.prompt_tokens * est.price.input + est.completion_tokens * est.price.output) / 1e6
    assert est.cost_usd == pytest.approx(expected, abs=1e-6)
    assert est.batch_cost_usd == pytest.approx(expected * 0.5, abs=1e-6)
    no_summary = estimate(ts, cb, "gpt-4o-mini", ExtractOptions(summary=False))
    assert est.requests - no_summary.requests == len(ts)
    assert est.completion_tokens - no_summary.completion_tokens == 400 * len(ts)
    more = estimate(ts, cb, "gpt-4o-mini", assumptions=Assumptions(reask_rate=0.5))
    assert more.prompt_tokens > est.prompt_tokens
    text = est.render()
    assert "no model was called" in text and "Batch API" in text and "Assumed completion tokens" in text
    assert "la01_northshire" in text and "Prices change" in text


def test_turn_strategy_sends_more_prompt_tokens_than_chunk(cb: Codebook) -> None:
    ts = [load_transcript(p) for p in INPUTS]
    chunk = estimate(ts, cb, "gpt-4o", ExtractOptions(strategy="chunk"))
    turn = estimate(ts, cb, "gpt-4o", ExtractOptions(strategy="turn"))
    assert turn.prompt_tokens > chunk.prompt_tokens and turn.requests > chunk.requests


def test_unknown_model_has_no_cost(cb: Codebook) -> None:
    est = estimate([load_transcript(INPUTS[0])], cb, "my-local-llama")
    assert est.cost_usd is None and est.prompt_tokens > 0 and "not in the price table" in est.render()


def test_shipped_table_is_dated_and_overridable(tmp_path: Path) -> None:
    table = load_prices()
    assert table.written and table.prices_as_of and "change" in table.note.lower()
    assert table.models["gpt-4o-mini"].input > 0
    y = tmp_path / "p.yaml"
    y.write_text("my-local-llama: {input: 0.0, output: 0.0}\ngpt-4o-mini: {input: 1.0, output: 2.0}\n")
    t2 = load_prices(y)
    assert t2.models["gpt-4o-mini"].input == 1.0 and "gpt-4o" in t2.models and "p.yaml" in t2.source
    j = tmp_path / "p.json"
    table_json = {"prices_as_of": "2030-01", "batch_discount": 0.4, "models": {"x": {"input": 1, "output": 1}}}
    j.write_text(json.dumps(table_json))
    t3 = load_prices(j)
    assert t3.prices_as_of == "2030-01" and t3.batch_discount == 0.4 and t3.lookup("x-2030") is not None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"x": {"input": -1, "output": 1}}}))
    with pytest.raises(ConfigError, match=r"bad\.json"):
        load_prices(bad)
    with pytest.raises(ConfigError):
        load_prices(tmp_path / "missing.yaml")
