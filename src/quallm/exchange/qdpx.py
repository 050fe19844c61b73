"""REFI-QDA project exchange: read and write ``.qdpx`` archives and bare ``project.qde`` files.

A ``.qdpx`` is a zip holding ``project.qde`` (XML in the namespace ``urn:QDA-XML:project:1.0``) and a
``sources/`` folder with the internal source files, named ``<guid>.<ext>`` (REFI-QDA Project standard,
section 8). Plain-text sources are UTF-8 ``.txt`` files.

Offsets: a ``PlainTextSelection`` is ``startPosition``..``endPosition`` counted in Unicode code points
of the source's plain text, the first code point being 0 (standard section 10.2); the worked examples
in its Annex A use an exclusive end (``end - start == len(selected text)``). That is exactly Python's
``text[start:end]``, so quallm offsets are written and read unchanged. Some tools count UTF-16 code
units instead (Qt and .NET strings); the two differ only after characters outside the Basic
Multilingual Plane (emoji). For such a source :func:`read_qdpx` reads a selection as UTF-16 only when
the code-point span does not fit the text, or when only the UTF-16 slice matches the selection's name
(see :func:`_resolve_span`). A BOM at the start of a source file is not counted.

Export layout (:func:`write_qdpx`): one ``TextSource`` per transcript with its canonical text as
``sources/<guid>.txt``; the codebook as ``Code`` elements (name = label, the quallm id and the
definition in the ``Description``) nested under one non-codable folder per kind; one ``User`` per
coder; one ``PlainTextSelection`` per coding holding one ``Coding``/``CodeRef``; a coding's rationale,
alignment and confidence as a ``Note`` in ``<Notes>``, linked by a ``NoteRef`` inside the selection.
GUIDs are uuid5 of stable keys, so exporting the same inputs again gives the same GUIDs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quallm import __version__
from quallm.codebook import Codebook
from quallm.codings import Alignment, Coding
from quallm.errors import InputError
from quallm.exchange import refi
from quallm.exchange.archive import ArchiveLimits, SafeArchive, is_zip
from quallm.exchange.refi import (
    _guid,
    code_guid,
    kind_folder_guid,
    pick_qde,
    source_guid,
    user_guid,
)
from quallm.review.derive import reviewed_codings
from quallm.run.opening import open_run
from quallm.transcripts.model import Transcript

NAMESPACE = "urn:QDA-XML:project:1.0"
_NS = f"{{{NAMESPACE}}}"
# Said in the note of a coding whose code a calibration did not find reliable (quallm calibrate).
NEEDS_REVIEW_NOTE = "NEEDS REVIEW: the calibration on the human-coded sample did not find this code reliable."
# Marks the quallm metadata line of a note and the quallm id inside a code's description.
_NOTE_META = re.compile(r"^quallm: alignment=(?P<alignment>\w+)(?: confidence=(?P<confidence>[0-9.eE+-]+))?\s*$")
_CODE_ID_LINE = re.compile(r"^quallm code id: (?P<id>\S+)", re.MULTILINE)
# Characters XML 1.0 cannot hold at all (control characters, lone surrogates, U+FFFE/U+FFFF).
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Extensions stripped from a source name to get a transcript id when no transcripts are given.
_SOURCE_SUFFIXES = (".txt", ".md", ".markdown", ".vtt", ".srt", ".docx", ".doc", ".rtf", ".odt", ".pdf", ".json")
_KIND_FOLDERS = {"challenge": ("Challenges", "#C0392B"), "enabler": ("Enablers", "#27AE60")}
_ALIGNMENTS: dict[str, Alignment] = {"exact": "exact", "normalised": "normalised", "fuzzy": "fuzzy", "human": "human"}


class QdpxCode(BaseModel):
    """A code found in a project's codebook and the quallm code it was matched to (if any)."""

    model_config = ConfigDict(frozen=True)

    guid: str
    name: str
    parent: str | None = Field(default=None, description="GUID of the enclosing code, if nested")
    is_codable: bool = True
    code_id: str | None = Field(default=None, description="the quallm code id it maps to; None if unmatched")


class QdpxImport(BaseModel):
    """What :func:`read_qdpx` found: codings, source texts, codes, users and one-line problems."""

    path: str
    codings: list[Coding] = Field(default_factory=list)
    sources: dict[str, str] = Field(
        default_factory=dict, description="transcript id -> the source's plain text (as stored in the project)"
    )
    codes: list[QdpxCode] = Field(default_factory=list)
    users: dict[str, str] = Field(default_factory=dict, description="user GUID -> name (the GUID if unnamed)")
    problems: list[str] = Field(default_factory=list)


