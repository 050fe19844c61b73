"""REFI-QDA exchange: export validates against the Project XSD, import gives the same codings back."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from quallm.analysis.agreement import read_human_csv
from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.core.errors import InputError
from quallm.core.results import TranscriptResult
from quallm.core.transcript import Transcript
from quallm.ingest.codebooks import load_codebook
from quallm.ingest.qdpx import NAMESPACE, read_qdpx
from quallm.ingest.refi import code_guid, source_guid
from quallm.ingest.transcripts import load_transcript
from quallm.outputs.qdpx import build_project, export_run, validate_project, write_qdpx
from quallm.run.rundir import RunDir

XSD = Path(__file__).parents[1] / "data" / "refi" / "Project.xsd"
MACHINE = "quallm (fake-model)"

CODEBOOK = """
name: Tiny
version: "2"
codes:
  - id: C_money
    kind: challenge
    label: Funding pressure
    definition: Budgets and money are short.
    include: [cuts, overspends]
  - id: C_courts
    kind: challenge
    label: Court delay
    definition: Care proceedings take too long.
  - id: E_help
    kind: enabler
    label: Early help
    definition: Early help and family support keep children at home.
"""

# Non-ASCII on purpose: é and £ are one code point but two UTF-8 bytes; 😀 and 🙁 are one code point,
# two UTF-16 code units and four UTF-8 bytes. Everything after them pins the offset convention.
LA_ONE = (
    "Interviewer: Thanks for joining 😀 What gets in the way?\n\n"
    "Respondent: Honestly the budget is the big thing. We overspent by £4.2 million last year 🙁 "
    "and the café for families closed.\n\n"
    "Interviewer: And the courts?\n\n"
    "Respondent: The courts are slow, which doesn't help anyone.\n"
)

LA_TWO = """Interviewer: What helps?

Respondent: Our early help offer has been transformative. Family support workers go in quickly.

Interviewer: Anything else?

