"""REFI-QDA identities quallm gives in exports (stable uuid5 GUIDs) and the project file inside an archive.

Shared by the project exchange (``qdpx.py``) and the codebook formats (``codebooks.py``), so neither
imports the other.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lxml import etree

# Fixed namespace for quallm's uuid5 GUIDs: the same key always gives the same GUID.
GUID_NAMESPACE = uuid.UUID("6f1d3c1e-8a52-5b4e-9f0a-2d7c4e9b1a35")


def _guid(key: str) -> str:
    return str(uuid.uuid5(GUID_NAMESPACE, key))


def code_guid(code_id: str) -> str:
    """The GUID quallm gives a code in exports (stable: uuid5 of the code id)."""
    return _guid(f"code:{code_id}")


def kind_folder_guid(kind: str) -> str:
    """The GUID of the non-codable folder that holds a flat codebook's codes of one kind in exports."""
    return _guid(f"kind:{kind}")


def source_guid(transcript_id: str) -> str:
    """The GUID quallm gives a transcript's text source in exports."""
    return _guid(f"source:{transcript_id}")


def user_guid(name: str) -> str:
    """The GUID quallm gives a coder in exports."""
    return _guid(f"user:{name}")


def pick_qde(names: Sequence[str]) -> str | None:
    """The project file (``project.qde``, else the one ``.qde``) among an archive's member names."""
    for n in names:
        if n.lower() == "project.qde":
            return n
    top = [n for n in names if n.lower().endswith(".qde") and "/" not in n]
    anywhere = [n for n in names if n.lower().endswith(".qde")]
    # Some tools name the file after the project; accept one unambiguous .qde.
    for group in (top, anywhere):
        if len(group) == 1:
            return group[0]
    return None


def local_name(el: Any) -> str:
    """An element's tag without its namespace ('' for comments and processing instructions)."""
    return str(etree.QName(el).localname) if isinstance(el.tag, str) else ""


def children(el: Any, name: str) -> Iterator[Any]:
    """Child elements called ``name``, whatever namespace (or none) the file puts them in: tools write
    urn:QDA-XML:project:1.0, urn:QDA-XML:codebook:1.0, ...:0:4, or none."""
    for child in el:
        if isinstance(child.tag, str) and local_name(child) == name:
            yield child


def child(el: Any, name: str) -> Any | None:
    """The first child element called ``name`` (any namespace), or None."""
    return next(children(el, name), None)


def validate_xml(xml: bytes | str, schema: str | Path) -> list[str]:
    """Problems (one line each, empty if valid) of an XML document against an XSD; entities never
    resolved and nothing fetched."""
    xsd = etree.XMLSchema(etree.parse(str(schema)))
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        doc = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, parser=parser)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    if xsd.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in xsd.error_log]
