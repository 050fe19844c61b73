"""REFI-QDA project exchange, the writing half: a run as a ``.qdpx`` archive or a bare ``project.qde``.

The format, the offsets and the export layout are described in ``quallm.ingest.qdpx`` (the reading
half, whose constants and GUID helpers this uses).
"""


from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lxml import etree
from pydantic import BaseModel, Field, ValidationError

from quallm import __version__
from quallm.analysis.reviewed import reviewed_codings
from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.core.errors import InputError
from quallm.core.transcript import Transcript
from quallm.ingest import refi
from quallm.ingest.qdpx import (
    NAMESPACE,
    _guid_of,
    _open_project,
)
from quallm.ingest.refi import (
    _guid,
    kind_folder_guid,
    source_guid,
    user_guid,
)
from quallm.run.opening import open_run

_NS = f"{{{NAMESPACE}}}"
# Said in the note of a coding whose code a calibration did not find reliable (quallm calibrate).
NEEDS_REVIEW_NOTE = "NEEDS REVIEW: the calibration on the human-coded sample did not find this code reliable."
# Characters XML 1.0 cannot hold at all (control characters, lone surrogates, U+FFFE/U+FFFF).
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_KIND_FOLDERS = {"challenge": ("Challenges", "#C0392B"), "enabler": ("Enablers", "#27AE60")}



class QdpxExport(BaseModel):
    """What :func:`write_qdpx` wrote, and the codings it had to leave out (one line each)."""

    path: str
    sources: int
    codes: int
    users: int
    selections: int
    notes: int
    skipped: list[str] = Field(default_factory=list)

def _safe(s: str) -> str:
    """``s`` without the characters XML 1.0 cannot carry (they would make lxml refuse the document)."""
    return _XML_BAD.sub("", s)


def _preview(s: str, limit: int = 80) -> str:
    flat = " ".join(s.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _code_description(code: Any) -> str:
    from quallm.ingest.codebooks import describe_code

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
        from quallm.ingest.human_csv import read_human_csv

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
