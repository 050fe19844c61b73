"""Codebooks in the formats research teams keep them: CSV, REFI-QDA ``.qdc``, and the codebook in a project.

REFI-QDA (``.qdc``, and the ``CodeBook`` of a ``.qdpx`` / ``.qde``) holds per code only a name, a
description, whether it is codable, a colour and the tree. The name is quallm's label; what else
quallm knows of a code travels in the ``Description``, in this layout (read back on import):

    <the definition, any number of lines>

    Include: <one item per line>
    Exclude: <one item per line>
    Example: <one item per line>
    quallm code id: <id> (<kind>)

The block is the run of such lines at the end of the description (blank lines inside it are allowed;
an item's own line breaks are written as spaces). A description without it is all definition; the id is
then made from the name. ``Examples: a | b`` (one line, quallm's earlier ``.qdpx`` layout) is read too.
GUIDs are kept as ``guid:`` so codes exported again keep their identity.

CSV: a header row with ``id`` and ``label`` and any of ``definition, kind, parent, include, exclude,
examples, codable, guid, color``; a cell of ``include``, ``exclude`` or ``examples`` holds several
items separated by ``|`` (:data:`LIST_SEPARATOR`).

Categories: neither format can declare them, so the kinds the codes use are the codebook's (``challenge``
and ``enabler`` alone are the default ones); their descriptions do not travel.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from lxml import etree

from quallm import __version__
from quallm.core.codebook import DEFAULT_KIND_NAMES, OTHER_FORMATS, Code, Codebook
from quallm.core.errors import CodebookError, InputError
from quallm.ingest import refi
from quallm.ingest.archive import is_zip

CODEBOOK_NAMESPACE = "urn:QDA-XML:codebook:1.0"
LIST_SEPARATOR = "|"
CSV_COLUMNS = (
    "id",
    "label",
    "definition",
    "kind",
    "parent",
    "include",
    "exclude",
    "examples",
    "codable",
    "guid",
    "color",
)
_LIST_COLUMNS = ("include", "exclude", "examples")
_META = re.compile(r"^(?P<key>Include|Exclude|Examples?|quallm code id):[ \t]?(?P<value>.*)$")
_ID_LINE = re.compile(r"^(?P<id>\S+)(?: \((?P<kind>[^()]+)\))?\s*$")
_COLOR = re.compile(r"^#(?:[0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})$")
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def load_codebook(path: str | Path) -> Codebook:
    """Load and validate a codebook: YAML or JSON, CSV, REFI-QDA ``.qdc``, or the one in a ``.qdpx``/``.qde``
    (picked by extension). Errors name the file and the bad entry."""
    p = Path(path)
    if p.suffix.lower() in OTHER_FORMATS:
        return load_other(p)
    return Codebook.load(p)


def load_other(path: Path) -> Codebook:
    """A codebook from a ``.csv``, ``.qdc``, ``.qdpx`` or ``.qde`` file (by extension)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CodebookError(f"{path}: cannot read codebook (file not found)")
    if suffix == ".csv":
        return read_csv_codebook(path)
    if suffix == ".qdc":
        return read_qdc(path)
    return read_project_codebook(path)


# ------------------------------------------------------------------------------- the Description layout


def _flat(s: str) -> str:
    return " ".join(s.split())


def describe_code(code: Code) -> str:
    """A code's REFI-QDA ``Description``: its definition, then quallm's lines (see the module docstring)."""
    meta = [f"Include: {_flat(x)}" for x in code.include]
    meta += [f"Exclude: {_flat(x)}" for x in code.exclude]
    meta += [f"Example: {_flat(x)}" for x in code.examples]
    meta.append(f"quallm code id: {code.id}" + (f" ({code.kind})" if code.kind else ""))
    parts = [code.definition.strip()] if code.definition.strip() else []
    return "\n\n".join([*parts, "\n".join(meta)])


