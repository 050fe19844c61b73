"""Ingest: every reader keeps speakers and exact character offsets into one canonical text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import docx
import pytest
from tests.conftest import DEMO

from quallm.core.errors import InputError
from quallm.ingest.transcripts import load_metadata, load_transcript, load_transcripts


def _check_offsets(t):  # every turn is an exact slice of the canonical text
    for turn in t.turns:
        assert t.text[turn.start : turn.end] == turn.text
        assert turn.text == turn.text.strip() and turn.text


def test_labelled_text_multi_paragraph(sample_txt: Path) -> None:
    t = load_transcript(sample_txt)
    _check_offsets(t)
    assert t.id == "la_sample"
    assert [x.speaker for x in t.turns] == ["Interviewer", "Respondent"] * 3
    assert "courts are slow" in t.turns[3].text and "budget" in t.turns[3].text  # two paragraphs, one turn
    assert [x.is_interviewer for x in t.turns] == [True, False] * 3


@pytest.mark.parametrize(
    ("body", "speakers", "interviewer"),
    [
        ("INT: Hello there?\n\nP3: Fine thanks.\n\nINT: Why?\n\nP3: Because.\n", ["INT", "P3"] * 2, "INT"),
        ("Q: What?\nA: This.\nQ: And?\nA: That.\n", ["Q", "A"] * 2, "Q"),
        ("[00:12:31] I: Who are you?\n[00:12:40] R1: A director.\n", ["I", "R1"], "I"),
        (
            "00:00:05 Jo Bloggs: How is it going?\n00:00:09 Sam Patel: Well.\n00:01:00 Jo Bloggs: Really?\n"
            "00:01:05 Sam Patel: Yes, truly.\n",
            ["Jo Bloggs", "Sam Patel"] * 2,
            "Jo Bloggs",
        ),
        ("**Interviewer:** Hi?\n\n**Respondent:** Hello.\n", ["Interviewer", "Respondent"], "Interviewer"),
        (
            "Helen Wright  0:03\nSo what do you do?\n\nAmir Khan  0:09\nI run the service.\n\n"
            "Helen Wright  0:20\nAnd?\n\nAmir Khan  0:25\nIt works.\n",
            ["Helen Wright", "Amir Khan"] * 2,
            "Helen Wright",
        ),
    ],
)
def test_label_styles(tmp_path: Path, body: str, speakers: list[str], interviewer: str) -> None:
    p = tmp_path / "t.md"
    p.write_text(body, encoding="utf-8")
    t = load_transcript(p)
    _check_offsets(t)
    assert [x.speaker for x in t.turns] == speakers
    assert {x.speaker for x in t.turns if x.is_interviewer} == {interviewer}


def test_name_with_role_in_brackets(tmp_path: Path) -> None:
    # dev-la's la_e style: the role, not who asks questions, decides the interviewer; the name is the speaker.
    body = (
        "Claire (interviewer): Thanks. What changed?\n\nMartin: Early help, first. Has it worked? Yes.\n\n"
        "Priya: And the drug service? It helps.\n\nClaire (interviewer): Has that needed money?\n\n"
        "Martin: Yes.\n\nPriya: Agreed.\n\nSam (Respondent): One more point.\n"
    )
    p = tmp_path / "t.txt"
    p.write_text(body, encoding="utf-8")
    t = load_transcript(p)
    _check_offsets(t)
    assert [x.speaker for x in t.turns] == ["Claire", "Martin", "Priya", "Claire", "Martin", "Priya", "Sam"]
    assert {x.speaker for x in t.turns if x.is_interviewer} == {"Claire"}
    assert t.turns[0].text == "Thanks. What changed?"


def test_timestamps_kept(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("[00:12:31] INT: Who?\n[00:12:40] P1: Me.\n", encoding="utf-8")
    t = load_transcript(p)
    assert [x.timestamp for x in t.turns] == ["00:12:31", "00:12:40"]


def test_one_off_colon_is_not_a_speaker(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("Interviewer: Tell me.\n\nRespondent: Two things.\nMonday: we plan.\n\nInterviewer: Ok.\n", "utf-8")
    t = load_transcript(p)
    assert [x.speaker for x in t.turns] == ["Interviewer", "Respondent", "Interviewer"]
    assert "Monday: we plan." in t.turns[1].text


def test_no_labels_falls_back_to_paragraphs_with_warning(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("First paragraph here.\nStill first.\n\nSecond paragraph.\n", encoding="utf-8")
    t = load_transcript(p)
    _check_offsets(t)
    assert len(t.turns) == 2 and t.turns[0].text == "First paragraph here.\nStill first."
    assert any("no speaker labels" in w for w in t.warnings)


def test_encodings_bom_cp1252_crlf(tmp_path: Path) -> None:
    body = "Interviewer: Caf\u00e9 \u2018quotes\u2019?\r\nRespondent: Yes \u2013 fine.\r\n"
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    (tmp_path / "win.txt").write_bytes(body.encode("cp1252"))
    a, b = load_transcript(tmp_path / "bom.txt"), load_transcript(tmp_path / "win.txt")
    assert a.text == b.text and "\r" not in a.text and not a.text.startswith("\ufeff")
    assert a.turns[0].text == "Caf\u00e9 \u2018quotes\u2019?"
    assert any("cp1252" in w for w in b.warnings) and not a.warnings


def test_webvtt_voice_tags_and_prefixes_merge_cues(tmp_path: Path) -> None:
    p = tmp_path / "call.vtt"
    p.write_text(
        "WEBVTT\n\n1\n00:00:01.000 --> 00:00:03.000\n<v Sarah Jones>What do you do?</v>\n\n"
        "2\n00:00:03.500 --> 00:00:06.000\n<v Amir Khan>I lead the service.</v>\n\n"
        "3\n00:00:06.000 --> 00:00:09.000\n<v Amir Khan>It is busy.</v>\n\n"
        "00:00:09.000 --> 00:00:10.000\nSarah Jones: Thanks?\n",
        encoding="utf-8",
    )
    t = load_transcript(p)
    _check_offsets(t)
    assert [x.speaker for x in t.turns] == ["Sarah Jones", "Amir Khan", "Sarah Jones"]
    assert t.turns[1].text == "I lead the service. It is busy."
    assert (t.turns[1].timestamp, t.turns[1].end_timestamp) == ("00:00:03.500", "00:00:09")
    assert t.turns[0].is_interviewer and not t.turns[1].is_interviewer


def test_srt(tmp_path: Path) -> None:
    p = tmp_path / "call.srt"
    p.write_text(
        "1\n00:00:01,000 --> 00:00:02,000\nINT: Hello?\n\n2\n00:00:02,500 --> 00:00:04,000\nP1: Hi there.\n\n"
        "3\n00:00:04,000 --> 00:00:05,000\nP1: More.\n",
        encoding="utf-8",
    )
    t = load_transcript(p)
    _check_offsets(t)
    assert [(x.speaker, x.text) for x in t.turns] == [("INT", "Hello?"), ("P1", "Hi there. More.")]


def test_docx(tmp_path: Path) -> None:
    d = docx.Document()
    for line in [
        "Interviewer: What helps?",
        "Helen Wright: Early help does.",
        "Interviewer: Why?",
        "Helen Wright: It is early.",
    ]:
        d.add_paragraph(line)
    d.save(str(tmp_path / "w.docx"))
    t = load_transcript(tmp_path / "w.docx")
    _check_offsets(t)
    assert [x.speaker for x in t.turns] == ["Interviewer", "Helen Wright"] * 2


def test_json(tmp_path: Path) -> None:
    p = tmp_path / "j.json"
    p.write_text(json.dumps([{"speaker": "Interviewer", "text": "Q?"}, {"speaker": "P1", "text": "A."}]), "utf-8")
    t = load_transcript(p)
    _check_offsets(t)
    assert [x.speaker for x in t.turns] == ["Interviewer", "P1"]


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("empty.txt", b"   \n", "empty"),
        ("bin.txt", b"\x00\x01\x02binary", "binary"),
        ("x.pdf", b"%PDF-1.4", "unknown extension"),
        ("bad.json", b"{not json", "invalid JSON"),
        ("bad.docx", b"not a zip", "Word document"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path: Path, name: str, data: bytes, problem: str) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(InputError) as ei:
        load_transcript(p)
    assert str(p) in str(ei.value) and problem in str(ei.value) and "\n" not in str(ei.value)


def test_batch_goes_on_after_bad_file(tmp_path: Path, sample_txt: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    out = list(load_transcripts([tmp_path]))
    assert sum(isinstance(o, InputError) for o in out) == 1 and len(out) == 2


def test_metadata_sidecar(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("transcript_id,care_trend,region\nla01,increasing,North\n", encoding="utf-8")
    assert load_metadata(p) == {"la01": {"care_trend": "increasing", "region": "North"}}
    bad = tmp_path / "b.csv"
    bad.write_text("id,x\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError, match="transcript_id"):
        load_metadata(bad)


def test_demo_fixtures_parse_and_reference_quotes_sit_in_their_turns() -> None:
    meta = load_metadata(DEMO / "metadata.csv")
    transcripts = {}
    for p in sorted(DEMO.iterdir()):
        if p.suffix in (".txt", ".vtt", ".docx"):
            t = load_transcript(p, meta[p.stem])
            _check_offsets(t)
            assert t.metadata["care_trend"] in {"increasing", "decreasing", "little change"}
            assert sum(x.is_interviewer for x in t.turns) >= 5
            transcripts[t.id] = t
    assert {t.format for t in transcripts.values()} >= {"text", "vtt", "docx"} and len(transcripts) >= 4
    with open(DEMO / "human_coding.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["coder"] for r in rows} >= {"coder_a", "coder_b"}
    for r in rows:
        turn = transcripts[r["transcript_id"]].turns[int(r["turn_index"])]
        assert not turn.is_interviewer
        assert r["quote"] in turn.text, r
