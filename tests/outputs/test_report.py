"""The HTML report: sections, links to quotes in context, escaping, and graceful gaps.

Runs are made with the fake keyword coder (see tests/test_synthesis.py); the agreement files come
from reconcile() against the demo human coding; the study summary from study_summary().
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.analysis.test_synthesis import DEMO_KEYWORDS, SMALL_KEYWORDS, fake_model, make_run, write_small_study
from tests.conftest import DEMO

from quallm.analysis.agreement import read_human_csv, reconcile, write_agreement
from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError
from quallm.ingest.transcripts import expand_paths, load_metadata, load_transcript
from quallm.outputs.report import build_report_html, render_report
from quallm.outputs.report.render import cut_turn
from quallm.outputs.study_summary import study_summary, write_study_summary
from quallm.run.rundir import RunDir

SECTIONS = ("run", "study", "matrix", "prevalence", "codes", "agreement", "disagreements", "transcripts")


def build_demo_run(out: Path) -> Path:
    """The demo transcripts coded by the fake keyword coder, reconciled with the demo human coding, summarised."""
    make_run(out, [DEMO], DEMO / "codebook.yaml", DEMO_KEYWORDS, DEMO / "metadata.csv")
    cb = Codebook.load(DEMO / "codebook.yaml")
    meta = load_metadata(DEMO / "metadata.csv")
    transcripts = [load_transcript(p, meta.get(p.stem)) for p in expand_paths([DEMO])]
    human, problems = read_human_csv(DEMO / "human_coding.csv", transcripts, cb.ids)
    assert not problems
    machine = [c for r in RunDir(out).results() for c in r.codings]
    write_agreement(reconcile(transcripts, machine + list(human), cb.ids, n_boot=200), out)
    write_study_summary(study_summary(out, fake_model(), by="care_trend"), out)
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_run(tmp_path_factory.mktemp("demo") / "run")


class Page(HTMLParser):
    """Ids, internal links, tags, and the text inside each element with an id."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.srcs: list[str] = []
        self.text_of: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        href = a.get("href") or ""
        if tag == "a" and href.startswith("#"):
            self.links.append(href[1:])
        for key in ("src", "href"):
            if a.get(key) and not (a[key] or "").startswith("#"):
                self.srcs.append(a[key] or "")
        if tag not in ("meta", "br", "rect", "line", "img", "input"):
            self._open.append((tag, a.get("id")))
            if a.get("id"):
                self.text_of[a["id"] or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, i in self._open:
            if i:
                self.text_of[i] += data


def test_report_on_demo_run(demo_run: Path) -> None:
    out = render_report(demo_run)
    assert out == demo_run / "report.html"
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    for section in SECTIONS:
        assert section in page.ids, section
    # The manifest in plain words.
    results = RunDir(demo_run).results()
    n_ung = sum(len(r.ungrounded) for r in results)
    assert "Ungrounded quotes dropped" in html and f"<dd>{n_ung}: quotes the model gave" in html
    assert "fake at fake" in html and "12 codes (6 challenges, 6 enablers)" in html
    # Default grouping: care_trend, the first column with 2-6 values; 1 transcript in a group -> caution.
    assert "Prevalence by care_trend" in html and "Small numbers: descriptive only" in html
    assert "<svg" in html and "Freeman-Halton exact test" in html
    # Agreement: machine-vs-human next to the human baseline, with intervals.
    assert "coder_a vs coder_b" in html and "(baseline)" in html and "coder_a vs quallm (fake)" in html
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", html)
    assert "Disagreements" in html and "Across the interviews" in html  # study summary narrative
    # Every coding has a highlighted mark, and its text is where the coding says.
    for i, r in enumerate(results):
        for k, c in enumerate(r.codings):
            mid = f"t{i}-m{k}"
            assert mid in page.ids
            assert c.quote is not None and c.quote.startswith(page.text_of[mid])
    # Every internal link lands on something; nothing is fetched from anywhere.
    assert len(page.ids) == len(set(page.ids))
    assert set(page.links) <= set(page.ids)
    assert page.srcs == [] and "script" not in page.tags and "link" not in page.tags
    assert "@import" not in html and "url(" not in html


def test_quotes_link_to_their_transcript_context(demo_run: Path) -> None:
    html = build_report_html(demo_run)
    page = Page(html)
    results = RunDir(demo_run).results()
    r = results[0]
    c = r.codings[0]
    # The quote under its code links to the mark, which sits in the transcript's section and turn.
    assert 'href="#t0-m0"' in html
    section = html[html.index('id="t0"') : html.index('id="t1"')]
    assert 'id="t0-m0"' in section and f'id="t0-turn{c.turn_index}"' in section
    # Summary and study-summary quotes link to marks too.
    assert all(link in page.ids for link in page.links if link.startswith("t"))


def test_report_escapes_transcript_text(tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    evil = folder / "la_evil.txt"
    evil.write_text(
        "Interviewer: What gets in the way? <b>bold</b>\n\n"
        'Respondent: The budget <script>alert(1)</script> is short & "quoted".\n\n'
        "Interviewer: And what helps?\n\nRespondent: Early help <img src=x onerror=alert(2)> works.\n",
        encoding="utf-8",
    )
    other = folder / "la_ok.txt"
    other.write_text("Interviewer: Hi?\n\nRespondent: Early help is good.\n", encoding="utf-8")
    meta = folder / "metadata.csv"
    meta.write_text('transcript_id,group\nla_evil,"<script>alert(3)</script>"\nla_ok,plain\n', encoding="utf-8")
    cb = folder / "codebook.yaml"
    cb.write_text(
        'codes:\n  - id: C_money\n    kind: challenge\n    label: "Money <script>alert(4)</script>"\n'
        "    definition: Budgets are short.\n"
        "  - id: E_help\n    kind: enabler\n    label: Early help\n    definition: Early help works.\n",
        encoding="utf-8",
    )
    make_run(tmp_path / "run", [evil, other], cb, {"C_money": ["budget"], "E_help": ["early help"]}, meta)
    html = render_report(tmp_path / "run", by="group").read_text(encoding="utf-8")
    assert "<script" not in html and "<img" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html  # metadata, in the table and in the SVG chart
    assert "Money &lt;script&gt;alert(4)&lt;/script&gt;" in html
    # The script sits inside the highlighted coding, escaped there too.
    page = Page(html)
    assert "<script>alert(1)</script>" in page.text_of["t0-m0"]
    assert re.search(r"<mark[^>]*>The budget &lt;script&gt;alert\(1\)&lt;/script&gt; is short &amp; ", html)


def test_cut_turn_splits_at_offsets() -> None:
    text = "0123456789abcdefghij"
    spans = [
        (2, 8, "a", "C1", "challenge"),
        (5, 12, "b", "E1", "enabler"),
        (5, 7, "c", "C2", "challenge"),
        (15, 30, "d", "C1", "challenge"),
    ]
    placed: set[str] = set()
    pieces = cut_turn(text, 0, 18, spans, placed)
    assert "".join(p.text for p in pieces) == text[:18]
    got = [(p.text, p.mark_id, p.extra_ids, p.codes, p.css) for p in pieces]
    assert got == [
        ("01", None, (), (), ""),
        ("234", "a", (), ("C1",), "challenge"),
        ("56", "b", ("c",), ("C1", "E1", "C2"), "both"),
        ("7", None, (), ("C1", "E1"), "both"),
        ("89ab", None, (), ("E1",), "enabler"),
        ("cde", None, (), (), ""),
        ("fgh", "d", (), ("C1",), "challenge"),
    ]
    # A span running on into the next turn keeps its one id (placed once).
    rest = cut_turn(text, 18, 20, spans, placed)
    assert [(p.text, p.mark_id, p.codes) for p in rest] == [("ij", None, ("C1",))]


def test_report_without_agreement_or_study_and_with_a_missing_file(tmp_path: Path) -> None:
    paths, meta, cb = write_small_study(tmp_path / "inputs")
    make_run(tmp_path / "run", paths, cb, SMALL_KEYWORDS, meta)
    (tmp_path / "inputs" / "t01.txt").unlink()
    out = render_report(tmp_path / "run", tmp_path / "elsewhere" / "r.html", by="area")
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    assert "No agreement check in this run directory" in html
    assert "study" not in page.ids and "disagreements" not in page.ids
    assert "Prevalence by area" in html and "Fisher&#39;s exact test, two-sided" in html
    assert "Small numbers" not in html  # groups of 5 and 5
    assert "was not found, so the text is not shown" in html
    assert set(page.links) <= set(page.ids)  # links to t01's quotes still land (on the listed quotes)
    assert "t0-m0" in page.ids and "t0-turn1" not in page.ids
    with pytest.raises(ConfigError, match="no metadata column 'nope'"):
        render_report(tmp_path / "run", by="nope")


def test_report_flags_a_changed_transcript(tmp_path: Path) -> None:
    paths, meta, cb = write_small_study(tmp_path / "inputs")
    run = tmp_path / "run"
    make_run(run, paths, cb, SMALL_KEYWORDS, meta)
    shutil.copy(paths[1], paths[0])  # t01's file now holds t02's text
    html = build_report_html(run)
    assert "has changed since the run" in html
    assert "Coded quotes not shown in the text" in html
    assert set(Page(html).links) <= set(Page(html).ids)