Respondent: Money, always money. The budget is tight.
"""


def fragment_coding(t: Transcript, coder: str, code: str, fragment: str, **kw: object) -> Coding:
    start = t.text.index(fragment)
    end = start + len(fragment)
    turn = t.turn_at(start)
    assert turn is not None
    return Coding(transcript_id=t.id, coder=coder, code_id=code, start=start, end=end, quote=t.text[start:end],
                  turn_index=turn.index, speaker=turn.speaker, **kw)  # type: ignore[arg-type]


@pytest.fixture
def codebook(tmp_path: Path) -> Codebook:
    p = tmp_path / "codebook.yaml"
    p.write_text(CODEBOOK, encoding="utf-8")
    return load_codebook(p)


@pytest.fixture
def transcripts(tmp_path: Path) -> list[Transcript]:
    out = []
    for name, text in (("la_one", LA_ONE), ("la_two", LA_TWO)):
        p = tmp_path / f"{name}.txt"
        p.write_text(text, encoding="utf-8")
        out.append(load_transcript(p))
    return out


@pytest.fixture
def codings(transcripts: list[Transcript]) -> list[Coding]:
    one, two = transcripts
    machine = {"alignment": "exact", "confidence": 0.9}
    return [
        fragment_coding(one, MACHINE, "C_money", "We overspent by £4.2 million last year",
                        rationale="An overspend is budget pressure.", **machine),
        fragment_coding(one, MACHINE, "C_money", "the café for families closed", rationale="A service lost.",
                        alignment="fuzzy", confidence=0.123456789),  # confidence survives to the last digit
        fragment_coding(one, MACHINE, "C_courts", "The courts are slow", rationale="Court delay.", **machine),
        fragment_coding(two, MACHINE, "E_help", "Our early help offer has been transformative",
                        rationale="Early help named as what helps.", **machine),
        fragment_coding(two, MACHINE, "C_money", "The budget is tight", **machine),  # no rationale
        fragment_coding(one, "alice", "C_money", "Honestly the budget is the big thing"),
        fragment_coding(one, "alice", "C_money", "£4.2 million last year 🙁 and the café"),
        fragment_coding(one, "alice", "C_courts", "The courts are slow, which doesn't help anyone.",
                        rationale="Clear complaint about delay."),
        fragment_coding(two, "bob", "E_help", "Family support workers go in quickly."),
        fragment_coding(two, "bob", "C_money", "Money, always money."),
        fragment_coding(two, "bob", "C_money", "Money, always money."),  # a duplicate stays a duplicate
    ]


def key(c: Coding) -> tuple[object, ...]:
    return (c.transcript_id, c.coder, c.code_id, c.start, c.end, c.quote)


def ordered(codings: list[Coding]) -> list[Coding]:
    return sorted(codings, key=lambda c: (c.transcript_id, c.coder, c.code_id, c.start or -1, c.end or -1))


def qde_of(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        return zf.read("project.qde").decode("utf-8")


# --------------------------------------------------------------------------------------------- export


def test_round_trip_validates_and_gives_the_same_codings(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook, codings: list[Coding]
) -> None:
    out = tmp_path / "project.qdpx"
    summary = write_qdpx(out, transcripts, codebook, codings, project_name="Tiny study", machine_user_name=MACHINE)
    assert summary.skipped == []
    assert (summary.sources, summary.codes, summary.users, summary.selections) == (2, 3, 3, 11)
    assert summary.notes == 6  # five machine codings (metadata line even without rationale) + alice's rationale
    assert validate_project(out, XSD) == []

    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        for t in transcripts:
            g = source_guid(t.id)
            assert f"sources/{g}.txt" in names
            assert zf.read(f"sources/{g}.txt") == t.text.encode("utf-8")  # canonical text, UTF-8, unchanged
    qde = qde_of(out)
    assert f'plainTextPath="internal://{source_guid("la_one")}.txt"' in qde

    imported = read_qdpx(out, transcripts, codebook)
    assert imported.problems == []
    assert sorted(map(key, imported.codings)) == sorted(map(key, codings))
    # Notes carry rationale, alignment and confidence back; turns and speakers are re-derived.
    assert ordered(imported.codings) == ordered(codings)
    assert set(imported.users.values()) == {MACHINE, "alice", "bob"}
    assert imported.sources == {t.id: t.text for t in transcripts}
    matched = {c.name: c.code_id for c in imported.codes}
    assert matched == {"Challenges": None, "Enablers": None, "Funding pressure": "C_money",
                       "Court delay": "C_courts", "Early help": "E_help"}


def test_offsets_are_unicode_code_points(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook, codings: list[Coding]
) -> None:
    out = tmp_path / "p.qdpx"
    write_qdpx(out, transcripts, codebook, codings)
    text = transcripts[0].text
    fragment = "the café for families closed"
    start = text.index(fragment)  # Python str offsets are code points
    # The fragment sits after 😀, £ and 🙁, so bytes, UTF-16 units and code points all differ.
    utf16_start = len(text[:start].encode("utf-16-le")) // 2
    utf8_start = len(text[:start].encode("utf-8"))
    assert len({start, utf16_start, utf8_start}) == 3
    qde = qde_of(out)
    assert f'startPosition="{start}" endPosition="{start + len(fragment)}"' in qde
    assert f'startPosition="{utf16_start}"' not in qde and f'startPosition="{utf8_start}"' not in qde
    # And the other way round: without transcripts the slice of the stored text is the fragment.
    imported = read_qdpx(out)
    assert any(c.quote == fragment for c in imported.codings)


def test_notes_hang_off_the_selection(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook, codings: list[Coding]
) -> None:
    xml, _, _ = build_project(transcripts, codebook, codings, created="2024-01-02T03:04:05Z")
    from lxml import etree

    root = etree.fromstring(xml)
    ns = {"q": NAMESPACE}
    notes = {n.get("guid"): n for n in root.findall("q:Notes/q:Note", ns)}
    refs = root.findall(".//q:PlainTextSelection/q:NoteRef", ns)
    assert refs and {r.get("targetGUID") for r in refs} == set(notes)
    texts = [n.findtext("q:PlainTextContent", namespaces=ns) for n in notes.values()]
    assert "An overspend is budget pressure.\n\nquallm: alignment=exact confidence=0.9" in texts
    assert "quallm: alignment=exact confidence=0.9" in texts  # the coding without rationale
    assert "Clear complaint about delay." in texts  # a human rationale: no metadata line
    # Codes: nested under a non-codable folder per kind, quallm id in the description, GUID from the id.
    money = root.find(f".//q:Code[@guid='{code_guid('C_money')}']", ns)
    assert money is not None and money.get("name") == "Funding pressure"
    assert money.getparent().get("name") == "Challenges" and money.getparent().get("isCodable") == "false"
    assert "quallm code id: C_money (challenge)" in (money.findtext("q:Description", namespaces=ns) or "")


def test_exports_are_stable(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook, codings: list[Coding]
) -> None:
    first = build_project(transcripts, codebook, codings, created="2024-01-02T03:04:05Z")
    again = build_project(transcripts, codebook, list(reversed(codings)), created="2024-01-02T03:04:05Z")
    assert first[1] == again[1]
    guids = re.compile(r'guid="([^"]+)"')
    assert set(guids.findall(first[0].decode())) == set(guids.findall(again[0].decode()))
    assert first[0] == build_project(transcripts, codebook, codings, created="2024-01-02T03:04:05Z")[0]


def test_export_skips_codings_that_do_not_fit(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook, codings: list[Coding]
) -> None:
    one = transcripts[0]
    bad = [
        codings[0].model_copy(update={"transcript_id": "nowhere"}),
        codings[0].model_copy(update={"code_id": "X_unknown"}),
        codings[0].model_copy(update={"quote": "not the text"}),
        Coding(transcript_id=one.id, coder="carol", code_id="C_courts", turn_index=3),  # a whole turn
        Coding(transcript_id=one.id, coder="carol", code_id="E_help"),  # the whole transcript
    ]
    out = tmp_path / "p.qdpx"
    summary = write_qdpx(out, transcripts, codebook, bad)
    assert len(summary.skipped) == 3
    assert any("'nowhere' is not among the transcripts" in s for s in summary.skipped)
    assert any("X_unknown: code is not in the codebook" in s for s in summary.skipped)
    assert any("quote does not match" in s for s in summary.skipped)
    assert validate_project(out, XSD) == []
    back = read_qdpx(out, transcripts, codebook)
    turn = one.turns[3]
    assert {key(c) for c in back.codings} == {
        (one.id, "carol", "C_courts", turn.start, turn.end, turn.text),
        (one.id, "carol", "E_help", None, None, None),
    }


# --------------------------------------------------------------------------------------------- import


def test_bare_qde(tmp_path: Path, transcripts: list[Transcript], codebook: Codebook, codings: list[Coding]) -> None:
    out = tmp_path / "p.qdpx"
    write_qdpx(out, transcripts, codebook, codings, machine_user_name=MACHINE)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "project.qde").write_bytes(zipfile.ZipFile(out).read("project.qde"))
    # No sources beside it: the transcripts' own text is used.
    imported = read_qdpx(alone / "project.qde", transcripts, codebook)
    assert imported.problems == []
    assert ordered(imported.codings) == ordered(codings)
    # Without transcripts a bare .qde cannot find its text, and says so per source.
    blind = read_qdpx(alone / "project.qde")
    assert blind.codings == [] and len(blind.problems) == 2
    assert all("plain text 'internal://" in p and "not found" in p for p in blind.problems)
    # An unzipped project (project.qde + sources/) reads without transcripts.
    unzipped = tmp_path / "unzipped"
    zipfile.ZipFile(out).extractall(unzipped)
    free = read_qdpx(unzipped / "project.qde")
    assert free.problems == []
    assert sorted(map(key, free.codings)) == sorted(map(key, codings))
    assert {c.code_id for c in free.codings} == {"C_money", "C_courts", "E_help"}  # ids from the descriptions


USER_A = "{8B1F9C42-2D4E-4E8A-9C3B-6F1D2E3A4B5C}"
USER_B = "0f0e0d0c-0b0a-4909-8807-060504030201"
CODE_FOLDER = "{D0D0D0D0-1111-4222-8333-444455556666}"
CODE_MONEY = "A1B2C3D4-E5F6-4711-8899-AABBCCDDEEFF"
CODE_COURTS = "{B2C3D4E5-F6A7-4822-9900-BBCCDDEEFF00}"
CODE_WEATHER = "C3D4E5F6-A7B8-4933-8A11-CCDDEEFF0011"
SOURCE = "{5E5E5E5E-AAAA-4BBB-8CCC-DDDDEEEEFFFF}"


def hand_written_qde(text: str, selections: list[tuple[str, int, int, str, str | None]]) -> str:
    """A project in the style NVivo / QualCoder write: braced upper-case GUIDs, nested codes, names
    with extensions, selection names holding the selected text; built from the standard's structure."""
    sels = []
    for i, (code, start, end, name, user) in enumerate(selections):
        coding_user = f' creatingUser="{user}"' if user else ""
        sels.append(
            f'<PlainTextSelection guid="{{00000000-0000-4000-8000-{i:012d}}}" name="{name}" '
            f'startPosition="{start}" endPosition="{end}" creatingUser="{USER_B}" '
            f'creationDateTime="2023-05-01T10:00:00Z">'
            f'<Coding guid="10000000-0000-4000-8000-{i:012d}"{coding_user}><CodeRef targetGUID="{code}"/></Coding>'
            "</PlainTextSelection>"
        )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Project xmlns="{NAMESPACE}" name="Imported" origin="Some QDA tool 14" creatingUserGUID="{USER_A}">
  <Users>
    <User guid="{USER_A}" name="Dana Smith"/>
    <User guid="{USER_B}"/>
  </Users>
  <CodeBook>
    <Codes>
      <Code guid="{CODE_FOLDER}" name="Pressures" isCodable="false">
        <Description>Things that push children into care</Description>
        <Code guid="{CODE_MONEY}" name="funding pressure" isCodable="true" color="#FF0000"/>
        <Code guid="{CODE_COURTS}" name="C_courts" isCodable="true">
          <Code guid="{CODE_WEATHER}" name="Weather" isCodable="true"/>
        </Code>
      </Code>
    </Codes>
  </CodeBook>
  <Sources>
    <TextSource guid="{SOURCE}" name="la_one.txt" plainTextPath="internal://{SOURCE.strip("{}")}.txt"
                creatingUser="{USER_A}">
      {"".join(sels)}
    </TextSource>
  </Sources>