class QdpxExport(BaseModel):
    """What :func:`write_qdpx` wrote, and the codings it had to leave out (one line each)."""

    path: str
    sources: int
    codes: int
    users: int
    selections: int
    notes: int
    skipped: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------- GUIDs


def _guid_of(codebook: Codebook, code_id: str) -> str:
    """A code's GUID in exports: the one it was imported with, else quallm's stable one."""
    code = codebook.get(code_id)
    return code.guid if code is not None and code.guid else code_guid(code_id)


def _norm_guid(raw: str | None) -> str:
    # GUIDType allows an optional {…} wrapper and either case; compare them bare and lower-case.
    return (raw or "").strip().strip("{}").lower()


# ------------------------------------------------------------------------------------------- reading


_local, _kids, _kid = refi.local_name, refi.children, refi.child  # the shared REFI-QDA element helpers


def _text(el: Any | None) -> str | None:
    if el is None:
        return None
    return "".join(el.itertext())


SourceReader = Callable[[str], bytes | None]
# An internal source's file name as a bare .qde may name it in the sources/ folder beside it.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9{}()\[\] _.,+-]+")


def _open_project(p: Path, limits: ArchiveLimits | None = None) -> tuple[bytes, SourceReader, SafeArchive | None]:
    """The project XML, a reader for internal sources (by file name) and the open archive (to close),
    from a .qdpx or a bare .qde. Only the archive's own members are ever read (lazily, within the
    caps of :class:`~quallm.exchange.archive.SafeArchive`); for a bare .qde, only plain file names
    in the ``sources/`` folder beside it."""
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a directory, not a .qdpx or .qde file")
    if is_zip(p):
        archive = SafeArchive(p, limits)
        try:
            qde = pick_qde(archive.names())
            if qde is None:
                raise InputError(p, "no project.qde in the archive (a .qdpx is a zip holding project.qde)")
            xml = archive.read(qde)
        except BaseException:
            archive.close()
            raise
        # Internal sources sit in sources/ (some tools write Sources/); only text ones are read.
        members = {
            n.rsplit("/", 1)[-1].lower(): n
            for n in archive.names()
            if "/" in n and n.rsplit("/", 2)[-2].lower() == "sources" and n.lower().endswith(".txt")
        }

        def member(name: str) -> bytes | None:
            stored = members.get(name.lower())
            return archive.read(stored) if stored is not None else None

        return xml, member, archive
    if p.suffix.lower() == ".qdpx":
        raise InputError(p, "not a zip archive (a .qdpx is a zip holding project.qde and sources/)")
    try:
        xml = p.read_bytes()
    except OSError as exc:
        raise InputError(p, f"cannot read the file: {exc.strerror or exc}") from exc
    limit = (limits or ArchiveLimits.from_env()).max_member_bytes

    def beside(name: str) -> bytes | None:
        # A bare .qde may sit in an unzipped project: look in sources/ next to it, for a plain file
        # name only (no folders, no "..", no link out of the folder), as a .qdpx member would be.
        if not _PLAIN_NAME.fullmatch(name) or name.strip(".") == "":
            return None
        for folder in ("sources", "Sources"):
            d = p.parent / folder
            f = d / name
            if f.is_file() and f.resolve().parent == d.resolve():
                if f.stat().st_size > limit:
                    raise InputError(f, f"source file is larger than the limit of {limit // (1024 * 1024)} MB")
                return f.read_bytes()
        return None

    return xml, beside, None


def _parse_project(p: Path, xml: bytes) -> Any:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, huge_tree=False)
    try:
        root = etree.fromstring(xml, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise InputError(p, f"project.qde is not well-formed XML ({exc})") from exc
    ns = etree.QName(root).namespace or ""
    if _local(root) != "Project" or (ns and not ns.startswith("urn:QDA-XML:project")):
        shown = f"{{{ns}}}{_local(root)}" if ns else _local(root)
        raise InputError(p, f"not a REFI-QDA project: root element is <{shown}>, expected <Project> in {NAMESPACE}")
    return root


def _strip_suffix(name: str) -> str:
    low = name.lower()
    for suffix in _SOURCE_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _decode(data: bytes) -> str:
    # UTF-8 per the standard; a BOM is not part of the text.
    return data.decode("utf-8-sig")


def _source_text(el: Any, read: SourceReader, root: Any) -> tuple[str | None, str | None]:
    """The plain text of a text source (or note) and, if it cannot be read, why."""
    inline = _kid(el, "PlainTextContent")
    if inline is not None:
        return _text(inline) or "", None
    ref = el.get("plainTextPath")
    if not ref:
        return None, "no plainTextPath or PlainTextContent"
    if not ref.startswith("internal://"):
        # relative:// (under basePath) and absolute:// name files on the importer's disk: an imported
        # project must never make quallm read them, so only the archive's own members are read.
        return None, f"plain text {ref!r} is outside the project archive, and only its own sources are read"
    data = read(ref[len("internal://") :].lstrip("/"))
    if data is None:
        return None, f"plain text {ref!r} not found"
    try:
        return _decode(data), None
    except UnicodeDecodeError:
        return None, f"plain text {ref!r} is not UTF-8"


def utf16_to_cp(text: str, offset: int) -> int | None:
    """The code-point offset of UTF-16 code-unit ``offset`` in ``text`` (None if mid-pair or past the end)."""
    units = 0
    for i, ch in enumerate(text):
        if units == offset:
            return i
        if units > offset:
            return None
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text) if units == offset else None


