"""Fault injection through the whole pipeline: nothing lost, nothing invented, reruns complete the rest.

Every fault runs through ``run_extraction`` with ``OpenAICompatModel`` against the test server. After
each run: every unit is either coded (its codings equal a clean run's) or recorded as a failure (with
the raw output where there was one); every coding's quote is ``transcript.text[start:end]``; invented
quotes are in ``ungrounded``, never in codings; transcripts without failures are complete.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import keyword_answer

from quallm.coding.extract import ExtractOptions, Extractor
from quallm.core.codebook import Codebook
from quallm.core.results import TranscriptResult
from quallm.core.transcript import Transcript
from quallm.ingest.transcripts import load_transcript
from quallm.models import openai_compat
from quallm.models.fake_server import ALL_FAULTS, INVENTED_QUOTE, Faults, OpenAITestServer
from quallm.models.openai_compat import OpenAICompatModel
from quallm.run.rundir import RunDir
from quallm.run.runner import Progress, RunReport, run_extraction

TOPICS = [
    "The budget is the big worry this year.",
    "We ran the courts list again and nothing moved.",
    "Our early help offer keeps families together.",
    "Recruitment of social workers is hard. Agency staff cost money we do not have.",
    "Family support workers go in quickly and that matters.",
    "Housing is a problem in the north of the county.",
    "Funding for edge of care went down. It hurts.",
]


def _write_transcripts(folder: Path, n: int = 3) -> list[Path]:
    paths = []
    for i in range(n):
        turns = []
        for j in range(6):
            turns.append(f"Interviewer: Question {j} for site {i}, what happened next?")
            turns.append(f"Respondent: {TOPICS[(i + j) % len(TOPICS)]} That was in year {j}.")
        p = folder / f"site{i}.txt"
        p.write_text("\n\n".join(turns) + "\n", encoding="utf-8")
        paths.append(p)
    return paths


def responder(body: dict[str, Any]) -> str:
    return keyword_answer(body["messages"])


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transport retries without Retry-After back off exponentially from 1 s; tests use 10 ms."""
    monkeypatch.setattr(openai_compat, "wait_exponential_jitter", lambda **_kw: lambda _state: 0.01)


def _model(srv: OpenAITestServer, retries: int = 4) -> OpenAICompatModel:
    return OpenAICompatModel("test-model", base_url=srv.base_url, timeout=0.5, max_retries=retries)


def _options(strategy: str) -> ExtractOptions:
    return ExtractOptions(strategy=strategy, chunk_tokens=80, context_tokens=0, concurrency=1)  # type: ignore[arg-type]


def _run(
    srv: OpenAITestServer, inputs: list[Path], cb: Codebook, out: Path, strategy: str, **kw: Any
) -> RunReport:
    retries = kw.pop("retries", 4)
    return run_extraction(inputs, cb, _model(srv, retries), out, options=_options(strategy), **kw)


def _units_by_turn(extractor: Extractor, transcript: Transcript) -> dict[int, str]:
    """Which unit codes each turn (read from the units' own arguments, so it matches extraction)."""
    out = {}
    for name, thunk in extractor.units(transcript):
        assert isinstance(thunk, partial)
        target = thunk.args[-1]
        segments = target.coded_segments if hasattr(target, "coded_segments") else (target,)
        for s in segments:
            out[s.turn_index] = name
    return out


def _spans(r: TranscriptResult) -> set[tuple[str, int | None, int | None]]:
    return {(c.code_id, c.start, c.end) for c in r.codings}


