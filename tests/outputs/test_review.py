"""Review of machine codings: the decision log, the session, what decisions mean downstream, and the
web app's security rules (driven over real HTTP against the uvicorn server)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.review_run import CODER, T1, make_review_run

from quallm.analysis.agreement import read_human_csv
from quallm.analysis.reconciling import load_run, reconcile_run
from quallm.analysis.reviewed import review_counts, review_labels, reviewed_codings
from quallm.core.errors import InputError
from quallm.ingest.qdpx import read_qdpx
from quallm.outputs.qdpx import export_run
from quallm.outputs.report import build_report_html
from quallm.outputs.review.app import CSRF_HEADER, csrf_value
from quallm.outputs.review.server import ReviewServer
from quallm.outputs.review.session import DecisionRefused, ReviewSession
from quallm.run.review_log import Decision, DecisionLog, read_log
from quallm.run.rundir import RunDir


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_review_run(tmp_path)


def item(session: ReviewSession, quote: str) -> str:
    return next(it.id for it in session.items if it.coding.quote == quote)


# --- the log


def test_log_appends_durably_reports_corrupt_lines_and_never_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "review.jsonl"
    log = DecisionLog(path)
    log.append(Decision(reviewer="ann", action="reviewed", transcript_id="t1"))
    first = path.read_bytes()
    with open(path, "ab") as fh:  # a line torn by a crash, then a hand-edited wrong line
        fh.write(b'{"reviewer": "ann", "action": "acc')
    log.append(Decision(reviewer="ann", action="reviewed", transcript_id="t2"))
    with open(path, "ab") as fh:
        fh.write(b'{"reviewer": "ann", "action": "shrug", "transcript_id": "t3"}\n')
    log.append(Decision(reviewer="bob", action="reviewed", transcript_id="t3"))
    assert path.read_bytes().startswith(first)  # appended to, never rewritten
    read = read_log(path)
    assert [(d.reviewer, d.transcript_id) for d in read.decisions] == [("ann", "t1"), ("ann", "t2"), ("bob", "t3")]
    assert read.corrupt == 2
    assert "line 2: not a JSON line" in read.problems[0] and "line 4: action" in read.problems[1]


def test_a_session_opens_past_corrupt_lines_and_says_so(run: Path) -> None:
    s = ReviewSession(run, "ann")
    s.decide({"action": "accept", "item": item(s, "Money is tight")})
    with open(run / "review.jsonl", "ab") as fh:
        fh.write(b"\xff\xfe garbage\n")
    again = ReviewSession(run, "ann")
    assert again.state.status(item(again, "Money is tight")) == "accepted"
    info = again.summary()
    assert info["corrupt_lines"] == 1 and "line 2" in info["log_problems"][0]
    again.decide({"action": "reviewed", "transcript_id": "t2"})  # appending goes on after the bad line
    assert [d.action for d in read_log(run / "review.jsonl").decisions] == ["accept", "reviewed"]


# --- the session


def test_queue_lowest_probability_first_with_candidates_marked(run: Path) -> None:
    s = ReviewSession(run, "ann")
    probs = [(it.coding.probability, it.candidate) for it in s.items]
    assert probs == [(0.08, True), (0.42, False), (0.66, False), (0.91, False), (None, False)]
    assert [i["probability"] for i in s.list_items(candidates=False)] == [0.42, 0.66, 0.91, None]
    assert {i["transcript_id"] for i in s.list_items(transcript="t2")} == {"t2"}
    assert {i["code_id"] for i in s.list_items(code="E_help")} == {"E_help"}
    view = s.list_items(code="C_money", transcript="t1", candidates=False)[0]
    ctx = view["context"]
    assert ctx["turn"]["quote"] == "the budget was cut again."
    assert ctx["turn"]["before"].endswith("😀 — ")  # the quote is cut out of its own turn
    assert ctx["question"]["text"] == "How are things with the budget?"


def test_decisions_add_with_utf16_offsets_undo_and_resume(run: Path) -> None:
    s = ReviewSession(run, "ann")
    s.decide({"action": "accept", "item": item(s, "the budget was cut again.")})
    s.decide({"action": "reject", "item": item(s, "Family support keeps niños at home")})
    s.decide({"action": "recode", "item": item(s, "Staff leave every month"), "code_id": "C_staff"})
    turn = s.transcripts["t1"].turns[1]
    words = "the équipe is tired"
    # What a browser sends: UTF-16 offsets into the turn; the emoji before them counts two units.
    u16 = turn.text.encode("utf-16-le")
    start16 = u16.index(words.encode("utf-16-le")) // 2
    assert start16 == turn.text.index(words) + 1
    added = s.decide({"action": "add", "transcript_id": "t1", "turn_index": 1, "start": start16 - 1,
                      "end": start16 + len(words), "offsets": "utf16", "code_id": "C_staff"})
    assert added.coding is not None and added.coding.quote == words  # the space before was trimmed
    assert T1[added.start : added.end] == words  # type: ignore[misc]
    assert s.state.status(item(s, "Staff leave every month")) == "recoded"
    with pytest.raises(DecisionRefused, match="do not fall on characters"):  # inside the emoji's pair
        emoji16 = u16.index("😀".encode("utf-16-le")) // 2
        s.decide({"action": "add", "transcript_id": "t1", "turn_index": 1, "start": emoji16 + 1,
                  "end": emoji16 + 4, "offsets": "utf16", "code_id": "C_staff"})
    with pytest.raises(DecisionRefused, match="unknown code"):
        s.decide({"action": "recode", "item": item(s, "Money is tight"), "code_id": "nope"})
    with pytest.raises(DecisionRefused, match="no item"):
        s.decide({"action": "accept", "item": "missing"})
    undo = s.decide({"action": "undo"})
    assert undo.undoes == added.id and s.state.added == []
    s.decide({"action": "undo"})  # the recode
    assert s.state.status(item(s, "Staff leave every month")) == "pending"
    s.decide({"action": "reviewed", "transcript_id": "t1"})

    again = ReviewSession(run, "ann")  # reopening resumes from the log
    assert again.state.status(item(again, "the budget was cut again.")) == "accepted"
    assert again.state.status(item(again, "Family support keeps niños at home")) == "rejected"
    assert again.state.status(item(again, "Staff leave every month")) == "pending"
    assert set(again.state.reviewed) == {"t1"}
    assert ReviewSession(run, "bob").state.item_decisions == {}  # decisions are per reviewer
    lines = (run / "review.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["action"] for x in lines] == ["accept", "reject", "recode", "add", "undo", "undo", "reviewed"]
    first = json.loads(lines[0])
    assert first["reviewer"] == "ann" and first["time"] and first["coding"]["coder"] == CODER
    assert (first["start"], first["end"]) == (T1.index("the budget was"), T1.index("the budget was") + 25)


def test_reviewed_coding_labels_and_counts(run: Path) -> None:
    s = ReviewSession(run, "ann")
    s.decide({"action": "accept", "item": item(s, "the budget was cut again.")})
    s.decide({"action": "accept", "item": item(s, "Le café a fermé")})  # a candidate
    s.decide({"action": "reject", "item": item(s, "Family support keeps niños at home")})
    s.decide({"action": "recode", "item": item(s, "Staff leave every month"), "code_id": "C_staff"})
    start = T1.index("early help works")
    s.decide({"action": "add", "transcript_id": "t1", "start": start, "end": start + 16, "code_id": "E_help"})
    s.decide({"action": "accept", "item": item(s, "Money is tight")})  # t2 is never marked reviewed
    assert reviewed_codings(run).codings == []  # nothing counts until a transcript is marked reviewed
    s.decide({"action": "reviewed", "transcript_id": "t1"})

    got = reviewed_codings(run)
    assert got.coverage == {"quallm reviewed by ann": {"t1"}}
    rows = sorted((c.code_id, c.quote) for c in got.codings)
    assert rows == [("C_money", "Le café a fermé"), ("C_money", "the budget was cut again."),
                    ("C_staff", "Staff leave every month"), ("E_help", "early help works")]
    assert all(T1[c.start : c.end] == c.quote for c in got.codings)  # type: ignore[misc]
    recoded = next(c for c in got.codings if c.code_id == "C_staff")
    memo = recoded.rationale or ""
    assert "recoded from E_help by ann" in memo and "model says E_help" in memo

    labels = {(lb.code_id, lb.applies, lb.source) for lb in review_labels(run)}
    assert ("E_help", False, "reject") in labels and ("E_help", False, "recode-from") in labels
    assert ("C_staff", True, "recode-to") in labels and ("E_help", True, "add") in labels
    assert ("C_money", True, "accept") in labels
    decisions = read_log(run / "review.jsonl").decisions
    counts = {c.code_id: c for c in review_counts(decisions, ["C_money", "C_staff", "E_help"])}
    assert (counts["C_money"].accepted, counts["E_help"].rejected, counts["E_help"].recoded) == (3, 1, 1)
    assert (counts["C_staff"].recoded_to, counts["E_help"].added) == (1, 1)


def test_reconcile_export_and_report_carry_the_reviewed_coding(run: Path, tmp_path: Path) -> None:
    s = ReviewSession(run, "ann")
    for q in ("the budget was cut again.", "Money is tight"):
        s.decide({"action": "accept", "item": item(s, q)})
    s.decide({"action": "reject", "item": item(s, "Staff leave every month")})
    start = T1.index("Staff leave")
    s.decide({"action": "add", "transcript_id": "t1", "start": start, "end": start + 23, "code_id": "C_staff"})
    for tid in ("t1", "t2"):
        s.decide({"action": "reviewed", "transcript_id": tid})
    human = tmp_path / "human.csv"
    human.write_text("transcript_id,coder,code_id,turn_index,quote\n"
                     "t1,coder_a,C_money,1,the budget was cut again\nt2,coder_a,C_money,1,Money is tight\n"
                     "t1,coder_b,C_money,1,the budget was cut again\nt2,coder_b,C_staff,1,we lose staff\n",
                     encoding="utf-8")
    report, problems = reconcile_run(run, [human], n_boot=0)
    assert problems == []
    kinds = {p.pair: p.kind for p in report.pairs}
    assert kinds["coder_a vs coder_b"] == "human-human"
    assert kinds["coder_a vs quallm reviewed by ann"] == "reviewed-human"
    assert kinds["quallm reviewed by ann vs quallm (fake-model)"] == "reviewed-machine"
    assert report.reviewed_coders == ["quallm reviewed by ann"]
    assert "quallm reviewed by ann" not in report.machine_coders
    assert all("reviewed" not in p.pair for p in report.pairs if p.kind == "human-human")
    assert any("reviewed machine coding" in n for n in report.notes)

    summary = export_run(run, tmp_path / "p.qdpx")
    assert summary.skipped == []
    back = read_qdpx(tmp_path / "p.qdpx", load_run(run).transcripts)
    by_coder: dict[str, set[tuple[str, str | None]]] = {}
    for c in back.codings:
        by_coder.setdefault(c.coder, set()).add((c.code_id, c.quote))
    assert by_coder["quallm reviewed by ann"] == {("C_money", "the budget was cut again."),
                                                  ("C_money", "Money is tight"), ("C_staff", "Staff leave every month")}
    assert ("E_help", "Staff leave every month") in by_coder["quallm (fake-model)"]  # the original stays
    reviewed_notes = [c.rationale for c in back.codings if c.coder == "quallm reviewed by ann"]
    assert any("Review: accepted by ann" in (n or "") for n in reviewed_notes)
    assert any("Review: added by ann" in (n or "") for n in reviewed_notes)

    html = build_report_html(RunDir(run))
    section = html.split('<section id="review">', 1)[1].split("</section>", 1)[0]
    assert "ann (2 of 2 transcripts marked" in section
    cells = {m[0]: [int(x) for x in re.findall(r'<td class="num">(\d+)</td>', m[1])]
             for m in re.findall(r"<tr><td>([^<]+?) <span.*?</span></td>(.*?)</tr>", section, re.S)}
    # accepted, rejected, recoded away, recoded to, added
    assert cells == {"Funding pressure": [2, 0, 0, 0, 0], "Staff turnover": [0, 0, 0, 0, 1],
                     "Early help": [0, 1, 0, 0, 0]}
    assert "(reviewed machine coding)" in html  # the pairs' kind in the agreement table


def test_reconcile_with_a_review_needs_no_human_file(run: Path) -> None:
    s = ReviewSession(run, "ann")
    s.decide({"action": "accept", "item": item(s, "Money is tight")})
    s.decide({"action": "reviewed", "transcript_id": "t2"})
    report, _ = reconcile_run(run, [], n_boot=0)
    assert [p.kind for p in report.pairs] == ["reviewed-machine"]


def test_bad_run_directories_get_clear_messages(tmp_path: Path, run: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        ReviewSession(tmp_path / "nope", "ann")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no manifest\.json"):
        ReviewSession(tmp_path / "empty", "ann")
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "manifest.json").write_text('{"status": "running"}', encoding="utf-8")
    with pytest.raises(InputError, match="incomplete run: no results/"):
        ReviewSession(tmp_path / "started", "ann")
    (tmp_path / "started" / "results").mkdir()
    with pytest.raises(InputError, match="no transcript has a result yet"):
        ReviewSession(tmp_path / "started", "ann")
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}), encoding="utf-8")
    (tmp_path / "transcripts" / "t2.txt").unlink()
    s = ReviewSession(run, "ann")
    assert {i.coding.transcript_id for i in s.items} == {"t1"}
    assert any("not finished" in n for n in s.notices) and any("t2.txt: file not found" in n for n in s.notices)
    cli = subprocess.run([sys.executable, "-m", "quallm.cli", "review", str(tmp_path / "nope"), "--no-browser"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                         timeout=60)
    assert cli.returncode == 2 and "does not exist" in cli.stderr


# --- the server's security rules, over real HTTP


@pytest.fixture
def server(run: Path) -> Any:
    srv = ReviewServer(run, "ann")
    srv.start()
    yield srv
    srv.stop()


def request(srv: ReviewServer, method: str, path: str, headers: dict[str, str] | None = None,
            body: Any = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    hdrs = {"Host": f"127.0.0.1:{srv.port}", **(headers or {})}
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def test_every_route_needs_the_token(server: ReviewServer) -> None:
    for path in ("/", "/api/items", "/api/session", "/api/progress", "/static/review.js", "/static/review.css"):
        status, headers, _ = request(server, "GET", path)
        assert status == 403, path
        assert headers["referrer-policy"] == "no-referrer"
    status, _, _ = request(server, "GET", "/api/items", {"Authorization": "Bearer wrong"})
    assert status == 403
    status, _, _ = request(server, "GET", "/api/items?token=wrong")
    assert status == 403
    status, _, _ = request(server, "POST", "/api/decisions", {"Content-Type": "application/json"},
                           {"action": "reviewed", "transcript_id": "t1"})
    assert status == 403
    assert not (server.session.run.path / "review.jsonl").exists()


def test_token_url_sets_a_strict_httponly_cookie_and_the_page_is_locked_down(server: ReviewServer) -> None:
    status, headers, _ = request(server, "GET", f"/?token={server.token}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and server.token in cookie
    name = cookie.split("=", 1)[0]
    status, headers, body = request(server, "GET", "/", {"Cookie": f"{name}={server.token}"})
    assert status == 200
    csp = headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp and "default-src 'none'" in csp
    assert headers["referrer-policy"] == "no-referrer"
    page = body.decode()
    assert "<script src=\"/static/review.js\"" in page and "<script>" not in page and "style=" not in page
    assert server.token not in page  # only the derived CSRF value is in the page
    status, _, body = request(server, "GET", "/api/items", {"Cookie": f"{name}={server.token}"})
    assert status == 200 and "<b>Not bold</b>" in json.loads(body)["items"][0]["context"]["turn"]["after"]


def test_bad_host_is_refused(server: ReviewServer) -> None:
    auth = {"Authorization": f"Bearer {server.token}"}
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1:1"):
        status, _, _ = request(server, "GET", "/api/items", {**auth, "Host": host})
        assert status == 400, host
    assert request(server, "GET", "/api/items", {**auth, "Host": f"localhost:{server.port}"})[0] == 200


def test_cross_site_posts_are_refused(server: ReviewServer) -> None:
    status, headers, _ = request(server, "GET", f"/?token={server.token}")
    cookie = headers["set-cookie"].split(";", 1)[0]
    good = {"Cookie": cookie, "Content-Type": "application/json", CSRF_HEADER: csrf_value(server.token)}
    body = {"action": "reviewed", "transcript_id": "t1"}
    refused = [
        {**good, "Origin": "http://evil.example"},
        {**good, "Sec-Fetch-Site": "cross-site"},
        {**good, "Sec-Fetch-Site": "same-site"},
        {k: v for k, v in good.items() if k != CSRF_HEADER},
        {**good, CSRF_HEADER: "guess"},
    ]
    for hdrs in refused:
        status, _, out = request(server, "POST", "/api/decisions", hdrs, body)
        assert status == 403, (hdrs, out)
    form = {**good, "Content-Type": "application/x-www-form-urlencoded"}
    assert request(server, "POST", "/api/decisions", form, b"action=reviewed&transcript_id=t1")[0] == 415
    assert not (server.session.run.path / "review.jsonl").exists()
    same = {**good, "Origin": f"http://127.0.0.1:{server.port}", "Sec-Fetch-Site": "same-origin"}
    status, _, out = request(server, "POST", "/api/decisions", same, body)
    assert status == 200 and json.loads(out)["saved"] is True
    # Scripts: the bearer token alone is enough (no browser can add it to a cross-site request).
    status, _, out = request(server, "POST", "/api/decisions",
                             {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
                             {"action": "reviewed", "transcript_id": "t2"})
    assert status == 200
    assert [d.transcript_id for d in read_log(server.session.run.path / "review.jsonl").decisions] == ["t1", "t2"]


def test_api_reports_bad_decisions_and_a_decision_shown_saved_survives_a_kill(run: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "quallm.cli", "review", str(run), "--reviewer", "ann", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if line.startswith("Open: "):
                url = line.split()[1]
                break
        assert url.startswith("http://127.0.0.1:")
        port = int(url.split(":")[2].split("/")[0])
        token = url.split("token=")[1]
        auth = {"Host": f"127.0.0.1:{port}", "Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        def post(body: dict[str, Any]) -> tuple[int, Any]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/api/decisions", body=json.dumps(body), headers=auth)
            r = conn.getresponse()
            return r.status, json.loads(r.read())

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/items?status=pending&candidates=0", headers=auth)
        items = json.loads(conn.getresponse().read())["items"]
        assert [i["probability"] for i in items] == [0.42, 0.66, 0.91, None]
        status, out = post({"action": "accept", "item": items[0]["id"]})
        assert status == 200 and out["saved"] is True
        assert post({"action": "fly"})[0] == 400
        assert "unknown code" in post({"action": "recode", "item": items[1]["id"], "code_id": "X"})[1]["error"]
        status, out = post({"action": "reject", "item": items[1]["id"]})
        assert status == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    s = ReviewSession(run, "ann")
    assert [d.action for d in s.decisions] == ["accept", "reject"]
    assert s.state.status(items[0]["id"]) == "accepted" and s.state.status(items[1]["id"]) == "rejected"


def test_human_csv_import_is_unchanged_by_review_coders(run: Path, tmp_path: Path) -> None:
    # A human coder whose name happens to start with the machine prefix is still detected as before.
    human = tmp_path / "h.csv"
    human.write_text("transcript_id,coder,code_id,turn_index,quote\nt2,quallm-ish,C_money,1,Money is tight\n",
                     encoding="utf-8")
    got, problems = read_human_csv(human, load_run(run).transcripts, None)
    assert problems == [] and got[0].coder == "quallm-ish"


def test_cli_reconcile_takes_the_review_without_a_human_file(run: Path) -> None:
    from typer.testing import CliRunner

    from quallm.cli import app

    s = ReviewSession(run, "ann")
    s.decide({"action": "reject", "item": item(s, "Money is tight")})
    s.decide({"action": "reviewed", "transcript_id": "t2"})
    r = CliRunner().invoke(app, ["reconcile", str(run), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert "reviewed-machine" in r.output and (run / "agreement.json").is_file()
    r = CliRunner().invoke(app, ["review", "--help"])
    assert r.exit_code == 0 and "--reviewer" in r.output and "--no-browser" in r.output