def _looks_like(name: str | None, chunk: str) -> bool:
    """Whether a selection's ``name`` (tools store the selected text, often cut with an ellipsis) fits."""
    if not name:
        return False
    head = name.rstrip().removesuffix("…").removesuffix("...").strip()
    return bool(head) and " ".join(chunk.split()).startswith(" ".join(head.split()))


def _resolve_span(text: str, start: int, end: int, name: str | None, astral: bool) -> tuple[int, int] | None:
    """Code-point span of a selection, reading UTF-16 offsets when only they fit.

    ``astral`` says whether the text has characters outside the BMP (emoji), the only case where the
    two counts differ. UTF-16 wins when the code-point span is out of range but the UTF-16 one is not,
    or when only the UTF-16 slice starts with the selection's ``name`` (tools store the selected text).
    """
    fits = 0 <= start < end <= len(text)
    if astral:
        s16, e16 = utf16_to_cp(text, start), utf16_to_cp(text, end)
        utf16 = s16 is not None and e16 is not None and s16 < e16 and (s16, e16) != (start, end)
        if utf16 and (not fits or (_looks_like(name, text[s16:e16]) and not _looks_like(name, text[start:end]))):
            assert s16 is not None and e16 is not None
            return s16, e16
    return (start, end) if fits else None


def _crlf_map(source: str, target: str) -> Callable[[int], int] | None:
    """If ``source`` is ``target`` with CRLF (or CR) line ends, a map of source offsets to target offsets."""
    if "\r" not in source or source.replace("\r\n", "\n").replace("\r", "\n") != target:
        return None
    shift: list[int] = []
    removed = 0
    for i, ch in enumerate(source):
        shift.append(i - removed)
        if ch == "\r" and source[i + 1 : i + 2] == "\n":
            removed += 1
    shift.append(len(source) - removed)
    return lambda off: shift[off]


def _relocate(chunk: str, target: str, near: int) -> tuple[int, int] | None:
    """Where ``chunk`` occurs in ``target`` (exactly; the occurrence nearest ``near`` if several)."""
    for needle in (chunk, chunk.strip()):
        if not needle:
            continue
        hits, i = [], target.find(needle)
        while i != -1:
            hits.append(i)
            i = target.find(needle, i + 1)
        if hits:
            best = min(hits, key=lambda h: abs(h - near))
            return best, best + len(needle)
    return None


def _parse_note(text: str) -> tuple[str | None, float | None, Alignment | None]:
    """(rationale, confidence, alignment) from a note; quallm's notes end with a metadata line."""
    lines = text.rstrip().splitlines()
    confidence: float | None = None
    alignment: Alignment | None = None
    if lines:
        m = _NOTE_META.match(lines[-1])
        if m:
            lines = lines[:-1]
            alignment = _ALIGNMENTS.get(m["alignment"])
            try:
                confidence = float(m["confidence"]) if m["confidence"] else None
            except ValueError:
                confidence = None
    rationale = "\n".join(lines).strip() or None
    return rationale, confidence, alignment


class _Codes:
    """The project's codes, and the quallm code id each maps to."""

    def __init__(self, root: Any, codebook: Codebook | None) -> None:
        self.found: list[QdpxCode] = []
        book = _kid(root, "CodeBook")
        codes = _kid(book, "Codes") if book is not None else None
        if codes is not None:
            for el in _kids(codes, "Code"):
                self._walk(el, None, codebook)

    def _walk(self, el: Any, parent: str | None, codebook: Codebook | None) -> None:
        guid = _norm_guid(el.get("guid"))
        name = el.get("name") or guid
        description = _text(_kid(el, "Description")) or ""
        codable = (el.get("isCodable") or "true").strip().lower() not in ("false", "0")
        self.found.append(
            QdpxCode(guid=guid, name=name, parent=parent, is_codable=codable,
                     code_id=_match_code(guid, name, description, codebook))
        )
        for child in _kids(el, "Code"):
            self._walk(child, guid, codebook)

    def by_guid(self) -> dict[str, QdpxCode]:
        return {c.guid: c for c in self.found}


