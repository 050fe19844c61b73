"""Model policy: the profile of a backend, and the one builder of the wrapped model every command uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import DEMO, ROOT, keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.core.codebook import Codebook
from quallm.models.build import ModelSettings, build_model
from quallm.models.cache import CachedModel, ResponseCache
from quallm.models.fake import FakeModel
from quallm.models.fake_server import OpenAITestServer
from quallm.models.limits import RateLimitedModel
from quallm.models.openai_compat import OpenAICompatModel
from quallm.models.profile import LOCAL_CHUNK_TOKENS, REMOTE_CHUNK_TOKENS, profile_of
from quallm.models.recording import RecordingModel, ReplayModel
from quallm.run.runner import run_extraction

RECORDINGS = ROOT / "fixtures" / "recordings" / "demo"
runner = CliRunner()


def test_profiles_follow_the_backend_through_its_wrappers(tmp_path: Path) -> None:
    local = profile_of(FakeModel(endpoint="local:abc"))
    assert (local.local, local.strategy, local.chunk_tokens, local.concurrency(8)) == (
        True, "turn", LOCAL_CHUNK_TOKENS, 1)
    remote = profile_of(FakeModel(endpoint="api.openai.com"))
    assert (remote.local, remote.strategy, remote.chunk_tokens, remote.concurrency(8)) == (
        False, "chunk", REMOTE_CHUNK_TOKENS, 8)
    assert remote.concurrency(0) == 1
    replay = ReplayModel(RECORDINGS)  # recorded with the in-process model
    assert profile_of(replay).local and profile_of(CachedModel(replay, ResponseCache(tmp_path / "c.sqlite3"))).local


def test_the_builder_stacks_limits_cache_and_recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with OpenAITestServer() as srv:
        built = build_model(ModelSettings(
            model="m", base_url=srv.base_url, cache=tmp_path / "c.sqlite3", rpm=600, tpm=10**6,
            record=tmp_path / "rec",
        ))
    assert isinstance(built.chat, RecordingModel)
    assert isinstance(built.chat.inner, CachedModel) and isinstance(built.chat.inner.inner, RateLimitedModel)
    assert isinstance(built.bare, OpenAICompatModel) and built.chat.inner.inner.inner is built.bare
    assert built.profile is not None and not built.profile.local
    assert built.info["cache"] == str(tmp_path / "c.sqlite3")
    assert built.info["rate_limits"]["requests_per_minute"] == 600
    bare = build_model(ModelSettings(model="m", base_url="http://127.0.0.1:9/v1", use_cache=False))
    assert bare.chat is bare.bare and "cache" not in bare.info


def test_study_summary_goes_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # study-summary used to build its model without the cache (and without --rpm/--tpm or Azure).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "KEYWORDS", {"C02_funding": ["budget", "funding"], "E04_early_help": ["early help"]})
    run = tmp_path / "run"
    model = FakeModel(lambda r: keyword_answer(list(r.messages)), endpoint="local:keywords")  # type: ignore[arg-type]
    report = run_extraction([DEMO], Codebook.load(DEMO / "codebook.yaml"), model, run,
                            codebook_path=DEMO / "codebook.yaml", metadata_path=DEMO / "metadata.csv")
    assert report.ok, (report.errors, report.incomplete)
    cache = tmp_path / "cache.sqlite3"
    with OpenAITestServer() as srv:
        args = ["study-summary", str(run), "-m", "m", "--base-url", srv.base_url, "--cache", str(cache)]
        first = runner.invoke(app, args)
        assert first.exit_code == 0, first.output
        sent = len(srv.chat_requests)
        assert sent > 0
        second = runner.invoke(app, args)
        assert second.exit_code == 0, second.output
        assert len(srv.chat_requests) == sent  # every answer came from the cache
    assert (run / "study_summary.md").read_text(encoding="utf-8") and cache.is_file()