def parse_description(text: str) -> dict[str, Any]:
    """``definition``, ``include``, ``exclude``, ``examples`` and, when given, ``id`` and ``kind``."""
    lines = text.replace("\r\n", "\n").split("\n")
    meta: list[tuple[str, str]] = []
    cut = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if not line:
            continue
        m = _META.match(line)
        if m is None:
            break
        meta.append((m["key"], m["value"].strip()))
        cut = i
    out: dict[str, Any] = {"definition": "\n".join(lines[:cut]).strip(), "include": [], "exclude": [], "examples": []}
    for key, value in reversed(meta):
        if key == "quallm code id":
            m = _ID_LINE.match(value)
            if m:
                out["id"] = m["id"]
                if m["kind"]:
                    out["kind"] = m["kind"].strip()
        elif key == "Examples" and " | " in value:
            out["examples"] += [x.strip() for x in value.split(" | ") if x.strip()]
        elif value:
            out["examples" if key.startswith("Example") else key.lower()].append(value)
    return out


# ------------------------------------------------------------------------------------------- ids, kinds


def _slug(name: str, used: set[str]) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    base = re.sub(r"[^A-Za-z0-9_.\-]+", "_", ascii_name).strip("_.-")[:56] or "code"
    if not base[0].isalnum():
        base = "c" + base
    slug, n = base, 1
    while slug in used:
        n += 1
        slug = f"{base}_{n}"
    used.add(slug)
    return slug


def _with_kinds(data: dict[str, Any]) -> dict[str, Any]:
    """Declare the kinds the codes use, unless they are only the default ones (which need no declaring)."""
    used = list(dict.fromkeys(c["kind"] for c in data["codes"] if c.get("kind")))
    if any(k not in DEFAULT_KIND_NAMES for k in used):
        data["kinds"] = [{"name": k} for k in used]
    return data


# ------------------------------------------------------------------------------------------------- CSV


def read_csv_codebook(path: Path) -> Codebook:
    """A codebook from a CSV with a header row (see the module docstring); errors name the row."""
    from quallm.core.decode import read_text

    try:
        text, _ = read_text(path)
    except InputError as exc:
        raise CodebookError(f"{path}: cannot read codebook ({exc.problem})") from exc
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise CodebookError(f"{path}: the CSV is empty")
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h and h not in CSV_COLUMNS]
    if unknown:
        raise CodebookError(
            f"{path}: unknown column(s) {', '.join(map(repr, unknown))} (known: {', '.join(CSV_COLUMNS)})"
        )
    for needed in ("id", "label"):
        if needed not in header:
            raise CodebookError(f"{path}: no {needed!r} column (the header row needs at least id and label)")
    codes: list[dict[str, Any]] = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise CodebookError(f"{path}: row {n} has {len(row)} cells but the header has {len(header)}")
        code: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=False):
            cell = cell.strip()
            if not name or not cell:
                continue
            if name in _LIST_COLUMNS:
                code[name] = [x.strip() for x in cell.split(LIST_SEPARATOR) if x.strip()]
            elif name == "codable":
                if cell.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise CodebookError(f"{path}: row {n}: codable must be true or false, not {cell!r}")
                code[name] = cell.lower() in ("true", "yes", "1")
            else:
                code[name] = cell
        codes.append(code)
    if not codes:
        raise CodebookError(f"{path}: the CSV has a header but no codes")
    return Codebook.from_data(_with_kinds({"name": path.stem, "codes": codes}), source=str(path))