def check_run(
    out: Path, report: RunReport, inputs: list[Path], cb: Codebook, clean: Path, strategy: str
) -> list[TranscriptResult]:
    """The invariants: nothing lost, nothing invented, honest completeness."""
    results = {r.transcript_id: r for r in RunDir(out).results()}
    clean_results = {r.transcript_id: r for r in RunDir(clean).results()}
    assert set(results) == set(clean_results) == {p.stem for p in inputs}
    extractor = Extractor(_NameOnly(), cb, _options(strategy))
    for p in inputs:
        t = load_transcript(p)
        r = results[t.id]
        unit_of = _units_by_turn(extractor, t)
        failed = {f.unit for f in r.failures}
        assert failed <= set(unit_of.values()) | {"summary"}
        for c in r.codings:  # nothing invented
            assert c.start is not None and c.end is not None and c.quote == t.text[c.start : c.end]
            assert INVENTED_QUOTE not in c.quote
        for c in clean_results[t.id].codings:  # nothing lost
            if unit_of[c.turn_index or 0] not in failed:
                assert (c.code_id, c.start, c.end) in _spans(r), f"{t.id}: lost {c.code_id} in turn {c.turn_index}"
        for f in r.failures:
            if f.error_type in ("OutputValidationError", "TruncatedOutputError"):
                assert f.raw, f"{t.id}: failure of {f.unit} kept no raw output"
        if r.failures:
            assert t.id in report.incomplete and not r.complete
        else:
            assert (t.id in report.done or t.id in report.skipped) and r.complete
            assert _spans(r) == _spans(clean_results[t.id]) and r.summary is not None
        assert all(u.quote for u in r.ungrounded)
    return list(results.values())


class _NameOnly:
    """Just enough of a model to rebuild the units (same tokenizer as OpenAICompatModel)."""

    def __init__(self) -> None:
        from quallm.ingest.tokenizers import tokenizer_for_model

        self._tok = tokenizer_for_model("test-model")

    name = "test-model"
    endpoint = "127.0.0.1"
    output_mode = openai_compat.OutputMode.JSON_SCHEMA

    def count_tokens(self, text: str) -> int:
        return self._tok.count(text)

    def complete(self, request: Any) -> Any:
        raise AssertionError("never called")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Codebook, dict[str, Path]]:
    tmp_path = tmp_path_factory.mktemp("faults")
    inputs = _write_transcripts(tmp_path)
    cb = Codebook.model_validate(
        {
            "name": "Tiny",
            "codes": [
                {"id": "C_money", "kind": "challenge", "label": "Funding", "definition": "Money is short."},
                {"id": "E_help", "kind": "enabler", "label": "Early help", "definition": "Early help works."},
            ],
        }
    )
    clean = {}
    for strategy in ("chunk", "turn"):
        with OpenAITestServer(responder) as srv:
            report = _run(srv, inputs, cb, tmp_path / f"clean-{strategy}", strategy)
        assert report.ok and report.codings > 3
        clean[strategy] = tmp_path / f"clean-{strategy}"
    return inputs, cb, clean


SINGLE = [
    ("hang", {"hang": 2, "hang_seconds": 1.5}),
    ("drop", {"drop": 3}),
    ("rate_limited", {"rate_limited": 2, "retry_after": 0.01}),
    ("server_error", {"server_error": 2, "retry_after": 0.01}),
    ("invalid_json", {"invalid_json": 2}),
    ("schema_invalid", {"schema_invalid": 2}),  # max_reasks=2: a third bad answer is a failure
    ("bad_quote", {"bad_quote": 2}),
]


@pytest.mark.parametrize("strategy", ["chunk", "turn"])
@pytest.mark.parametrize(("name", "settings"), SINGLE, ids=[s[0] for s in SINGLE])
def test_each_recoverable_fault_alone(
    tmp_path: Path, setup: Any, strategy: str, name: str, settings: dict[str, Any]
) -> None:
    inputs, cb, clean = setup
    with OpenAITestServer(responder, Faults(**settings)) as srv:
        report = _run(srv, inputs, cb, tmp_path / "out", strategy)
        served = sum(srv.state.faults_served.values())
    assert served == next(v for k, v in settings.items() if k not in ("hang_seconds", "retry_after"))
    results = check_run(tmp_path / "out", report, inputs, cb, clean[strategy], strategy)
    assert report.ok  # every one of these is recovered by a transport retry or a re-ask
    invented = [u for r in results for u in r.ungrounded if u.quote == INVENTED_QUOTE]
    if name == "bad_quote" and strategy == "chunk":
        assert len(invented) == 2  # dropped and recorded, never coded
    else:
        assert not invented  # per-turn evidence is a sentence number: a bad one is re-asked, never kept