def _match_code(guid: str, name: str, description: str, codebook: Codebook | None) -> str | None:
    """The quallm code id a project code stands for: by GUID, id, label, or the id in its description."""
    tagged = _CODE_ID_LINE.search(description)
    if codebook is None:
        return tagged["id"] if tagged else name
    for c in codebook.codes:
        if guid == code_guid(c.id) or guid == (c.guid or "").lower() or name == c.id:
            return c.id
    folded = name.strip().casefold()
    for c in codebook.codes:
        if folded == c.label.strip().casefold():
            return c.id
    first = name.split(maxsplit=1)[0] if name.split() else ""
    for c in codebook.codes:
        if (tagged and tagged["id"] == c.id) or first == c.id:
            return c.id
    return None


def read_qdpx(
    path: str | Path,
    transcripts: Sequence[Transcript] | Mapping[str, Transcript] | None = None,
    codebook: Codebook | None = None,
    limits: ArchiveLimits | None = None,
) -> QdpxImport:
    """Codings from a REFI-QDA ``.qdpx`` archive or a bare ``project.qde``, and the problems met.

    Sources map to transcripts by name (the source name is the transcript id, or is it plus a file
    extension). When a source's plain text differs from the transcript's canonical text, each selection's
    text is found again in the transcript (exact search; CRLF line ends are mapped exactly) and what
    cannot be found is reported. Codes map to the codebook by GUID (quallm's own exports), by name equal
    to a code id or label, or by the id quallm writes into the code description; unmatched codable codes
    are reported and their codings skipped. Without a codebook a code's id is its quallm id or its name.
    Codings get the user's name as coder (the user GUID if unnamed) and ``alignment="human"``, except
    that quallm's own notes restore a machine coding's rationale, alignment and confidence; another
    note (or the selection description) becomes the rationale. A coding on a whole source has no span.

    Only the archive's own members are read, lazily, within ``limits`` (default: from the
    environment, see :class:`~quallm.exchange.archive.ArchiveLimits`); ``relative://`` and
    ``absolute://`` paths are never followed (reported as a problem).

    Problems are one line each (``file: problem``). An unreadable file, a zip without ``project.qde``,
    an archive past its limits (:class:`~quallm.exchange.archive.ArchiveLimitError`) or XML that is
    not a REFI-QDA project raise :class:`~quallm.errors.InputError`.
    """
    p = Path(path)
    xml, read, archive = _open_project(p, limits)
    try:
        return _read_project(p, xml, read, transcripts, codebook)
    finally:
        if archive is not None:
            archive.close()


