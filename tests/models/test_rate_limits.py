"""Requests-per-minute and tokens-per-minute limits (a fake clock: no test waits a minute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.models.base import ChatRequest, Message
from quallm.models.fake import FakeModel
from quallm.models.fake_server import OpenAITestServer
from quallm.models.limits import RateLimitedModel


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _request(words: int, max_tokens: int = 10) -> ChatRequest:
    return ChatRequest(
        model="m", endpoint="e", messages=(Message(role="user", content="w " * words),), max_tokens=max_tokens
    )


def test_requests_per_minute() -> None:
    clock = Clock()
    model = RateLimitedModel(FakeModel(), rpm=2, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(5):
        model.complete(_request(1))
        times.append(clock.now)
    assert times == [0.0, 0.0, 60.0, 60.0, 120.0]
    assert model.waited == 120.0


def test_tokens_per_minute_counts_prompt_and_max_completion() -> None:
    clock = Clock()
    inner = FakeModel()
    model = RateLimitedModel(inner, tpm=100, clock=clock, sleep=clock.sleep)
    assert model.cost(_request(30, max_tokens=20)) == 50  # FakeModel counts words
    model.complete(_request(30, max_tokens=20))
    clock.now = 10.0
    model.complete(_request(30, max_tokens=20))  # 100 tokens in the window: fits exactly
    model.complete(_request(1, max_tokens=1))  # must wait for the first to leave the window
    assert clock.now == 60.0 and len(inner.requests) == 3
    big = _request(500)
    clock.now = 1000.0
    model.complete(big)  # larger than the whole budget: goes alone in an empty window
    assert clock.now == 1000.0


def test_no_limits_never_wait() -> None:
    clock = Clock()
    model = RateLimitedModel(FakeModel(), clock=clock, sleep=clock.sleep)
    for _ in range(100):
        model.complete(_request(5))
    assert clock.sleeps == []


def test_cli_rate_limits_reach_the_manifest(tmp_path: Path, sample_txt: Path, tiny_codebook_yaml: Path) -> None:
    def responder(body: dict[str, Any]) -> str:
        return keyword_answer(body["messages"])

    with OpenAITestServer(responder) as srv:
        r = CliRunner().invoke(
            app,
            ["extract", str(sample_txt), "-c", str(tiny_codebook_yaml), "-o", str(tmp_path / "run"), "-m", "test-model",
             "--base-url", srv.base_url, "--rpm", "600", "--tpm", "1000000"],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert '"requests_per_minute": 600' in manifest and '"tokens_per_minute": 1000000' in manifest
