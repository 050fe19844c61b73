"""The review app in a real browser: headless Chromium (Debian's, driven by Playwright) reviews a run
through the page's buttons and keys, then the log and the export are checked.

Needs the ``playwright`` Python package and a Chromium binary (Debian: ``apt-get install -y chromium``,
or ``QUALLM_CHROMIUM``); Playwright's own browser download is never used. Skipped, saying why, when
either is missing. Leaves screenshots in ``test-artifacts/``; with ``QUALLM_UPDATE_SCREENSHOT=1`` (or
when it is missing) it also refreshes ``docs/review.png`` from the replayed demo run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import DEMO, ROOT
from tests.outputs.test_report_browser import CHROMIUM
from tests.review_run import T1, make_review_run

from quallm.analysis.reconciling import load_run
from quallm.core.codebook import Codebook
from quallm.ingest.qdpx import read_qdpx
from quallm.models.recording import ReplayModel
from quallm.outputs.qdpx import export_run
from quallm.outputs.review.server import ReviewServer
from quallm.run.runner import run_extraction

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary found (apt-get install -y chromium, or set QUALLM_CHROMIUM to its path)",
)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ReviewServer]:
    srv = ReviewServer(make_review_run(tmp_path), "ann")
    srv.start()
    yield srv
    srv.stop()


def log_lines(srv: ReviewServer) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (srv.session.run.path / "review.jsonl").read_text(encoding="utf-8").splitlines()]


def select_text(page: Any, text: str) -> None:
    """Select ``text`` inside the turn the way a mouse drag does (a DOM Range over its text nodes)."""
    page.evaluate(
        """(text) => {
          const box = document.getElementById("turn-text");
          const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
          const nodes = []; let all = "";
          while (walker.nextNode()) { nodes.push([walker.currentNode, all.length]); all += walker.currentNode.data; }
          const at = all.indexOf(text);
          if (at < 0) throw new Error("not in the turn: " + text);
          const find = (pos) => { for (const [n, o] of nodes) if (pos <= o + n.data.length) return [n, pos - o]; };
          const r = document.createRange();
          r.setStart(...find(at)); r.setEnd(...find(at + text.length));
          const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(r);
        }""",
        text,
    )


def test_review_in_the_browser(browser: Any, served: ReviewServer, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(served.url)
    assert "token" not in page.url  # the token went into the cookie, out of the address bar
    page.wait_for_selector("#queue-list li")
    assert page.locator("#queue-list li").count() == 5
    assert "candidate" in page.locator("#queue-list li").first.inner_text()  # lowest probability first
    assert page.locator("#item-badges").inner_text().count("candidate") == 1

    def decided(n: int) -> None:
        page.wait_for_function("(n) => document.getElementById('overall').textContent === n + ' of 5 decided'", arg=n)

    page.keyboard.press("a")  # accept the candidate "Le café a fermé"
    decided(1)
    assert "saved: accept" in page.locator("#saved").inner_text()
    assert log_lines(served)[-1]["action"] == "accept" and log_lines(served)[-1]["coding"]["candidate"] is True

    assert page.locator("#turn-text mark").inner_text() == "the budget was cut again."
    page.keyboard.press("r")
    decided(2)
    assert log_lines(served)[-1]["action"] == "reject"

    assert page.locator("#turn-text mark").inner_text() == "Money is tight"  # t2, p = 0.66
    page.keyboard.press("c")
    page.select_option("#recode-code", "C_staff")
    page.keyboard.press("Enter")
    decided(3)
    last = log_lines(served)[-1]
    assert (last["action"], last["coding"]["code_id"], last["code_id"]) == ("recode", "C_money", "C_staff")

    # "Staff leave every month" (p = 0.91), in the turn with the emoji: add what the machine missed.
    assert page.locator("#turn-text mark").inner_text() == "Staff leave every month"
    assert page.locator("#turn-text b").count() == 0 and "<b>Not bold</b>" in page.locator("#turn-text").inner_text()
    page.select_option("#add-code", "C_staff")
    page.evaluate("document.activeElement.blur()")
    select_text(page, "the équipe is tired")
    page.keyboard.press("s")
    page.wait_for_selector("#added-list li")
    added = log_lines(served)[-1]
    assert added["action"] == "add" and added["coding"]["quote"] == "the équipe is tired"
    assert T1[added["start"] : added["end"]] == "the équipe is tired"

    page.keyboard.press("u")  # undo the addition
    page.wait_for_selector("#added-box", state="hidden")
    assert log_lines(served)[-1]["undoes"] == added["id"]

    select_text(page, "😀 — the budget")  # a selection with the astral character inside it
    page.select_option("#add-code", "C_money")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("s")
    page.wait_for_selector("#added-list li")
    again = log_lines(served)[-1]
    assert T1[again["start"] : again["end"]] == "😀 — the budget" == again["coding"]["quote"]

    page.keyboard.press("t")  # mark t1 reviewed
    page.wait_for_function("() => document.getElementById('b-reviewed').disabled")
    page.select_option("#f-transcript", "t2")
    page.wait_for_function("() => document.querySelectorAll('#queue-list li').length === 1")
    page.keyboard.press("t")
    page.wait_for_function("() => document.getElementById('b-reviewed').disabled")

    page.reload()  # everything shown as saved is still there
    page.wait_for_selector("#queue-list li")
    decided(3)
    classes = page.locator("#queue-list li").evaluate_all("els => els.map(e => e.className.split(' ')[0])")
    assert sorted(classes) == ["accepted", "pending", "pending", "recoded", "rejected"]
    assert page.locator("#p-transcripts tbody").inner_text().count("reviewed") == 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-small.png"), full_page=True)
    page.close()
    assert problems == []  # no script error, no CSP violation

    actions = [d["action"] for d in log_lines(served)]
    assert actions == ["accept", "reject", "recode", "add", "undo", "add", "reviewed", "reviewed"]
    run = served.session.run.path
    summary = export_run(run, tmp_path / "review.qdpx")
    assert summary.skipped == []
    back = read_qdpx(tmp_path / "review.qdpx", load_run(run).transcripts)
    mine = sorted((c.code_id, c.quote) for c in back.codings if c.coder == "quallm reviewed by ann")
    assert mine == [("C_money", "Le café a fermé"), ("C_money", "😀 — the budget"), ("C_staff", "Money is tight")]


def test_screenshot_of_the_demo_run(browser: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = run_extraction(
        [DEMO], Codebook.load(DEMO / "codebook.yaml"), ReplayModel(ROOT / "fixtures" / "recordings" / "demo"), run,
        metadata_path=DEMO / "metadata.csv", codebook_path=DEMO / "codebook.yaml",
    )
    assert report.ok
    srv = ReviewServer(run, "alice")
    srv.start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(srv.url)
        page.wait_for_selector("#queue-list li")
        n = page.locator("#queue-list li").count()
        assert n == len(srv.session.items) > 20
        page.keyboard.press("a")
        page.wait_for_function("() => document.getElementById('saved').className === 'ok'")
        page.keyboard.press("j")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "review.png"
        page.screenshot(path=str(shot))
        page.close()
    finally:
        srv.stop()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    docs = ROOT / "docs" / "review.png"
    if os.environ.get("QUALLM_UPDATE_SCREENSHOT") or not docs.exists():
        docs.write_bytes(shot.read_bytes())