def _read_project(
    p: Path,
    xml: bytes,
    read: SourceReader,
    transcripts: Sequence[Transcript] | Mapping[str, Transcript] | None,
    codebook: Codebook | None,
) -> QdpxImport:
    root = _parse_project(p, xml)
    by_tid = dict(transcripts) if isinstance(transcripts, Mapping) else {t.id: t for t in transcripts or ()}
    have_transcripts = transcripts is not None
    out = QdpxImport(path=str(p))
    problems = out.problems

    users_el = _kid(root, "Users")
    for u in _kids(users_el, "User") if users_el is not None else ():
        guid = _norm_guid(u.get("guid"))
        out.users[guid] = (u.get("name") or "").strip() or guid

    codes = _Codes(root, codebook)
    out.codes = codes.found
    code_map = codes.by_guid()
    sources_el = _kid(root, "Sources")
    uses = Counter(
        _norm_guid(ref.get("targetGUID"))
        for ref in (sources_el.iter() if sources_el is not None else ())
        if isinstance(ref.tag, str) and _local(ref) == "CodeRef"
    )
    for c in codes.found:
        if c.code_id is None and (c.is_codable or uses[c.guid]):
            problems.append(
                f"{p}: code {c.name!r} ({c.guid}) matches no codebook code by id, label or GUID; "
                f"its {uses[c.guid]} coding(s) are skipped"
            )

    notes: dict[str, str] = {}
    notes_el = _kid(root, "Notes")
    for note in _kids(notes_el, "Note") if notes_el is not None else ():
        text, _ = _source_text(note, read, root)
        if text is not None:
            notes[_norm_guid(note.get("guid"))] = text

    default_user = _norm_guid(root.get("creatingUserGUID"))

    def coder_of(*els: Any) -> str:
        for el in els:
            guid = _norm_guid(el.get("creatingUser"))
            if guid:
                return out.users.get(guid, guid)
        return out.users.get(default_user, default_user) if default_user else "unknown"

    def code_of(coding: Any, where: str) -> str | None:
        ref = _kid(coding, "CodeRef")
        target = _norm_guid(ref.get("targetGUID") if ref is not None else None)
        code = code_map.get(target)
        if code is None:
            problems.append(f"{p}: {where}: coding {coding.get('guid')} refers to unknown code {target or '(none)'}")
            return None
        return code.code_id  # None for an unmatched code, already reported once

    def note_fields(*els: Any) -> tuple[str | None, float | None, Alignment | None]:
        for el in els:
            for ref in _kids(el, "NoteRef"):
                text = notes.get(_norm_guid(ref.get("targetGUID")))
                if text and text.strip():
                    return _parse_note(text)
        return None, None, None

    if sources_el is None:
        return out
    for src in sources_el:
        if not isinstance(src.tag, str):
            continue
        kind, name = _local(src), src.get("name") or _norm_guid(src.get("guid"))
        has_codings = any(isinstance(e.tag, str) and _local(e) == "Coding" for e in src.iter())
        if kind != "TextSource":
            if has_codings:
                problems.append(f"{p}: source {name!r}: {kind} sources are not read; its codings are skipped")
            continue
        t = by_tid.get(name) or by_tid.get(_strip_suffix(name)) or by_tid.get(Path(name).stem)
        if have_transcripts and t is None:
            if has_codings:
                problems.append(
                    f"{p}: source {name!r} matches no transcript (by name, or name without extension); "
                    "its codings are skipped"
                )
            continue
        tid = t.id if t is not None else _strip_suffix(name)
        text, why = _source_text(src, read, root)
        if text is None:
            if t is None:
                problems.append(f"{p}: source {name!r}: {why}; its codings are skipped")
                continue
            text = t.text  # a bare project.qde of these transcripts: the text is the transcript's
        out.sources[tid] = text
        mapper = _crlf_map(text, t.text) if t is not None and text != t.text else None
        astral = any(ord(ch) > 0xFFFF for ch in text)
        for sel in _kids(src, "PlainTextSelection"):
            codings = list(_kids(sel, "Coding"))
            if not codings:
                continue
            where = f"source {name!r}, selection {sel.get('guid')}"
            try:
                raw_start, raw_end = int(sel.get("startPosition")), int(sel.get("endPosition"))
            except (TypeError, ValueError):
                problems.append(f"{p}: {where}: startPosition/endPosition missing or not whole numbers")
                continue
            span = _resolve_span(text, raw_start, raw_end, sel.get("name"), astral)
            if span is None:
                problems.append(
                    f"{p}: {where}: span {raw_start}-{raw_end} is empty or outside the text (length {len(text)})"
                )
                continue
            start, end = span
            if t is not None and text != t.text:
                if mapper is not None:
                    start, end = mapper(start), mapper(end)
                else:
                    found = _relocate(text[start:end], t.text, start)
                    if found is None:
                        chunk = text[start:end]
                        short = chunk if len(chunk) <= 60 else chunk[:57] + "..."
                        problems.append(f"{p}: {where}: selected text not found in transcript {t.id!r}: {short!r}")
                        continue
                    start, end = found
            body = t.text if t is not None else text
            turn = t.turn_at(start) if t is not None else None
            description = _text(_kid(sel, "Description"))
            for coding in codings:
                code_id = code_of(coding, where)
                if code_id is None:
                    continue
                rationale, confidence, alignment = note_fields(coding, sel)
                try:
                    out.codings.append(
                        Coding(
                            transcript_id=tid, coder=coder_of(coding, sel, src), code_id=code_id,
                            start=start, end=end, turn_index=turn.index if turn else None,
                            speaker=turn.speaker if turn else None, quote=body[start:end],
                            alignment=alignment or "human",
                            rationale=rationale or (description.strip() if description else None) or None,
                            confidence=confidence,
                        )
                    )
                except ValidationError as exc:
                    problems.append(f"{p}: {where}: {exc.errors()[0]['msg']}")
        for coding in _kids(src, "Coding"):  # a code on the whole source: no span
            code_id = code_of(coding, f"source {name!r}")
            if code_id is None:
                continue
            rationale, confidence, alignment = note_fields(coding)
            try:
                out.codings.append(
                    Coding(transcript_id=tid, coder=coder_of(coding, src), code_id=code_id,
                           alignment=alignment or "human", rationale=rationale, confidence=confidence)
                )
            except ValidationError as exc:
                problems.append(f"{p}: source {name!r}: {exc.errors()[0]['msg']}")
    return out