</Project>
"""


def besides_weather(problems: list[str]) -> list[str]:
    """Problems other than the (always reported) unmatched code 'Weather' of the hand-written project."""
    return [p for p in problems if "code 'Weather'" not in p]


def make_qdpx(path: Path, qde: str, source_text: str | bytes, folder: str = "sources") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("project.qde", qde)
        data = source_text if isinstance(source_text, bytes) else source_text.encode("utf-8")
        zf.writestr(f"{folder}/{SOURCE.strip('{}')}.txt", data)
    return path


def test_hand_written_project_with_nested_and_unknown_codes(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook
) -> None:
    one = transcripts[0]
    text = one.text
    money, courts = "We overspent by £4.2 million last year", "The courts are slow"
    ms, cs = text.index(money), text.index(courts)
    qde = hand_written_qde(text, [
        (CODE_MONEY, ms, ms + len(money), money, USER_A),
        (CODE_COURTS, cs, cs + len(courts), courts, None),  # no coding user: the selection's user
        (CODE_WEATHER, 0, 11, "Interviewer", USER_A),
    ])
    path = make_qdpx(tmp_path / "nvivo.qdpx", qde, text, folder="Sources")
    assert validate_project(path, XSD) == []
    imported = read_qdpx(path, transcripts, codebook)
    assert {key(c) for c in imported.codings} == {
        ("la_one", "Dana Smith", "C_money", ms, ms + len(money), money),
        ("la_one", USER_B.lower(), "C_courts", cs, cs + len(courts), courts),  # unnamed user: its GUID
    }
    assert all(c.alignment == "human" for c in imported.codings)
    assert [c.turn_index for c in ordered(imported.codings)] == [3, 1]
    assert len(imported.problems) == 1
    assert "code 'Weather'" in imported.problems[0] and "its 1 coding(s) are skipped" in imported.problems[0]
    assert str(path) in imported.problems[0]
    parents = {c.name: c.parent for c in imported.codes}
    assert parents["Weather"] == CODE_COURTS.strip("{}").lower()
    assert parents["funding pressure"] == CODE_FOLDER.strip("{}").lower()
    assert parents["Pressures"] is None


def test_source_text_that_differs_is_relocated(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook
) -> None:
    one = transcripts[0]
    money, courts = "We overspent by £4.2 million last year", "The courts are slow"
    # The tool's copy has a header line and someone edited a word: offsets no longer fit the transcript.
    edited = "Transcript of LA one\n\n" + one.text.replace("slow", "sluggish")
    ms, cs = edited.index(money), edited.index("The courts are sluggish")
    qde = hand_written_qde(edited, [
        (CODE_MONEY, ms, ms + len(money), money, USER_A),
        (CODE_COURTS, cs, cs + len("The courts are sluggish"), "The courts are sluggish", USER_A),
    ])
    imported = read_qdpx(make_qdpx(tmp_path / "p.qdpx", qde, edited), transcripts, codebook)
    start = one.text.index(money)
    assert [key(c) for c in imported.codings] == [("la_one", "Dana Smith", "C_money", start, start + len(money), money)]
    weather, relocate = imported.problems  # an unused unmatched code is still reported
    assert "code 'Weather'" in weather and "its 0 coding(s) are skipped" in weather
    assert "selected text not found in transcript 'la_one': 'The courts are sluggish'" in relocate
    assert imported.sources["la_one"] == edited
    # CRLF line ends (a Windows tool) map exactly, even for text that occurs more than once.
    crlf = one.text.replace("\n", "\r\n")
    cs_crlf = crlf.index(courts)
    qde = hand_written_qde(crlf, [(CODE_COURTS, cs_crlf, cs_crlf + len(courts), courts, USER_A)])
    imported = read_qdpx(make_qdpx(tmp_path / "crlf.qdpx", qde, crlf), transcripts, codebook)
    cs = one.text.index(courts)
    assert len(imported.problems) == 1  # Weather again
    assert [key(c) for c in imported.codings] == [("la_one", "Dana Smith", "C_courts", cs, cs + len(courts), courts)]


def test_utf16_offsets_from_other_tools_are_recognised(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook
) -> None:
    text = transcripts[0].text
    fragment = "the café for families closed"
    start = text.index(fragment)
    u16 = len(text[:start].encode("utf-16-le")) // 2  # how a Qt / .NET tool counts
    qde = hand_written_qde(text, [(CODE_MONEY, u16, u16 + len(fragment), fragment, USER_A)])
    imported = read_qdpx(make_qdpx(tmp_path / "p.qdpx", qde, text), transcripts, codebook)
    assert besides_weather(imported.problems) == []
    assert [c.quote for c in imported.codings] == [fragment]
    assert imported.codings[0].start == start


def test_import_without_codebook_uses_code_names(tmp_path: Path, transcripts: list[Transcript]) -> None:
    text = transcripts[0].text
    qde = hand_written_qde(text, [(CODE_WEATHER, 0, 11, "Interviewer", USER_A)])
    imported = read_qdpx(make_qdpx(tmp_path / "p.qdpx", qde, "\ufeff" + text))  # a BOM is not text
    assert imported.problems == []
    assert [key(c) for c in imported.codings] == [("la_one", "Dana Smith", "Weather", 0, 11, "Interviewer")]
    assert imported.codings[0].turn_index is None  # no transcript, no turns


def test_source_matching_no_transcript_is_reported(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook
) -> None:
    text = transcripts[0].text
    qde = hand_written_qde(text, [(CODE_MONEY, 0, 11, "Interviewer", USER_A)]).replace("la_one.txt", "la_nine.docx")
    imported = read_qdpx(make_qdpx(tmp_path / "p.qdpx", qde, text), transcripts, codebook)
    assert imported.codings == []
    assert besides_weather(imported.problems) == [
        f"{tmp_path / 'p.qdpx'}: source 'la_nine.docx' matches no transcript (by name, or name without "
        "extension); its codings are skipped"
    ]


def test_bad_input_raises_input_error_naming_the_file(tmp_path: Path) -> None:
    not_zip = tmp_path / "broken.qdpx"
    not_zip.write_text("hello", encoding="utf-8")
    no_qde = tmp_path / "empty.qdpx"
    with zipfile.ZipFile(no_qde, "w") as zf:
        zf.writestr("sources/a.txt", "text")
    html = tmp_path / "page.qde"
    html.write_text("<html><body>no</body></html>", encoding="utf-8")
    codebook_file = tmp_path / "book.qde"
    codebook_file.write_text('<CodeBook xmlns="urn:QDA-XML:codebook:1.0"><Codes/></CodeBook>', encoding="utf-8")
    garbled = tmp_path / "garbled.qde"
    garbled.write_text("<Project", encoding="utf-8")
    cases = [
        (not_zip, "not a zip archive"),
        (no_qde, "no project.qde in the archive"),
        (html, "not a REFI-QDA project: root element is <html>"),
        (codebook_file, "not a REFI-QDA project: root element is <{urn:QDA-XML:codebook:1.0}CodeBook>"),
        (garbled, "not well-formed XML"),
        (tmp_path / "missing.qdpx", "file not found"),
    ]
    for path, problem in cases:
        with pytest.raises(InputError) as info:
            read_qdpx(path)
        assert info.value.path == str(path)
        assert problem in info.value.problem
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------- demo and runs


def test_demo_fixtures_round_trip(tmp_path: Path, demo_dir: Path) -> None:
    files = sorted(p for p in demo_dir.iterdir() if p.suffix in (".txt", ".vtt", ".docx"))
    transcripts = [load_transcript(p) for p in files]
    codebook = load_codebook(demo_dir / "codebook.yaml")
    human, problems = read_human_csv(demo_dir / "human_coding.csv", transcripts, codebook.ids)
    assert problems == [] and {c.coder for c in human} == {"coder_a", "coder_b"}
    out = tmp_path / "demo.qdpx"
    summary = write_qdpx(out, transcripts, codebook, human, project_name="Demo")
    assert summary.skipped == [] and summary.selections == len(human)
    assert validate_project(out, XSD) == []
    back = read_qdpx(out, transcripts, codebook)
    assert back.problems == []
    assert ordered(back.codings) == ordered(human)


def test_export_run(
    tmp_path: Path, transcripts: list[Transcript], codebook: Codebook, codings: list[Coding]
) -> None:
    cb_path = tmp_path / "codebook.yaml"  # written by the codebook fixture
    run = RunDir(tmp_path / "run")
    run.prepare()
    machine = [c for c in codings if c.coder == MACHINE]
    human = [c for c in codings if c.coder != MACHINE]
    for t in transcripts:
        run.save_result(TranscriptResult(
            transcript_id=t.id, source=t.source, format=t.format, fingerprint="x", n_turns=len(t.turns),
            n_coded_units=2, strategy="turn", codings=[c for c in machine if c.transcript_id == t.id],
        ))
    run.write_manifest({
        "model": {"name": "fake-model"},
        "codebook": {"path": str(cb_path)},
        "inputs": [{"file": t.source, "transcript_id": t.id} for t in transcripts] + [{"file": "x", "error": "bad"}],
    })
    only_machine = export_run(run.path, tmp_path / "machine.qdpx")
    assert only_machine.skipped == [] and only_machine.selections == len(machine)
    (run.path / "human_codings.json").write_text(
        json.dumps([c.model_dump(mode="json") for c in human]), encoding="utf-8"
    )
    out = tmp_path / "run.qdpx"
    summary = export_run(run.path, out)
    assert summary.selections == len(codings)
    assert validate_project(out, XSD) == []
    assert 'name="quallm run run"' in qde_of(out)
    back = read_qdpx(out, transcripts, codebook)
    assert back.problems == []
    assert ordered(back.codings) == ordered(codings)
    with pytest.raises(InputError, match=r"no manifest\.json"):
        export_run(tmp_path, tmp_path / "x.qdpx")