def to_csv(codebook: Codebook) -> str:
    """The codebook as a CSV that :func:`read_csv_codebook` reads (kind descriptions are not kept)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for c in codebook.codes:
        w.writerow(
            [
                c.id,
                c.label,
                c.definition,
                c.kind or "",
                c.parent or "",
                *(f" {LIST_SEPARATOR} ".join(_flat(x) for x in getattr(c, k)) for k in _LIST_COLUMNS),
                "true" if c.codable else "false",
                c.guid or "",
                c.color or "",
            ]
        )
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- REFI-QDA


def _read_zip_member(path: Path, pick: Callable[[Sequence[str]], str | None]) -> bytes:
    """The bytes of the one member ``pick`` chooses from the archive's names; nothing else is read.

    Read through :class:`~quallm.ingest.archive.SafeArchive`: lazily, within its inflation caps.
    """
    from quallm.ingest.archive import ArchiveError, SafeArchive

    try:
        with SafeArchive(path) as archive:
            names = [n for n in archive.names() if not n.endswith("/")]
            member = pick(names)
            if member is None:
                raise CodebookError(f"{path}: no .qde project file in the archive")
            return archive.read(member)
    except ArchiveError as exc:
        raise CodebookError(f"{path}: cannot read the archive ({exc.problem})") from exc


def _parse_xml(path: Path, data: bytes) -> Any:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, huge_tree=False)
    try:
        return etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise CodebookError(f"{path}: not well-formed XML ({exc})") from exc


_local, _kids, _kid = refi.local_name, refi.children, refi.child  # the shared REFI-QDA element helpers


def read_qdc(path: Path) -> Codebook:
    """A codebook from a REFI-QDA ``.qdc`` file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CodebookError(f"{path}: cannot read codebook ({exc.strerror or exc})") from exc
    root = _parse_xml(path, data)
    ns = etree.QName(root).namespace or ""
    if _local(root) != "CodeBook" or (ns and not ns.startswith("urn:QDA-XML:")):
        raise CodebookError(f"{path}: not a REFI-QDA codebook (root element <{_local(root)}>, expected <CodeBook>)")
    return _from_codebook_element(path, root, path.stem)


def read_project_codebook(path: Path) -> Codebook:
    """The codebook inside a REFI-QDA ``.qdpx`` archive or a bare ``.qde`` (any file name)."""
    from quallm.ingest.refi import pick_qde

    if is_zip(path):
        data = _read_zip_member(path, pick_qde)
    elif path.suffix.lower() == ".qdpx":
        raise CodebookError(f"{path}: not a zip archive (a .qdpx is a zip holding a .qde project file)")
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CodebookError(f"{path}: cannot read codebook ({exc.strerror or exc})") from exc
    root = _parse_xml(path, data)
    if _local(root) != "Project":
        raise CodebookError(f"{path}: not a REFI-QDA project (root element <{_local(root)}>, expected <Project>)")
    book = _kid(root, "CodeBook")
    if book is None:
        raise CodebookError(f"{path}: the project has no CodeBook")
    return _from_codebook_element(path, book, root.get("name") or path.stem)


def _description(el: Any) -> dict[str, Any]:
    d = _kid(el, "Description")
    return parse_description("".join(d.itertext()) if d is not None else "")


def _is_kind_folder(el: Any, guid: str) -> bool:
    """A non-codable folder quallm's .qdpx export puts a flat codebook's codes of one kind in."""
    from quallm.ingest.refi import kind_folder_guid

    kinds = {_description(child).get("kind") for child in _kids(el, "Code")}
    return any(k and kind_folder_guid(k) == guid for k in kinds)


