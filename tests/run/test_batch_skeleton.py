"""The one batch skeleton (run/batch.py): inputs read once with one error line per bad file, a pool
with a single writer, and each transcript chunked once per run."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import DEMO, keyword_answer

import quallm.coding.extract as extract_module
from quallm.coding.extract import ExtractOptions
from quallm.core.codebook import Codebook
from quallm.models.fake import FakeModel
from quallm.run.batch import BatchInputs, run_pool
from quallm.run.rundir import RunDir
from quallm.run.runner import run_extraction


def _counting(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    real = extract_module.chunk_transcript

    def counted(transcript: Any, *args: Any, **kwargs: Any) -> Any:
        calls[transcript.id] += 1
        return real(transcript, *args, **kwargs)

    monkeypatch.setattr(extract_module, "chunk_transcript", counted)
    return calls


@pytest.mark.parametrize(("strategy", "endpoint"), [("turn", "local:x"), ("chunk", "api.example")])
def test_each_transcript_is_chunked_once_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str, endpoint: str
) -> None:
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "KEYWORDS", {"C02_funding": ["budget", "funding"], "E04_early_help": ["early help"]})
    calls = _counting(monkeypatch)
    model = FakeModel(lambda r: keyword_answer(list(r.messages)), endpoint=endpoint)  # type: ignore[arg-type]
    opts = ExtractOptions(strategy=strategy, chunk_tokens=12000 if strategy == "chunk" else 3000)  # type: ignore[arg-type]
    report = run_extraction([DEMO], Codebook.load(DEMO / "codebook.yaml"), model, tmp_path / "run", options=opts)
    assert report.ok and len(report.done) == 5
    assert calls == Counter({tid: 1 for tid in report.done})  # progress, packing and coding share one chunking


def test_bad_files_are_one_line_each_and_the_batch_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.txt").write_text("Interviewer: Hi?\nP1: The budget is tight.\n", encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "bad.docx").write_bytes(b"not a zip")
    run = RunDir(tmp_path / "run")
    refused: list[int] = []
    batch = BatchInputs(run, [folder], on_refused=lambda: refused.append(1))
    batch.report_gathered()
    read = [t.id for _, t, _ in batch.read(hash_files=True)]
    assert read == ["good"] and len(batch.errors) == 2 and len(refused) == 2 and batch.total == 3
    assert all(("bad.docx" in e) or ("empty.txt" in e) for e in batch.errors)
    entries = {e["file"].rsplit("/", 1)[-1]: e for e in batch.entries}
    assert entries["good.txt"].get("sha256") and entries["good.txt"].get("transcript_id") == "good"
    assert entries["bad.docx"].get("error") and "sha256" not in entries["bad.docx"]
    logged = [json.loads(line)["event"] for line in (run.path / "log.jsonl").read_text().splitlines()]
    assert logged.count("input_error") == 2


@pytest.mark.parametrize("in_order", [False, True])
def test_the_pool_finishes_every_job_on_the_calling_thread(in_order: bool) -> None:
    caller = threading.get_ident()
    finished: list[int] = []
    threads: set[int] = set()

    def finish(r: int) -> None:
        threads.add(threading.get_ident())
        finished.append(r)

    run_pool(list(range(40)), lambda j: j * j, finish, 4, in_order=in_order)
    assert threads == {caller}
    assert sorted(finished) == [j * j for j in range(40)]
    if in_order:
        assert finished == [j * j for j in range(40)]