# ------------------------------------------------------------------------------------------- writing


def _safe(s: str) -> str:
    """``s`` without the characters XML 1.0 cannot carry (they would make lxml refuse the document)."""
    return _XML_BAD.sub("", s)


def _preview(s: str, limit: int = 80) -> str:
    flat = " ".join(s.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _code_description(code: Any) -> str:
    from quallm.exchange.codebooks import describe_code

    return describe_code(code)


def _note_text(c: Coding) -> str | None:
    """A coding's note: its rationale, then (for machine codings) a metadata line read back on import."""
    lines = [c.rationale.strip()] if c.rationale and c.rationale.strip() else []
    if c.needs_review:
        lines.append(NEEDS_REVIEW_NOTE)
    if c.alignment != "human" or c.confidence is not None:
        meta = f"quallm: alignment={c.alignment}"
        if c.confidence is not None:
            meta += f" confidence={c.confidence!r}"  # repr: the shortest text that reads back exactly
        lines.append(meta)
    return "\n\n".join(lines) if lines else None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span_of(c: Coding, t: Transcript) -> tuple[int | None, int | None, str | None]:
    """(start, end, problem) of a coding in its transcript; a turn-only coding spans its turn."""
    if c.start is not None and c.end is not None:
        if not 0 <= c.start < c.end <= len(t.text):
            return None, None, f"span {c.start}-{c.end} is empty or outside the text (length {len(t.text)})"
        if c.quote is not None and c.quote != t.text[c.start : c.end]:
            return None, None, f"quote does not match the transcript text at {c.start}-{c.end}"
        return c.start, c.end, None
    if c.turn_index is not None:
        if not 0 <= c.turn_index < len(t.turns):
            return None, None, f"turn_index {c.turn_index} is out of range"
        turn = t.turns[c.turn_index]
        return turn.start, turn.end, None
    return None, None, None


def build_project(
    transcripts: Sequence[Transcript],
    codebook: Codebook,
    codings: Sequence[Coding],
    *,
    project_name: str = "quallm",
    machine_user_name: str = "quallm",
    include_notes: bool = True,
    description: str | None = None,
    created: str | None = None,
) -> tuple[bytes, dict[str, bytes], QdpxExport]:
    """The ``project.qde`` XML, the internal source files (name -> bytes) and a summary (path left empty).

    :func:`write_qdpx` zips these; use this directly to inspect or validate the XML.
    """
    when = created or _now()
    by_tid = {t.id: t for t in transcripts}
    skipped: list[str] = []
    kept: list[tuple[Coding, Transcript, int | None, int | None]] = []
    for c in codings:
        t = by_tid.get(c.transcript_id)
        problem = None
        start = end = None
        if t is None:
            problem = f"transcript {c.transcript_id!r} is not among the transcripts exported"
        elif codebook.get(c.code_id) is None:
            problem = "code is not in the codebook"
        else:
            start, end, problem = _span_of(c, t)
        if problem is not None:
            skipped.append(f"{c.transcript_id}: coding by {c.coder} of {c.code_id}: {problem}")
            continue
        assert t is not None
        kept.append((c, t, start, end))

    coders = sorted({c.coder for c, *_ in kept} - {machine_user_name})
    user_names = [machine_user_name, *coders]
    project = etree.Element(
        f"{_NS}Project", nsmap={None: NAMESPACE},
        name=_safe(project_name), origin=f"quallm {__version__}",
        creatingUserGUID=user_guid(machine_user_name), creationDateTime=when,
    )
    users = etree.SubElement(project, f"{_NS}Users")
    for n in user_names:
        etree.SubElement(users, f"{_NS}User", guid=user_guid(n), name=_safe(n))

    book = etree.SubElement(etree.SubElement(project, f"{_NS}CodeBook"), f"{_NS}Codes")
    labels = Counter(c.label for c in codebook.codes)

    def code_el(parent: Any, code: Any, color: str | None) -> Any:
        # Labels are what coders see; an id keeps a duplicated label unique.
        shown = code.label if labels[code.label] == 1 else f"{code.label} [{code.id}]"
        attrs = {"guid": _guid_of(codebook, code.id), "name": _safe(shown),
                 "isCodable": "true" if code.codable else "false"}
        if code.color or color:
            attrs["color"] = str(code.color or color)
        el = etree.SubElement(parent, f"{_NS}Code", attrs)
        etree.SubElement(el, f"{_NS}Description").text = _safe(_code_description(code))
        return el

    if codebook.has_hierarchy:  # the codebook's own tree, nested as it is
        def nest(parent: Any, parent_id: str | None) -> None:
            for code in codebook.children(parent_id):
                nest(code_el(parent, code, None), code.id)

        nest(book, None)
    elif codebook.is_default_kinds:
        for kind, (folder_name, color) in _KIND_FOLDERS.items():
            members = [c for c in codebook.codes if c.kind == kind]
            if not members:
                continue
            folder = etree.SubElement(
                book, f"{_NS}Code", guid=kind_folder_guid(kind), name=folder_name, isCodable="false", color=color
            )
            for code in members:
                code_el(folder, code, color)
    else:  # the codebook's own categories (or none): one folder per category, codes at the top when none
        for k in codebook.categories:
            members = [c for c in codebook.codes if c.kind == k.name]
            if members:
                folder = etree.SubElement(
                    book, f"{_NS}Code", guid=kind_folder_guid(k.name), name=_safe(k.title), isCodable="false"
                )
                for code in members:
                    code_el(folder, code, None)
        for code in codebook.codes:
            if not code.kind:
                code_el(book, code, None)

    files: dict[str, bytes] = {}
    sources = etree.SubElement(project, f"{_NS}Sources")
    note_els: list[tuple[str, str, str, str]] = []  # (guid, name, creating user, text)
    n_selections = 0
    seen: Counter[str] = Counter()
    for t in transcripts:
        sguid = source_guid(t.id)
        files[f"{sguid}.txt"] = t.text.encode("utf-8")
        src = etree.SubElement(
            sources, f"{_NS}TextSource", guid=sguid, name=_safe(t.id), plainTextPath=f"internal://{sguid}.txt",
            creatingUser=user_guid(machine_user_name), creationDateTime=when,
        )
        etree.SubElement(src, f"{_NS}Description").text = _safe(
            f"Transcript {t.id} ({t.format}), read by quallm from {Path(t.source).name}"
        )
        whole: list[Coding] = []
        for c, tt, start, end in kept:
            if tt.id != t.id:
                continue
            if start is None or end is None:
                whole.append(c)
                continue
            key = f"selection:{t.id}|{c.coder}|{c.code_id}|{start}|{end}"
            seen[key] += 1
            sel_guid = _guid(f"{key}|{seen[key]}")
            ucoder = user_guid(c.coder)
            sel = etree.SubElement(
                src, f"{_NS}PlainTextSelection", guid=sel_guid, name=_safe(_preview(t.text[start:end])),
                startPosition=str(start), endPosition=str(end), creatingUser=ucoder, creationDateTime=when,
            )
            coding = etree.SubElement(
                sel, f"{_NS}Coding", guid=_guid(f"coding:{sel_guid}"), creatingUser=ucoder, creationDateTime=when
            )
            etree.SubElement(coding, f"{_NS}CodeRef", targetGUID=_guid_of(codebook, c.code_id))
            n_selections += 1
            text = _note_text(c) if include_notes else None
            if text:
                nguid = _guid(f"note:{sel_guid}")
                etree.SubElement(sel, f"{_NS}NoteRef", targetGUID=nguid)
                note_els.append((nguid, f"{c.code_id} - {c.coder}", ucoder, text))
        for c in whole:  # no span: the code applies to the whole transcript
            ucoder = user_guid(c.coder)
            key = f"whole:{t.id}|{c.coder}|{c.code_id}"
            seen[key] += 1
            coding = etree.SubElement(
                src, f"{_NS}Coding", guid=_guid(f"{key}|{seen[key]}"), creatingUser=ucoder, creationDateTime=when
            )
            etree.SubElement(coding, f"{_NS}CodeRef", targetGUID=_guid_of(codebook, c.code_id))
    if note_els:
        notes = etree.SubElement(project, f"{_NS}Notes")
        for nguid, title, ucoder, text in note_els:
            note = etree.SubElement(
                notes, f"{_NS}Note", guid=nguid, name=_safe(title), creatingUser=ucoder, creationDateTime=when
            )
            etree.SubElement(note, f"{_NS}PlainTextContent").text = _safe(text)
    if description:
        etree.SubElement(project, f"{_NS}Description").text = _safe(description)
    if not len(sources):
        project.remove(sources)  # SourcesType needs at least one source
    xml = etree.tostring(project, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    summary = QdpxExport(
        path="", sources=len(transcripts), codes=len(codebook.codes), users=len(user_names),
        selections=n_selections, notes=len(note_els), skipped=skipped,
    )
    return xml, files, summary


def write_qdpx(
    out_path: str | Path,
    transcripts: Sequence[Transcript],
    codebook: Codebook,
    codings: Sequence[Coding],
    *,
    project_name: str = "quallm",
    machine_user_name: str = "quallm",
    include_notes: bool = True,
    description: str | None = None,
    created: str | None = None,
) -> QdpxExport:
    """Write a REFI-QDA ``.qdpx`` archive: ``project.qde`` plus ``sources/<guid>.txt`` per transcript.

    ``machine_user_name`` is the user that creates the project and its sources (codings keep their own
    coder as user). Codings whose transcript or code is not exported, or whose span or quote does not fit
    the transcript text, are left out and listed in the summary's ``skipped``. ``created`` (an
    ``xsd:dateTime``) fixes the timestamps, for byte-stable exports; by default it is now. The archive is
    written atomically.
    """
    out = Path(out_path)
    xml, files, summary = build_project(
        transcripts, codebook, codings, project_name=project_name, machine_user_name=machine_user_name,
        include_notes=include_notes, description=description, created=created,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("project.qde", xml)
            for name, data in sorted(files.items()):
                zf.writestr(f"sources/{name}", data)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return summary.model_copy(update={"path": str(out)})


def validate_project(qde: bytes | str | Path, schema: str | Path) -> list[str]:
    """Problems (one line each, empty if valid) of a ``project.qde`` against the REFI-QDA Project XSD.

    ``qde`` is the XML itself (bytes), or a path to a ``.qde`` or ``.qdpx``; ``schema`` is the path of
    ``Project.xsd``.
    """
    if isinstance(qde, bytes):
        xml = qde
    else:
        xml, _, archive = _open_project(Path(qde))
        if archive is not None:
            archive.close()
    return refi.validate_xml(xml, schema)


# ----------------------------------------------------------------------------------------- run export


def _human_codings(path: Path, transcripts: Sequence[Transcript], codebook: Codebook) -> tuple[list[Coding], list[str]]:
    """Human codings from a JSON list of Coding objects (``human_codings.json``) or a human-coding CSV."""
    if path.suffix.lower() == ".csv":
        from quallm.agreement.human_csv import read_human_csv

        return read_human_csv(path, transcripts, codebook.ids)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read human codings: {exc}") from exc
    if not isinstance(data, list):
        raise InputError(path, "expected a JSON list of codings")
    out: list[Coding] = []
    problems: list[str] = []
    for i, item in enumerate(data):
        try:
            out.append(Coding.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            problems.append(f"{path}: item {i}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}")
    return out, problems


def export_run(
    run_dir: str | Path,
    out_path: str | Path,
    *,
    include_human: str | Path | None = None,
    project_name: str | None = None,
    include_notes: bool = True,
) -> QdpxExport:
    """Export a run directory as ``.qdpx``: its transcripts, codebook, machine codings and human codings.

    Transcripts are re-read from the files the manifest lists, the codebook from the manifest's codebook
    path. Human codings come from ``include_human`` (a JSON list of codings, or a human-coding CSV) or,
    when not given, from ``run_dir/human_codings.json`` if the run was reconciled. Each reviewer's coding
    (``quallm review``, from ``review.jsonl``) is one more coder, ``quallm reviewed by NAME``, beside the
    machine's original, its decisions and the machine's rationales as notes. Problems reading human
    codings or the review log are added to the summary's ``skipped``.
    """

    run = open_run(run_dir)
    results = run.results
    transcripts = run.transcripts()
    if not (run.manifest.codebook and run.manifest.codebook.path):
        raise InputError(run.path / "manifest.json", "names no codebook file (codebook.path)")
    codebook, _ = run.codebook()
    codings = [c for r in results for c in r.codings]
    problems: list[str] = []
    human_path = Path(include_human) if include_human else run.path / "human_codings.json"
    if include_human or human_path.is_file():
        human, problems = _human_codings(human_path, transcripts, codebook)
        codings.extend(human)
    reviewed = reviewed_codings(run.path)
    codings.extend(reviewed.codings)
    problems.extend(reviewed.problems)
    model = run.manifest.model.name
    summary = write_qdpx(
        out_path, transcripts, codebook, codings,
        project_name=project_name or f"quallm run {run.path.name}",
        machine_user_name=f"quallm ({model})" if model else "quallm",
        include_notes=include_notes,
        description=f"Exported by quallm {__version__} from run directory {run.path.name}; "
        f"codebook {codebook.name} version {codebook.version}.",
    )
    return summary.model_copy(update={"skipped": problems + summary.skipped})
