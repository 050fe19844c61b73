"""The response cache: what it stores, thread safety, zero calls on a second run, and kill-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import DEMO, ROOT, keyword_answer

from quallm.coding.extract import ExtractOptions
from quallm.coding.schemas import turn_schema
from quallm.core.codebook import Codebook
from quallm.models.base import ChatRequest, Completion, Message, Usage
from quallm.models.cache import CachedModel, ResponseCache, conforms, default_cache_path, worth_caching
from quallm.models.fake import FakeModel
from quallm.models.fake_server import Faults, OpenAITestServer
from quallm.models.openai_compat import OpenAICompatModel
from quallm.run.runner import run_extraction

SCHEMA = turn_schema(["C_money", "E_help"], 2, 3)


def _req(text: str = "hello", schema: dict[str, Any] | None = SCHEMA) -> ChatRequest:
    return ChatRequest(
        model="m", endpoint="e", messages=(Message(role="user", content=text),), json_schema=schema, prompt_id="p"
    )


def responder(body: dict[str, Any]) -> str:
    return keyword_answer(body["messages"])


def test_default_path_is_in_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QUALLM_CACHE")  # conftest points every test at its own cache file
    p = default_cache_path()
    assert p.name == "responses.sqlite3" and "quallm" in str(p)
    monkeypatch.setenv("QUALLM_CACHE", str(tmp_path / "mine.sqlite3"))
    assert default_cache_path() == tmp_path / "mine.sqlite3"


def test_stores_only_complete_conforming_answers(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite3")
    good = Completion(content='{"codes": [{"code_id": "C_money", "sentence": 1}]}', usage=Usage(prompt_tokens=5))
    assert cache.put(_req("a"), good)
    assert not cache.put(_req("b"), Completion(content='{"codes": [', finish_reason="length"))
    assert not cache.put(_req("c"), Completion(content="   "))
    assert not cache.put(_req("d"), Completion(content="not json"))
    assert not cache.put(_req("e"), Completion(content='{"codes": "none"}'))  # wrong type
    assert not cache.put(_req("f"), Completion(content='{"codes": [{"code_id": "X", "sentence": 1}]}'))  # enum
    assert not cache.put(_req("g"), Completion(content='{"codes": [{"code_id": "C_money", "sentence": 9}]}'))
    assert cache.put(_req("h", schema=None), Completion(content="free text"))
    hit = cache.get(_req("a"))
    assert hit is not None and hit.cached and hit.content == good.content and hit.usage.prompt_tokens == 5
    assert cache.get(_req("b")) is None
    s = cache.stats()
    assert (s.entries, s.hits, s.misses, s.stored) == (2, 1, 1, 2) and s.size_bytes > 0
    assert cache.clear() == 2 and cache.stats().entries == 0
    raw = (tmp_path / "c.sqlite3").read_bytes()
    assert b"Bearer" not in raw and b"sk-" not in raw
    cache.close()


def test_conforms_subset() -> None:
    assert conforms({"codes": []}, SCHEMA)
    assert not conforms({"codes": [], "extra": 1}, SCHEMA)  # additionalProperties false
    assert not conforms({}, SCHEMA)  # required
    assert not conforms({"codes": [{"code_id": "C_money", "sentence": True}]}, SCHEMA)  # bool is not an integer
    assert worth_caching(_req(), Completion(content='```json\n{"codes": []}\n```'))


def test_thread_safe_wrapper(tmp_path: Path) -> None:
    inner = FakeModel(lambda r: json.dumps({"codes": []}))
    model = CachedModel(inner, ResponseCache(tmp_path / "c.sqlite3"))
    reqs = [_req(f"t{i % 20}") for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(model.complete, reqs))
    assert all(o.content == '{"codes": []}' for o in outs)
    # Racing threads may both miss the same key, but never more than once per thread.
    assert 20 <= len(inner.requests) <= 20 * 8 and model.cache.stats().entries == 20
    before = len(inner.requests)
    model.complete(_req("t3"))
    assert len(inner.requests) == before
    model.cache.close()


def test_second_run_makes_zero_model_calls(tmp_path: Path, sample_txt: Path, tiny_codebook_yaml: Path) -> None:
    cb = Codebook.load(tiny_codebook_yaml)
    inputs = [sample_txt, DEMO / "la01_northshire.txt"]
    cache = ResponseCache(tmp_path / "cache.sqlite3")
    opts = ExtractOptions(strategy="turn", concurrency=4)
    with OpenAITestServer(responder) as srv:
        model = CachedModel(OpenAICompatModel("test-model", base_url=srv.base_url), cache)
        r1 = run_extraction(inputs, cb, model, tmp_path / "a", options=opts)
        n = len(srv.chat_requests)
        r2 = run_extraction(inputs, cb, model, tmp_path / "b", options=opts)  # a fresh run dir: no resume
        assert r1.ok and r2.ok and n > 10
        assert len(srv.chat_requests) == n  # everything came from the cache
    assert (tmp_path / "a" / "codings.csv").read_text() == (tmp_path / "b" / "codings.csv").read_text()
    assert (tmp_path / "a" / "summaries.md").read_text() == (tmp_path / "b" / "summaries.md").read_text()
    assert cache.stats().hits >= n
    cache.close()


# --- kill and resume ------------------------------------------------------------------------------

def _extract_cmd(inputs: list[Path], cb: Path, out: Path, base_url: str, cache: Path) -> list[str]:
    """``quallm extract ... --cache PATH`` against the test server."""
    cli = str(Path(sys.executable).with_name("quallm"))
    opts = ["-c", str(cb), "-o", str(out), "-m", "test-model", "--base-url", base_url, "--strategy", "turn"]
    return [cli, "extract", *map(str, inputs), *opts, "--concurrency", "4", "--cache", str(cache)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env(), cwd=ROOT)


def test_sigkill_mid_run_then_resume_never_reasks_an_answered_request(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    inputs = [DEMO / "la01_northshire.txt", DEMO / "la02_eastbury.txt", DEMO / "la05_highfield.txt"]
    with OpenAITestServer(responder, Faults(latency=0.02)) as srv:
        ref = _run(_extract_cmd(inputs, tiny_codebook_yaml, tmp_path / "ref", srv.base_url, tmp_path / "ref.sqlite3"))
        assert ref.returncode == 0, ref.stderr
        total = len(srv.chat_requests)
        assert total > 30
        # Hold every request after half the run's answers; the client then sits waiting, and is killed.
        srv.faults.pause_after = total + total // 2
        cache = tmp_path / "cache.sqlite3"
        cmd = _extract_cmd(inputs, tiny_codebook_yaml, tmp_path / "run", srv.base_url, cache)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + 120
        while srv.state.waiting == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(1.0)  # let the client store the answers it already has
        # The keys are body hashes, so the reference run's keys are the same: look only past its entries.
        answered_before_kill = {e.key for e in srv.state.log[total:] if e.answered is not None}
        log_len = len(srv.state.log)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        srv.release()
        rerun = _run(cmd)
        assert rerun.returncode == 0, rerun.stderr
        asked_again = {e.key for e in srv.state.log[log_len:] if e.path == "chat"}
    assert len(answered_before_kill) >= total // 2 - 4 and asked_again
    assert not (asked_again & answered_before_kill), "a request answered before the kill was sent again"
    assert (tmp_path / "run" / "codings.csv").read_text() == (tmp_path / "ref" / "codings.csv").read_text()
    assert (tmp_path / "run" / "summaries.md").read_text() == (tmp_path / "ref" / "summaries.md").read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_cache_file_survives_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    code = (
        "import sys,time\nfrom quallm.models.cache import ResponseCache\nfrom quallm.models.base import *\n"
        "c=ResponseCache(sys.argv[1])\n"
        "for i in range(100000):\n"
        "    r=ChatRequest(model='m',endpoint='e',messages=(Message(role='user',content=str(i)),))\n"
        "    c.put(r, Completion(content='x'))\n"
        "    print(i, flush=True) if i == 50 else None\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "50"
    proc.kill()
    proc.wait()
    cache = ResponseCache(path)
    assert cache.stats().entries >= 51
    r = ChatRequest(model="m", endpoint="e", messages=(Message(role="user", content="7"),))
    hit = cache.get(r)
    assert hit is not None and hit.cached
    cache.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_stops_after_the_current_transcript_and_says_how_to_resume(
    tmp_path: Path, tiny_codebook_yaml: Path
) -> None:
    inputs = [DEMO / "la01_northshire.txt", DEMO / "la02_eastbury.txt", DEMO / "la05_highfield.txt"]
    with OpenAITestServer(responder, Faults(latency=0.05)) as srv:
        cmd = _extract_cmd(inputs, tiny_codebook_yaml, tmp_path / "run", srv.base_url, tmp_path / "c.sqlite3")
        cmd[cmd.index("--concurrency") + 1] = "1"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
        results = tmp_path / "run" / "results"
        deadline = time.monotonic() + 120
        while not (results.is_dir() and any(results.glob("*.json"))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before Ctrl-C"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert "Stopping after the current transcript" in err
        assert "run the same command again to resume" in err
        done = sorted(p.name for p in results.glob("*.json"))
        assert 1 <= len(done) < 3  # stopped early, finished work saved
        rerun = _run(cmd)
        assert rerun.returncode == 0, rerun.stderr
        assert len(list(results.glob("*.json"))) == 3
