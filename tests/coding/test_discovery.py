"""Inductive discovery: candidates per chunk, consolidation with the real embedding model, outputs, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tests.conftest import DEMO
from typer.testing import CliRunner

from quallm.cli import app
from quallm.coding.discovery import DiscoverOptions, cluster
from quallm.coding.discovery.candidates import Candidate
from quallm.coding.discovery.consolidate import consolidate
from quallm.coding.extract import ExtractOptions, Extractor
from quallm.core.codebook import Codebook
from quallm.core.results import Quote
from quallm.ingest.transcripts import load_transcript
from quallm.models.base import ChatRequest
from quallm.models.embeddings import MiniLMEmbedder
from quallm.models.fake import FakeModel
from quallm.models.fake_server import OpenAITestServer
from quallm.run.discovery import run_discovery

# Paraphrases of three themes: within a theme the real MiniLM gives cosine 0.66-0.69, across themes < 0.4.
THEMES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "budget": (
        "challenge",
        [
            ("Funding pressure", "Budgets are cut and money for services is short."),
            ("Shortage of money", "There is not enough money to pay for services."),
        ],
    ),
    "court": (
        "challenge",
        [
            ("Slow courts", "Care proceedings in the family courts take too long."),
            ("Court delays", "Courts are slow and proceedings are delayed."),
        ],
    ),
    "early help": (
        "enabler",
        [
            ("Early help", "Early help services support families before problems escalate."),
            ("Family support", "Family support workers help families early to keep children at home."),
        ],
    ),
}

TRANSCRIPTS = {
    "la_a": """Interviewer: What gets in the way?

Respondent: Honestly the budget is the big thing. We lost a lot of funding over ten years.

Interviewer: Anything else?

Respondent: The court process is slow, and every case seems to take a year.

Interviewer: And what helps?

Respondent: Our early help offer has been transformative for families.
""",
    "la_b": """Interviewer: What are the pressures?

Respondent: The budget gets smaller every single year and we have to find savings.

Interviewer: What works?

Respondent: Early help workers get in quickly, before things escalate.
""",
    "la_c": """Interviewer: Tell me about the courts.

Respondent: The court keeps asking for more assessments, so proceedings drag on.

Interviewer: And money?

Respondent: The budget is fine this year, actually.
""",
}


def _excerpt_lines(user: str) -> list[str]:
    """The interviewee's lines of a discovery request."""
    body = user.split("Excerpt:\n", 1)[-1]
    return [m.group(1) for m in re.finditer(r"^\((?!Interviewer)[^)]*\) (.*)$", body, re.M)]


def theme_answer(request: ChatRequest, invent: bool = False) -> str:
    """A deterministic stand-in for the model: one theme per keyword, quoting the sentence that holds it.

    The wording alternates with the seed and the sentence, so consolidation has paraphrases to merge.
    """
    user = request.messages[1].content
    themes = []
    for line in _excerpt_lines(user):
        for keyword, (kind, wordings) in THEMES.items():
            m = re.search(rf"[^.?!]*\b{keyword}\b[^.?!]*[.?!]?", line, re.I)
            if not m:
                continue
            label, description = wordings[(len(m.group(0)) + (request.seed or 0)) % len(wordings)]
            themes.append({"quote": m.group(0).strip(), "topic": label, "description": description, "kind": kind})
    if invent:
        themes.append(
            {
                "quote": "We have never had any problems with anything at all.",
                "topic": "Invented theme",
                "description": "Not said.",
                "kind": "enabler",
            }
        )
    return json.dumps({"themes": themes})


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "transcripts"
    folder.mkdir()
    for name, text in TRANSCRIPTS.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_embedder_is_the_real_minilm(embedder: MiniLMEmbedder) -> None:
    v = embedder.embed(["Court delays", "Slow family courts", "The cat sat on the mat."])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.5 > sims[0, 2]


def test_cluster_cuts_at_the_threshold() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    near_a = np.array([0.95, np.sqrt(1 - 0.95**2)])
    vecs = np.stack([a, near_a, b])
    assert sorted(map(sorted, cluster(vecs, 0.9))) == [[0, 1], [2]]
    assert sorted(map(sorted, cluster(vecs, 0.99))) == [[0], [1], [2]]
    assert cluster(np.zeros((0, 2)), 0.5) == []