def _from_codebook_element(path: Path, book: Any, name: str) -> Codebook:
    codes_el = _kid(book, "Codes")
    if codes_el is None or _kid(codes_el, "Code") is None:
        raise CodebookError(f"{path}: the codebook has no codes")
    used: set[str] = set()
    raw: list[tuple[Any, dict[str, Any], str | None]] = []  # (element, parsed description, parent element guid)

    def walk(el: Any, parent: str | None) -> None:
        guid = (el.get("guid") or "").strip().strip("{}").lower()
        if parent is None and (el.get("isCodable") or "").lower() == "false" and _is_kind_folder(el, guid):
            for child in _kids(el, "Code"):
                walk(child, None)
            return
        raw.append((el, _description(el), parent))
        for child in _kids(el, "Code"):
            walk(child, guid or None)

    for el in _kids(codes_el, "Code"):
        walk(el, None)
    # Ids given in descriptions are kept first, so a made-up id never takes one of them.
    for _, d, _ in raw:
        if d.get("id"):
            if d["id"] in used:
                raise CodebookError(f"{path}: two codes have the quallm id {d['id']!r}")
            used.add(d["id"])
    ids_by_guid: dict[str, str] = {}
    codes: list[dict[str, Any]] = []
    for el, d, parent in raw:
        label = (el.get("name") or "").strip()
        cid = d.get("id") or _slug(label, used)
        # quallm's .qdpx export makes a repeated label unique as "label [id]".
        label = label.removesuffix(f" [{cid}]") or cid
        guid = (el.get("guid") or "").strip().strip("{}").lower()
        if guid:
            ids_by_guid[guid] = cid
        code: dict[str, Any] = {
            "id": cid,
            "label": label,
            "definition": d["definition"],
            "include": d["include"],
            "exclude": d["exclude"],
            "examples": d["examples"],
            "codable": (el.get("isCodable") or "true").strip().lower() not in ("false", "0"),
            "parent": parent,
        }
        if d.get("kind"):
            code["kind"] = d["kind"]
        if guid:
            code["guid"] = guid
        color = (el.get("color") or "").strip()
        if _COLOR.match(color):
            code["color"] = color
        codes.append(code)
    for c in codes:
        c["parent"] = ids_by_guid.get(c["parent"]) if c["parent"] else None
    return Codebook.from_data(_with_kinds({"name": name, "codes": codes}), source=str(path))


def _safe(s: str) -> str:
    return _XML_BAD.sub("", s)


def build_qdc(codebook: Codebook) -> bytes:
    """The codebook as a REFI-QDA ``.qdc`` document (namespace ``urn:QDA-XML:codebook:1.0``), the tree kept."""
    from quallm.ingest.refi import code_guid

    ns = f"{{{CODEBOOK_NAMESPACE}}}"
    root = etree.Element(f"{ns}CodeBook", nsmap={None: CODEBOOK_NAMESPACE}, origin=f"quallm {__version__}")
    codes_el = etree.SubElement(root, f"{ns}Codes")

    def add(parent_el: Any, code: Code) -> None:
        attrs = {
            "guid": code.guid or code_guid(code.id),
            "name": _safe(code.label),
            "isCodable": "true" if code.codable else "false",
        }
        if code.color:
            attrs["color"] = code.color
        el = etree.SubElement(parent_el, f"{ns}Code", attrs)
        etree.SubElement(el, f"{ns}Description").text = _safe(describe_code(code))
        for child in codebook.children(code.id):
            add(el, child)

    for top in codebook.children(None):
        add(codes_el, top)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True))


def codebook_schema_path() -> Path:
    """The REFI-QDA Codebook XSD shipped with quallm (provenance in ``quallm/data/README.md``)."""
    return Path(str(resources.files("quallm").joinpath("data", "Codebook.xsd")))


def validate_qdc(xml: bytes, schema: str | Path | None = None) -> list[str]:
    """Problems (one line each, empty if valid) of a ``.qdc`` document against the REFI-QDA Codebook XSD."""
    return refi.validate_xml(xml, schema or codebook_schema_path())


def export_codebook(codebook: Codebook, out: str | Path) -> Path:
    """Write ``codebook`` to ``out`` as ``.qdc`` (checked against the XSD), ``.csv``, or ``.yaml``/``.yml``."""
    from quallm.core.files import atomic_write_text

    p = Path(out)
    suffix = p.suffix.lower()
    if suffix == ".qdc":
        xml = build_qdc(codebook)
        problems = validate_qdc(xml)
        if problems:  # a bug in quallm, never the user's codebook: say so rather than write a bad file
            raise CodebookError(f"{p}: the .qdc does not validate against the REFI-QDA schema: {problems[0]}")
        atomic_write_text(p, xml.decode("utf-8"))
    elif suffix == ".csv":
        atomic_write_text(p, to_csv(codebook))
    elif suffix in (".yaml", ".yml"):
        atomic_write_text(p, codebook.to_yaml())
    else:
        raise CodebookError(f"{p}: write a codebook as .qdc, .csv or .yaml")
    return p
