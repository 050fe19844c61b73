"""Imported archives read only their own members, lazily and within caps (zip bombs, local files)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quallm.cli import app
from quallm.core.errors import ConfigError, InputError
from quallm.ingest import archive as archive_mod
from quallm.ingest.archive import MIB, ArchiveError, ArchiveLimitError, ArchiveLimits, SafeArchive
from quallm.ingest.codebooks import load_codebook
from quallm.ingest.qdpx import read_qdpx
from quallm.ingest.transcripts import load_transcript

DATA = Path(__file__).parents[1] / "data" / "hostile"
SOURCE_MEMBER = "sources/5E5E5E5E-AAAA-4BBB-8CCC-DDDDEEEEFFFF.txt"
SECRET = "root:x:0:0:THIS-IS-THE-SECRET-FILE:/root:/bin/bash"
TEXT = "Interviewer: How is the money?\n\nRespondent: The budget is the big worry this year.\n"
CODEBOOK = ("name: T\ncodes:\n  - {id: C_money, kind: challenge, label: Funding, definition: Money is short.}\n"
            "  - {id: C_other, kind: challenge, label: Other, definition: Anything else.}\n")


def _hostile_qde(tmp: Path) -> str:
    (tmp / "secret.txt").write_text(SECRET, encoding="utf-8")
    (tmp / "base").mkdir(exist_ok=True)
    qde = (DATA / "reads_local_files.qde").read_text(encoding="utf-8")
    return qde.replace("@DIR@", tmp.as_posix()).replace("@BASE@", (tmp / "base").as_posix())


def _qdpx(path: Path, qde: str, members: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project.qde", qde)
        zf.writestr(SOURCE_MEMBER, TEXT)
        for name, data in (members or {}).items():
            zf.writestr(name, data)
    return path


def test_qdpx_never_reads_local_files(tmp_path: Path) -> None:
    qde = _hostile_qde(tmp_path)
    t_path = tmp_path / "la_one.txt"
    t_path.write_text(TEXT, encoding="utf-8")
    transcripts = [load_transcript(t_path)]
    cb_path = tmp_path / "cb.yaml"
    cb_path.write_text(CODEBOOK, encoding="utf-8")
    codebook = load_codebook(cb_path)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "project.qde").write_text(qde, encoding="utf-8")
    for path in (_qdpx(tmp_path / "hostile.qdpx", qde), proj / "project.qde"):
        # With transcripts: the coding is imported, but its note (absolute:// to the secret) is not read.
        imported = read_qdpx(path, transcripts, codebook)
        assert [c.code_id for c in imported.codings] == ["C_money"]
        assert imported.codings[0].rationale is None
        # Without transcripts every source is read from the project: none of the local paths is followed.
        blind = read_qdpx(path)
        assert all(SECRET not in text for text in blind.sources.values())
        assert "by_absolute" not in blind.sources and "by_relative" not in blind.sources
        assert "by_climbing" not in blind.sources
        outside = [p for p in blind.problems if "outside the project archive" in p]
        assert len(outside) == 2 and all(str(path) in p for p in outside)
        assert any("by_climbing" in p and "not found" in p for p in blind.problems)
        assert SECRET not in repr(imported) + repr(blind)


def test_qdpx_local_file_note_never_reaches_disagreements(tmp_path: Path) -> None:
    # The project's coder posing as a machine coder: its note would be the machine_rationale column.
    qde = _hostile_qde(tmp_path).replace('name="Mallory"', 'name="quallm-mallory"')
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "la_one.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "cb.yaml").write_text(CODEBOOK, encoding="utf-8")
    other = tmp_path / "other.csv"  # a second coder who did not code the Interviewer turn
    other.write_text("transcript_id,coder,code_id,turn_index\nla_one,bob,C_other,1\n", encoding="utf-8")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, [
        "reconcile", "--transcripts", str(tmp_path / "t"), "--codings", str(_qdpx(tmp_path / "h.qdpx", qde)),
        "--codings", str(other), "-c", str(tmp_path / "cb.yaml"), "-o", str(out), "--bootstrap", "0",
    ])
    assert r.exit_code == 0, r.output
    assert "la_one,turn-1,1,44,82,C_money" in (out / "disagreements.csv").read_text(encoding="utf-8")
    for f in out.iterdir():
        assert "THIS-IS-THE-SECRET" not in f.read_text(encoding="utf-8")
    assert "THIS-IS-THE-SECRET" not in r.output


def test_unreferenced_members_are_never_inflated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qde = _hostile_qde(tmp_path)
    bomb = b"\0" * (8 * MIB)  # 8 MB of zeros deflate to about 8 KB
    path = _qdpx(tmp_path / "lazy.qdpx", qde, {"sources/unreferenced.txt": bomb, "big/video.mp4": bomb})
    assert path.stat().st_size < 100_000
    read: list[str] = []
    real_read = SafeArchive.read

    def spy(self: SafeArchive, name: str) -> bytes:
        read.append(name)
        return real_read(self, name)

    monkeypatch.setattr(SafeArchive, "read", spy)
    imported = read_qdpx(path, limits=ArchiveLimits(max_member_bytes=MIB, max_total_bytes=2 * MIB))
    assert sorted(set(read)) == ["project.qde", SOURCE_MEMBER]
    assert imported.sources["la_one"] == TEXT


def test_referenced_zip_bomb_is_refused_with_file_and_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qde = _hostile_qde(tmp_path)
    path = tmp_path / "bomb.qdpx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project.qde", qde)
        zf.writestr(SOURCE_MEMBER, b"a" * (3 * MIB))
    monkeypatch.setenv("QUALLM_ARCHIVE_MAX_MEMBER_MB", "1")
    with pytest.raises(ArchiveLimitError) as info:
        read_qdpx(path)
    msg = str(info.value)
    assert isinstance(info.value, InputError)
    assert str(path) in msg and SOURCE_MEMBER in msg and "1 MB per member" in msg
    assert "QUALLM_ARCHIVE_MAX_MEMBER_MB" in msg and "\n" not in msg
    # The total cap counts every member read; each is under the per-member cap here.
    monkeypatch.setenv("QUALLM_ARCHIVE_MAX_MEMBER_MB", "4")
    monkeypatch.setenv("QUALLM_ARCHIVE_MAX_TOTAL_MB", "2")
    with pytest.raises(ArchiveLimitError, match="in total"):
        read_qdpx(path)
    # And with room enough it reads.
    monkeypatch.setenv("QUALLM_ARCHIVE_MAX_TOTAL_MB", "8")
    assert read_qdpx(path).sources["la_one"] == "a" * (3 * MIB)


def test_cli_reconcile_names_the_bomb_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qde = _hostile_qde(tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "la_one.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "cb.yaml").write_text(CODEBOOK, encoding="utf-8")
    path = tmp_path / "bomb.qdpx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project.qde", qde)
        zf.writestr(SOURCE_MEMBER, b"a" * (2 * MIB))
    monkeypatch.setenv("QUALLM_ARCHIVE_MAX_MEMBER_MB", "1")
    r = CliRunner().invoke(app, [
        "reconcile", "--transcripts", str(tmp_path / "t"), "--codings", str(path), "--codings", str(path),
        "-c", str(tmp_path / "cb.yaml"), "-o", str(tmp_path / "out"), "--bootstrap", "0",
    ])
    assert r.exit_code != 0
    assert "Traceback" not in r.output and "inflates past the limit" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_declared_sizes_are_not_trusted(tmp_path: Path) -> None:
    # A member whose headers claim 10 bytes but which inflates to 1 MB: refused, never a crash.
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", b"x" * MIB)
    data = bytearray(path.read_bytes())
    local = data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, 10)  # uncompressed size in the local header
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)  # ... and in the central directory
    path.write_bytes(bytes(data))
    with SafeArchive(path, ArchiveLimits(max_member_bytes=2 * MIB)) as a:
        assert a.names() == ["a.txt"]
        with pytest.raises(ArchiveError) as info:
            a.read("a.txt")
    assert str(path) in str(info.value) and "a.txt" in str(info.value)


def test_safe_archive_api_and_knobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Sources/One.TXT", "one")
        zf.writestr("folder/", "")
        for i in range(5):
            zf.writestr(f"n{i}", "x")
    with SafeArchive(path) as a:
        assert a.find("sources/one.txt") == "Sources/One.TXT" and a.find("missing") is None
        assert a.read("Sources/One.TXT") == b"one" and a.total_read == 3
        assert "folder/" not in a.names()
        with pytest.raises(ArchiveError, match="no member 'missing'"):
            a.read("missing")
    with pytest.raises(ArchiveLimitError, match="7 entries"):
        SafeArchive(path, ArchiveLimits(max_members=5))
    not_zip = tmp_path / "x.qdpx"
    not_zip.write_text("hello", encoding="utf-8")
    with pytest.raises(ArchiveError, match="cannot read the archive"):
        SafeArchive(not_zip)
    monkeypatch.setenv(archive_mod.MEMBER_ENV, "0.5")
    assert ArchiveLimits.from_env().max_member_bytes == MIB // 2
    monkeypatch.setenv(archive_mod.TOTAL_ENV, "lots")
    with pytest.raises(ConfigError, match="QUALLM_ARCHIVE_MAX_TOTAL_MB"):
        ArchiveLimits.from_env()


def test_docx_bomb_is_one_line_and_the_batch_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import docx

    from quallm.ingest.transcripts import load_transcripts

    d = docx.Document()
    d.add_paragraph("Interviewer: How is the money?")
    d.add_paragraph("Respondent: The budget is the big worry this year.")
    good = tmp_path / "good.docx"
    d.save(str(good))
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        dst.writestr("word/media/padding.bin", b"\0" * (3 * MIB))  # python-docx would load this part
    monkeypatch.setenv("QUALLM_ARCHIVE_MAX_MEMBER_MB", "1")
    loaded = list(load_transcripts([bomb, good]))
    assert isinstance(loaded[0], ArchiveLimitError)
    assert str(bomb) in str(loaded[0]) and "word/media/padding.bin" in str(loaded[0])
    assert not isinstance(loaded[1], Exception) and loaded[1].id == "good"
