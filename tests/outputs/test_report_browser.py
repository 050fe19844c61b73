"""The report in a real browser: headless Chromium loads it from file://, logs nothing, shows every section.

Needs a Chromium binary (Debian: ``apt-get install -y chromium``; or set ``QUALLM_CHROMIUM``); skipped
with the reason when none is found. Leaves a screenshot in ``test-artifacts/report.png``; with
``QUALLM_UPDATE_SCREENSHOT=1`` (or when it is missing) it also refreshes ``docs/report-screenshot.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from tests.conftest import ROOT
from tests.outputs.test_report import SECTIONS, build_demo_run

from quallm.outputs.report import render_report


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("QUALLM_CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
        "/usr/bin/chromium",
    ):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary found (apt-get install -y chromium, or set QUALLM_CHROMIUM to its path)",
)
# A console line in Chromium's stderr log: [pid:tid:date/time:LEVEL:CONSOLE:line] "message", source: url (line)
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, isolated (own profile, no background network), logging the console to stderr."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def console_lines(stderr: str) -> list[str]:
    """The console messages in Chromium's log (the report runs no scripts, so every one is a problem)."""
    return [m.group(1) for line in stderr.splitlines() if (m := CONSOLE.search(line))]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = build_demo_run(tmp_path_factory.mktemp("browser") / "run")
    return render_report(run)


def test_console_check_sees_errors(tmp_path: Path) -> None:
    # The check below is only worth something if a page that does log is caught.
    page = tmp_path / "noisy.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
        '<img src="https://example.invalid/x.png"><script>console.error("boom")</script></body></html>',
        encoding="utf-8",
    )
    res = run_chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    lines = console_lines(res.stderr)
    assert any("boom" in line for line in lines), res.stderr[-2000:]
    assert any("Content Security Policy" in line for line in lines)  # a fetch the policy blocked


def test_report_loads_cleanly_with_every_section(report: Path, tmp_path: Path) -> None:
    res = run_chromium(tmp_path / "profile", "--dump-dom", report.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_lines(res.stderr) == []
    dom = res.stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    assert dom.count("<mark") >= 40 and "<svg" in dom
    assert "Study summary" in dom and "coder_a vs coder_b" in dom


def test_report_screenshot(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    res = run_chromium(
        tmp_path / "profile",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1280,2000",
        f"--screenshot={shot}",
        report.as_uri(),
    )
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2000)
    assert len(data) > 50_000  # a blank page compresses to a few kilobytes
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(shot, artifacts / "report.png")
    docs = ROOT / "docs" / "report-screenshot.png"
    if os.environ.get("QUALLM_UPDATE_SCREENSHOT") == "1" or not docs.exists():
        shutil.copyfile(shot, docs)