def test_length_is_retried_once_as_a_smaller_chunk(tmp_path: Path, setup: Any) -> None:
    inputs, cb, clean = setup
    with OpenAITestServer(responder, Faults(length=1)) as srv:
        report = _run(srv, inputs, cb, tmp_path / "out", "chunk")
    assert report.ok
    check_run(tmp_path / "out", report, inputs, cb, clean["chunk"], "chunk")


def test_length_twice_is_a_recorded_failure_with_raw_output(tmp_path: Path, setup: Any) -> None:
    inputs, cb, clean = setup
    with OpenAITestServer(responder, Faults(length=2)) as srv:  # the chunk, then its first half
        report = _run(srv, inputs, cb, tmp_path / "out", "chunk")
    results = check_run(tmp_path / "out", report, inputs, cb, clean["chunk"], "chunk")
    failures = [f for r in results for f in r.failures]
    assert [f.error_type for f in failures] == ["TruncatedOutputError"] and failures[0].raw
    assert len(report.incomplete) == 1 and len(report.done) == 2


def test_faults_beyond_the_retries_are_recorded_and_a_rerun_completes(tmp_path: Path, setup: Any) -> None:
    inputs, cb, clean = setup
    out = tmp_path / "out"
    with OpenAITestServer(responder, Faults(drop=3, schema_invalid=3)) as srv:
        report = _run(srv, inputs, cb, out, "turn", retries=2)
        results = check_run(out, report, inputs, cb, clean["turn"], "turn")
        kinds = sorted(f.error_type for r in results for f in r.failures)
        assert kinds == ["OutputValidationError", "TransportError"]
        assert all(f.errors for r in results for f in r.failures if f.error_type == "OutputValidationError")
        again = _run(srv, inputs, cb, out, "turn", retries=2)  # same endpoint: finished transcripts are skipped
    assert again.ok and again.done == ["site0"] and again.skipped == ["site1", "site2"]  # both faults hit site0
    check_run(out, again, inputs, cb, clean["turn"], "turn")


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("strategy", ["chunk", "turn"])
def test_random_mix_of_faults(tmp_path: Path, setup: Any, seed: int, strategy: str) -> None:
    inputs, cb, clean = setup
    out = tmp_path / "out"
    faults = Faults.random_mix(seed=seed, rate=0.35, hang_seconds=1.0, retry_after=0.01)
    with OpenAITestServer(responder, faults) as srv:
        report = _run(srv, inputs, cb, out, strategy)
        served = dict(srv.state.faults_served)
        port = srv.port
    assert sum(served.values()) >= 3 and set(served) <= set(ALL_FAULTS)
    check_run(out, report, inputs, cb, clean[strategy], strategy)
    with OpenAITestServer(responder, port=port) as srv:  # a clean server at the same address
        again = _run(srv, inputs, cb, out, strategy)
    assert again.ok
    check_run(out, again, inputs, cb, clean[strategy], strategy)


class _StopServerAfter(Progress):
    """Kills the server from inside the run once ``n`` units are done (mid-transcript)."""

    def __init__(self, srv: OpenAITestServer, n: int) -> None:
        self.srv, self.n, self.done = srv, n, 0

    def unit_done(self, transcript_id: str | None = None) -> None:
        self.done += 1
        if self.done == self.n:
            self.srv.stop()


@pytest.mark.parametrize("strategy", ["chunk", "turn"])
def test_server_killed_mid_run_then_rerun_completes(tmp_path: Path, setup: Any, strategy: str) -> None:
    inputs, cb, clean = setup
    out = tmp_path / "out"
    srv = OpenAITestServer(responder).start()
    n_units = len(Extractor(_NameOnly(), cb, _options(strategy)).units(load_transcript(inputs[0])))
    try:
        report = _run(srv, inputs, cb, out, strategy, retries=2, progress=_StopServerAfter(srv, n_units + 1))
    finally:
        srv.stop()
    assert report.done == [inputs[0].stem] and len(report.incomplete) == 2 and not report.ok
    results = check_run(out, report, inputs, cb, clean[strategy], strategy)
    assert {f.error_type for r in results for f in r.failures} == {"TransportError"}
    with OpenAITestServer(responder, port=srv.port) as srv2:
        again = _run(srv2, inputs, cb, out, strategy)
        assert again.ok and again.skipped == [inputs[0].stem]
    check_run(out, again, inputs, cb, clean[strategy], strategy)
