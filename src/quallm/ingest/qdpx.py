"""REFI-QDA project exchange, the reading half: ``.qdpx`` archives and bare ``project.qde`` files.

The writing half (export of a run) is ``quallm.outputs.qdpx``: it opens runs and reviewed codings,
which the ingest layer must not import.

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

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quallm.core.codebook import Codebook
from quallm.core.codings import Alignment, Coding
from quallm.core.errors import InputError
from quallm.core.transcript import Transcript
from quallm.ingest import refi
from quallm.ingest.archive import ArchiveLimits, SafeArchive, is_zip
from quallm.ingest.refi import (
    code_guid,
    pick_qde,
)

NAMESPACE = "urn:QDA-XML:project:1.0"
# Marks the quallm metadata line of a note and the quallm id inside a code's description.
_NOTE_META = re.compile(r"^quallm: alignment=(?P<alignment>\w+)(?: confidence=(?P<confidence>[0-9.eE+-]+))?\s*$")
_CODE_ID_LINE = re.compile(r"^quallm code id: (?P<id>\S+)", re.MULTILINE)
# Extensions stripped from a source name to get a transcript id when no transcripts are given.
_SOURCE_SUFFIXES = (".txt", ".md", ".markdown", ".vtt", ".srt", ".docx", ".doc", ".rtf", ".odt", ".pdf", ".json")
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
    caps of :class:`~quallm.ingest.archive.SafeArchive`); for a bare .qde, only plain file names
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
    environment, see :class:`~quallm.ingest.archive.ArchiveLimits`); ``relative://`` and
    ``absolute://`` paths are never followed (reported as a problem).

    Problems are one line each (``file: problem``). An unreadable file, a zip without ``project.qde``,
    an archive past its limits (:class:`~quallm.ingest.archive.ArchiveLimitError`) or XML that is
    not a REFI-QDA project raise :class:`~quallm.core.errors.InputError`.
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