def test_discovery_finds_merges_and_grounds(corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    model = FakeModel(lambda r: theme_answer(r, invent=True))
    out = tmp_path / "disc"
    opts = DiscoverOptions(focus="Reducing care entry", similarity=0.6, min_transcripts=2)
    report = run_discovery([corpus], model, out, embedder, options=opts)
    assert report.ok, report
    by_label = {t.label: t for t in report.themes}
    assert len(report.themes) == 3, [t.label for t in report.themes]  # six wordings, one invented quote dropped
    budget = next(t for t in report.themes if t.label in ("Funding pressure", "Shortage of money"))
    court = next(t for t in report.themes if t.label in ("Slow courts", "Court delays"))
    help_ = next(t for t in report.themes if t.label in ("Early help", "Family support"))
    assert budget.transcripts == ("la_a", "la_b", "la_c") and budget.prevalence == 3
    assert court.transcripts == ("la_a", "la_c") and court.kind == "challenge"
    assert help_.transcripts == ("la_a", "la_b") and help_.kind == "enabler"
    assert "Invented theme" not in by_label
    # Every quote is the transcript's own text at its offsets.
    for t in report.themes:
        assert t.quotes
        for q in t.quotes:
            text = load_transcript(corpus / f"{q.transcript_id}.txt").text
            assert text[q.quote.start : q.quote.end] == q.quote.text
    # The invented quote is logged as ungrounded in the candidates, never reported.
    saved = json.loads((out / "candidates" / "la_a.r1.json").read_text())
    assert [u["quote"] for u in saved["ungrounded"]] == ["We have never had any problems with anything at all."]
    assert "never had any problems" not in (out / "themes.md").read_text()
    assert "never had any problems" not in (out / "codebook.draft.yaml").read_text()


def test_draft_codebook_is_what_extract_reads(corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    out = tmp_path / "disc"
    run_discovery([corpus], FakeModel(theme_answer), out, embedder, options=DiscoverOptions(min_transcripts=2))
    cb = Codebook.load(out / "codebook.draft.yaml")
    assert {c.kind for c in cb.codes} == {"challenge", "enabler"}
    assert all(re.fullmatch(r"[CE]\d\d_[a-z0-9_]+", c.id) for c in cb.codes)
    assert all(c.examples for c in cb.codes)
    # extract runs with it as is.
    t = load_transcript(corpus / "la_a.txt")
    result = Extractor(FakeModel(), cb, ExtractOptions(strategy="chunk", summary=False)).extract(t)
    assert result.complete
    themes_md = (out / "themes.md").read_text()
    assert "## Challenges" in themes_md and "## Enablers" in themes_md
    assert "3/3 transcripts" in themes_md


def test_min_transcripts_keeps_rare_themes_out_of_the_codebook(
    corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    out = tmp_path / "disc"
    report = run_discovery(
        [corpus], FakeModel(theme_answer), out, embedder, options=DiscoverOptions(min_transcripts=3)
    )
    cb = Codebook.load(out / "codebook.draft.yaml")
    assert len(cb.codes) == 1 and report.in_codebook == 1  # only the budget theme is in all three
    assert "not in the draft codebook" in (out / "themes.md").read_text()


def test_rerun_makes_no_model_calls_and_resumes_a_lost_transcript(
    corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    out = tmp_path / "disc"
    first = FakeModel(theme_answer)
    run_discovery([corpus], first, out, embedder, options=DiscoverOptions())
    themes_before = (out / "themes.json").read_text()
    assert len(first.requests) == 3
    again = FakeModel(theme_answer)
    report = run_discovery([corpus], again, out, embedder, options=DiscoverOptions())
    assert again.requests == [] and report.skipped == 3
    (out / "candidates" / "la_b.r1.json").unlink()  # as if killed before la_b was saved
    third = FakeModel(theme_answer)
    run_discovery([corpus], third, out, embedder, options=DiscoverOptions())
    assert len(third.requests) == 1 and "smaller every single year" in third.requests[0].messages[1].content
    assert (out / "themes.json").read_text() == themes_before


def test_repeats_report_stability(corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    def flaky(request: ChatRequest) -> str:
        answer = json.loads(theme_answer(request))
        if request.seed == 1:  # the second run never sees the courts
            answer["themes"] = [t for t in answer["themes"] if "ourt" not in t["topic"]]
        return json.dumps(answer)

    model = FakeModel(flaky)
    out = tmp_path / "disc"
    report = run_discovery([corpus], model, out, embedder, options=DiscoverOptions(repeats=2))
    assert {r.seed for r in model.requests} == {0, 1}
    assert {r.temperature for r in model.requests} == {0.7}
    runs = {t.label: t.runs for t in report.themes}
    court = next(v for k, v in runs.items() if "ourt" in k)
    assert court == 1 and max(runs.values()) == 2
    md = (out / "themes.md").read_text()
    assert "1/2 runs, *unstable*" in md and "2/2 runs" in md
    assert sorted(p.name for p in (out / "candidates").iterdir())[:2] == ["la_a.r1.json", "la_a.r2.json"]


def test_model_merge_step_joins_by_number_and_embedding_vetoes(embedder: MiniLMEmbedder) -> None:
    def cand(label: str, desc: str, tid: str, kind: str = "challenge") -> Candidate:
        return Candidate(
            transcript_id=tid,
            repeat=0,
            chunk=0,
            kind=kind,  # type: ignore[arg-type]
            label=label,
            description=desc,
            quotes=(Quote(start=0, end=1, text="x"),),
        )

    cands = [
        cand("Placement shortage", "Too few foster carers and homes for children.", "a"),
        cand("Sufficiency of care homes", "Not enough local residential and foster placements.", "b"),
        cand("Slow courts", "Care proceedings take too long.", "c"),
    ]
    separate = consolidate(cands, embedder, similarity=0.9)
    assert len(separate) == 3

    def lump_all(labels: list[str]) -> list[list[int]]:
        assert len(labels) == 3
        return [[1, 2, 3]]  # the model lumps everything; the courts are not like placements

    merged = consolidate(cands, embedder, similarity=0.9, group_with_model=lump_all, model_merge_margin=0.6)
    sizes = sorted(t.members for t in merged)
    assert sizes == [1, 2], [(t.label, t.members) for t in merged]
    assert next(t for t in merged if t.members == 1).label == "Slow courts"


def test_bad_input_is_one_line_and_the_batch_goes_on(corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    (corpus / "broken.docx").write_bytes(b"not a docx")
    report = run_discovery([corpus], FakeModel(theme_answer), tmp_path / "d", embedder, options=DiscoverOptions())
    assert len(report.errors) == 1 and "broken.docx" in report.errors[0] and "\n" not in report.errors[0]
    assert report.transcripts == 3 and not report.ok


def test_a_failing_chunk_marks_the_run_incomplete(corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    def sometimes_garbage(request: ChatRequest) -> str:
        return "not json at all" if "courts" in request.messages[1].content else theme_answer(request)

    out = tmp_path / "d"
    report = run_discovery([corpus], FakeModel(sometimes_garbage), out, embedder, options=DiscoverOptions())
    assert report.incomplete == ["la_c run 1"]
    saved = json.loads((out / "candidates" / "la_c.r1.json").read_text())
    assert saved["failures"][0]["raw"] == "not json at all"
    assert report.themes  # the others still consolidate
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished with problems"


def test_cli_discover_against_the_test_server(corpus: Path, tmp_path: Path) -> None:
    def responder(body: dict[str, Any]) -> str:
        req = ChatRequest.model_validate(
            {"model": "m", "endpoint": "e", "messages": body["messages"], "seed": body.get("seed")}
        )
        return theme_answer(req)

    out = tmp_path / "disc"
    with OpenAITestServer(responder) as srv:
        args = ["discover", str(corpus), "-o", str(out), "-m", "test-model", "--base-url", srv.base_url]
        r = CliRunner().invoke(app, [*args, "--focus", "care entry", "--similarity", "0.6"])
        assert r.exit_code == 0, r.output
        assert "3 transcripts x 1 run(s)" in r.output
        n_first = len(srv.chat_requests)
        r2 = CliRunner().invoke(app, [*args, "--focus", "care entry", "--similarity", "0.6"])
        assert r2.exit_code == 0 and len(srv.chat_requests) == n_first  # resumed: nothing sent again
    draft = yaml.safe_load((out / "codebook.draft.yaml").read_text())
    assert draft["name"] == "Draft: care entry"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "discover" and manifest["counts"]["themes"] == 3


def test_demo_transcripts_are_chunked_with_interviewee_turns_only() -> None:
    from quallm.coding.discovery.candidates import CandidateFinder

    finder = CandidateFinder(FakeModel(), DiscoverOptions(chunk_tokens=800))
    t = load_transcript(DEMO / "la01_northshire.txt")
    chunks = finder.chunks(t)
    assert len(chunks) >= 2 and all(c.coded_segments for c in chunks)
    req = finder.request(chunks[0], 0)
    assert "interviewer)" in req.messages[1].content and req.json_schema is not None


def test_kind_is_the_members_majority(embedder: MiniLMEmbedder) -> None:
    def cand(kind: str, tid: str) -> Candidate:
        return Candidate(
            transcript_id=tid,
            repeat=0,
            chunk=0,
            kind=kind,  # type: ignore[arg-type]
            label="Edge-of-care team",
            description="A team that works intensively with families on the edge of care.",
            quotes=(Quote(start=0, end=1, text="x"),),
        )

    (theme,) = consolidate([cand("enabler", "a"), cand("challenge", "b"), cand("enabler", "c")], embedder)
    assert theme.kind == "enabler" and theme.kind_votes == {"challenge": 1, "enabler": 2}
    assert theme.id.startswith("E01_") and theme.prevalence == 3


def test_stopped_run_resumes_to_the_same_themes(corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    whole = run_discovery([corpus], FakeModel(theme_answer), tmp_path / "whole", embedder)
    first = FakeModel(theme_answer)
    stopped = run_discovery(
        [corpus], first, tmp_path / "d", embedder, should_stop=lambda: len(first.requests) >= 1
    )
    assert not stopped.ok and stopped.incomplete == ["2 transcript run(s) not done (stopped early)"]
    assert "Incomplete" in (tmp_path / "d" / "themes.md").read_text()
    rest = FakeModel(theme_answer)
    resumed = run_discovery([corpus], rest, tmp_path / "d", embedder)
    assert resumed.ok and resumed.skipped == 1 and len(rest.requests) == 2
    strip = lambda p: json.loads(p.read_text())["themes"]  # noqa: E731
    assert strip(tmp_path / "d" / "themes.json") == strip(tmp_path / "whole" / "themes.json")
    assert whole.ok


def test_merge_links_become_groups() -> None:
    from quallm.coding.discovery.merge import groups_from_links

    assert groups_from_links([0, 0, 1, 0, 2], 5) == [[1, 3], [2, 5], [4]]
    assert groups_from_links([0, 1, 2], 3) == [[1, 2, 3]]  # chains join
    assert groups_from_links([3, 2, 9, 0], 4) == [[1], [2], [3], [4]]  # later, self and out of range ignored
    assert groups_from_links([], 2) == [[1], [2]]


def test_themes_sharing_a_label_get_distinct_names(embedder: MiniLMEmbedder) -> None:
    def cand(label: str, desc: str, tid: str) -> Candidate:
        return Candidate(
            transcript_id=tid,
            repeat=0,
            chunk=0,
            kind="challenge",
            label=label,
            description=desc,
            quotes=(Quote(start=0, end=1, text="x"),),
        )

    themes = consolidate(
        [
            cand("Placement sufficiency", "Too few foster carers for the children who need them.", "a"),
            cand("Placement sufficiency", "Too few foster carers and children's homes nearby.", "b"),
            cand("Placement sufficiency", "The council overspent its budget by four million pounds.", "c"),
        ],
        embedder,
        similarity=0.6,
    )
    labels = sorted(t.label for t in themes)
    assert len(themes) == 2 and labels == ["Placement sufficiency", "Placement sufficiency (2)"]
    assert next(t for t in themes if t.label == "Placement sufficiency").members == 2


def test_cli_min_themes_reaches_the_schema(corpus: Path, tmp_path: Path) -> None:
    def responder(body: dict[str, Any]) -> str:
        req = ChatRequest.model_validate(
            {"model": "m", "endpoint": "e", "messages": body["messages"], "seed": body.get("seed")}
        )
        return theme_answer(req)

    def themes_schema(body: dict[str, Any]) -> dict[str, Any]:
        schema: dict[str, Any] = body["response_format"]["json_schema"]["schema"]
        return schema["properties"]["themes"]  # type: ignore[no-any-return]

    with OpenAITestServer(responder) as srv:
        base = ["discover", str(corpus), "-m", "test-model", "--base-url", srv.base_url, "--no-cache"]
        r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "a")])
        assert r.exit_code == 0, r.output
        assert "minItems" not in themes_schema(srv.chat_requests[0])  # remote default: no minimum
        r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "b"), "--min-themes", "1"])
        assert r.exit_code == 0, r.output
        assert themes_schema(srv.chat_requests[-1])["minItems"] == 1


def test_every_theme_of_an_answer_is_accounted_for(corpus: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    # Each answer gives its themes twice and one theme named only by its kind: the repeat is kept once
    # and counted, the nameless one dropped and counted, so nothing the model said goes unrecorded.
    def twice(request: ChatRequest) -> str:
        themes = json.loads(theme_answer(request))["themes"]
        quote = themes[0]["quote"] if themes else ""
        return json.dumps({"themes": themes + themes + [{"quote": quote, "topic": "Challenge", "kind": "challenge"}]})

    opts = DiscoverOptions(max_themes_per_chunk=20)
    run_discovery([corpus], FakeModel(twice), tmp_path / "d", embedder, options=opts)
    saved = json.loads((tmp_path / "d" / "candidates" / "la_a.r1.json").read_text())
    assert len(saved["candidates"]) >= 1 and saved["repeated"] == len(saved["candidates"]) and saved["unnamed"] == 1
