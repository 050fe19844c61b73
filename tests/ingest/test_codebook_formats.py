"""Codebooks as CSV, REFI-QDA .qdc and the codebook inside a .qdpx/.qde; export validated against the XSD."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from lxml import etree
from typer.testing import CliRunner

from quallm.cli import app
from quallm.coding.codebook_check import check_codebook
from quallm.core.codebook import Codebook
from quallm.core.errors import CodebookError
from quallm.ingest.codebooks import (
    build_qdc,
    describe_code,
    export_codebook,
    load_codebook,
    parse_description,
    to_csv,
    validate_qdc,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo" / "codebook.yaml"
XSD = ROOT / "src" / "quallm" / "data" / "Codebook.xsd"
runner = CliRunner()

TREE = {
    "name": "Tree",
    "kinds": [{"name": "barrier"}, {"name": "facilitator"}],
    "codes": [
        {"id": "family", "kind": "barrier", "label": "Family pressures", "codable": False, "color": "#c0392b"},
        {
            "id": "poverty",
            "parent": "family",
            "label": "Poverty",
            "definition": "Low income.\nSecond line.",
            "include": ["benefit cuts; sanctions", "food banks"],
            "exclude": ["cuts to services (code cuts)"],
            "examples": ["We see more families at the food bank."],
        },
        {
            "id": "help",
            "kind": "facilitator",
            "label": "Early help",
            "definition": "Support before crisis.",
            "guid": "0b3ac0c6-61f1-4f4b-8e2a-3d3f8f7a1a11",
        },
    ],
}


def test_description_layout_round_trips() -> None:
    cb = Codebook.from_data(TREE)
    code = cb.get("poverty")
    assert code is not None
    text = describe_code(code)
    assert text.endswith("Example: We see more families at the food bank.\nquallm code id: poverty (barrier)")
    back = parse_description(text)
    assert back == {
        "definition": "Low income.\nSecond line.",
        "include": ["benefit cuts; sanctions", "food banks"],
        "exclude": ["cuts to services (code cuts)"],
        "examples": ["We see more families at the food bank."],
        "id": "poverty",
        "kind": "barrier",
    }
    # quallm's earlier .qdpx layout, and a description written by another tool (all definition)
    assert parse_description("Def.\n\nExamples: a | b\n\nquallm code id: X (enabler)")["examples"] == ["a", "b"]
    assert parse_description("Just words.\nInclude nothing here.") == {
        "definition": "Just words.\nInclude nothing here.",
        "include": [],
        "exclude": [],
        "examples": [],
    }


def test_qdc_export_validates_and_reads_back(tmp_path: Path) -> None:
    cb = Codebook.from_data(TREE)
    xml = build_qdc(cb)
    assert validate_qdc(xml, XSD) == []
    root = etree.fromstring(xml)
    ns = {"c": "urn:QDA-XML:codebook:1.0"}
    family = root.find("c:Codes/c:Code", ns)
    assert family is not None and family.get("isCodable") == "false" and family.get("color") == "#C0392B"
    assert [c.get("name") for c in family.findall("c:Code", ns)] == ["Poverty"]  # nested under its parent
    help_el = root.find("c:Codes/c:Code[@name='Early help']", ns)
    assert help_el is not None and help_el.get("guid") == "0b3ac0c6-61f1-4f4b-8e2a-3d3f8f7a1a11"
    out = export_codebook(cb, tmp_path / "tree.qdc")
    back = load_codebook(out)
    assert [(c.id, c.parent, c.kind, c.codable) for c in back.codes] == [
        (c.id, c.parent, c.kind, c.codable) for c in cb.codes
    ]
    assert back.get("poverty") == cb.get("poverty").model_copy(update={"guid": back.get("poverty").guid})  # type: ignore[union-attr]
    assert back.get("help").guid == cb.get("help").guid  # type: ignore[union-attr]
    assert [k.name for k in back.categories] == ["barrier", "facilitator"]
    # GUIDs are kept, so a second export is identical
    assert build_qdc(back) == xml


def test_demo_codebook_exports_to_valid_qdc_via_cli(tmp_path: Path) -> None:
    out = tmp_path / "demo.qdc"
    r = runner.invoke(app, ["codebook", "export", str(DEMO), str(out)])
    assert r.exit_code == 0, r.output
    assert validate_qdc(out.read_bytes(), XSD) == []
    back = load_codebook(out)
    demo = load_codebook(DEMO)
    assert back.ids == demo.ids and back.is_default_kinds
    assert [(c.label, c.definition, c.include, c.exclude, c.examples, c.kind) for c in back.codes] == [
        (c.label, c.definition.strip(), c.include, c.exclude, c.examples, c.kind) for c in demo.codes
    ]


OTHER_TOOL = """<?xml version="1.0" encoding="utf-8"?>
<CodeBook xmlns="urn:QDA-XML:codebook:0:4" origin="ATLAS.ti">
 <Codes>
  <Code guid="{AAAAAAAA-1111-2222-3333-444444444444}" name="Wellbeing" isCodable="false" color="#0a0">
   <Code guid="BBBBBBBB-1111-2222-3333-444444444444" name="Sleep" isCodable="true">
    <Description>Talk about sleep.</Description>
   </Code>
   <Code guid="CCCCCCCC-1111-2222-3333-444444444444" name="Sleep" isCodable="true"/>
  </Code>
  <Code guid="DDDDDDDD-1111-2222-3333-444444444444" name="Négociation des rôles" isCodable="true"/>
 </Codes>
</CodeBook>
"""


def test_qdc_from_another_tool_and_namespace(tmp_path: Path) -> None:
    p = tmp_path / "atlas.qdc"
    p.write_text(OTHER_TOOL, encoding="utf-8")
    cb = load_codebook(p)
    assert cb.all_ids == ["Wellbeing", "Sleep", "Sleep_2", "Negociation_des_roles"]
    assert cb.get("Sleep").parent == "Wellbeing" and cb.get("Sleep_2").parent == "Wellbeing"  # type: ignore[union-attr]
    assert cb.get("Wellbeing").color == "#00AA00" and not cb.get("Wellbeing").codable  # type: ignore[union-attr]
    assert cb.get("Sleep").guid == "bbbbbbbb-1111-2222-3333-444444444444"  # type: ignore[union-attr]
    assert cb.get("Negociation_des_roles").label == "Négociation des rôles"  # type: ignore[union-attr]
    assert cb.categories == () and cb.name == "atlas"
    assert validate_qdc(build_qdc(cb), XSD) == []


def _project(codebook_xml: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<Project xmlns="urn:QDA-XML:project:1.0" name="Study">'
        f"<CodeBook>{codebook_xml}</CodeBook></Project>"
    )


def test_codebook_inside_a_qdpx_with_any_qde_name(tmp_path: Path) -> None:
    codes = etree.tostring(etree.fromstring(OTHER_TOOL.encode()).find("{urn:QDA-XML:codebook:0:4}Codes")).decode()
    codes = codes.replace("urn:QDA-XML:codebook:0:4", "urn:QDA-XML:project:1.0")
    archive = tmp_path / "study.qdpx"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("My Study.qde", _project(codes))  # ATLAS.ti names the .qde after the project
        zf.writestr("sources/x.txt", "not read")
    cb = load_codebook(archive)
    assert cb.name == "Study" and cb.all_ids[:2] == ["Wellbeing", "Sleep"]
    bare = tmp_path / "project.qde"
    bare.write_text(_project(codes), encoding="utf-8")
    assert load_codebook(bare).all_ids == cb.all_ids


def test_quallm_qdpx_export_nests_codes_and_reads_back(tmp_path: Path) -> None:
    from quallm.outputs.qdpx import build_project, validate_project

    cb = Codebook.from_data(TREE)
    xml, _, _ = build_project([], cb, [])
    assert validate_project(xml, ROOT / "tests" / "data" / "refi" / "Project.xsd") == []
    p = tmp_path / "project.qde"
    p.write_bytes(xml)
    back = load_codebook(p)
    assert [(c.id, c.parent) for c in back.codes] == [(c.id, c.parent) for c in cb.codes]
    # a flat default codebook sits in Challenges / Enablers folders, which are not read back as codes
    demo = load_codebook(DEMO)
    xml, _, _ = build_project([], demo, [])
    p.write_bytes(xml)
    assert load_codebook(p).all_ids == demo.ids


CSV = """id,label,definition,kind,parent,include,exclude,examples
family,Family pressures,,barrier,,,,
poverty,Poverty,Low income.,,family,benefit cuts | food banks,cuts to services (code cuts),We see more families.
help,Early help,Support before crisis.,facilitator,,,,
"""


def test_csv_codebook(tmp_path: Path) -> None:
    p = tmp_path / "cb.csv"
    p.write_text(CSV, encoding="utf-8")
    cb = load_codebook(p)
    assert cb.get("poverty").include == ("benefit cuts", "food banks")  # type: ignore[union-attr]
    assert cb.get("poverty").kind == "barrier" and cb.get("poverty").parent == "family"  # type: ignore[union-attr]
    assert [k.name for k in cb.categories] == ["barrier", "facilitator"]
    again = tmp_path / "again.csv"
    again.write_text(to_csv(cb), encoding="utf-8")
    assert load_codebook(again).codes == cb.codes


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("a.csv", "id,label,colour\nA,x,red\n", "unknown column(s) 'colour'"),
        ("b.csv", "label,definition\nx,y\n", "no 'id' column"),
        ("c.csv", "id,label,parent\nA,x,Z\n", "codes[0] (id 'A'): parent 'Z' is not a code"),
        ("d.csv", "id,label,codable\nA,x,maybe\n", "row 2: codable must be true or false"),
        ("e.csv", "id,label\n", "no codes"),
        ("f.qdc", "<CodeBook><Codes>", "not well-formed XML"),
        ("g.qdc", "<Project/>", "not a REFI-QDA codebook"),
        ("h.qdc", '<CodeBook xmlns="urn:QDA-XML:codebook:1.0"><Codes/></CodeBook>', "has no codes"),
        ("i.qdpx", "not a zip", "not a zip archive"),
        ("j.qde", "<CodeBook/>", "not a REFI-QDA project"),
        ("k.qde", '<Project xmlns="urn:QDA-XML:project:1.0"/>', "has no CodeBook"),
        (
            "l.qdc",
            '<CodeBook xmlns="urn:QDA-XML:codebook:1.0"><Codes><Code guid="AAAAAAAA-1111-2222-3333-444444444444"'
            ' name="A" isCodable="true"><Description>quallm code id: A (barrier)</Description></Code>'
            "</Codes></CodeBook>",
            None,
        ),
    ],
)
def test_format_load_errors_name_the_file(tmp_path: Path, name: str, content: str, needle: str | None) -> None:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    if needle is None:  # a kind only a .qdc names is declared by the import, not an error
        assert [k.name for k in load_codebook(p).categories] == ["barrier"]
        return
    with pytest.raises(CodebookError) as ei:
        load_codebook(p)
    assert needle in str(ei.value) and str(p) in str(ei.value)


def test_zip_without_qde(tmp_path: Path) -> None:
    archive = tmp_path / "x.qdpx"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(CodebookError, match=r"no \.qde project file"):
        load_codebook(archive)


class _Fixed:
    """An embedder with given vectors: the near-duplicate arithmetic, apart from MiniLM."""

    name = "fixed"

    def __init__(self, vecs: list[list[float]]) -> None:
        import numpy as np

        self.vecs = np.array(vecs, dtype=np.float32)

    def embed(self, texts: list[str]) -> object:
        assert len(texts) == len(self.vecs)
        return self.vecs


def test_check_flags_empty_definitions_bad_pointers_and_size() -> None:
    cb = Codebook.from_data(TREE)
    report = check_codebook(cb, count_tokens=lambda s: len(s.split()), tokenizer="words")
    assert "code 'poverty': its exclude note names 'cuts', which is not a code id" in report.warnings
    assert not any("family" in w for w in report.warnings)  # a heading needs no definition
    assert report.tokens > 10 and "near-duplicate check skipped" in report.notes[0]
    empty = Codebook.from_data({"codes": [{"id": "A", "label": "a"}, {"id": "B", "label": "b", "definition": "d"}]})
    got = check_codebook(empty, embedder=_Fixed([[1.0, 0.0], [0.6, 0.8]]))  # type: ignore[arg-type]
    assert got.warnings == ["code 'A': no definition (the model sees only its label)"]
    dup = check_codebook(empty, embedder=_Fixed([[1.0, 0.0], [0.96, 0.28]]))  # type: ignore[arg-type]
    assert dup.near_duplicates == [("A", "B", pytest.approx(0.96))]


def test_check_with_minilm_finds_a_paraphrase() -> None:
    from quallm.core.errors import ModelNotAvailableError
    from quallm.models.embeddings import MiniLMEmbedder, minilm_model_path

    pytest.importorskip("onnxruntime")
    try:
        minilm_model_path()
    except ModelNotAvailableError:
        pytest.skip("MiniLM model not installed")
    cb = Codebook.from_data(
        {
            "codes": [
                {"id": "A", "label": "Funding", "definition": "Financial constraints on childrens services budgets"},
                {
                    "id": "B",
                    "label": "Money",
                    "definition": "Budget pressure and financial limits on childrens services",
                },
                {"id": "C", "label": "Leadership", "definition": "Leaders who back the work"},
            ]
        }
    )
    report = check_codebook(cb, embedder=MiniLMEmbedder())
    assert [(a, b) for a, b, _ in report.near_duplicates] == [("A", "B")]
    demo = check_codebook(load_codebook(DEMO), embedder=MiniLMEmbedder())
    assert demo.near_duplicates == []


def test_cli_codebook_check(tmp_path: Path) -> None:
    r = runner.invoke(app, ["codebook", "check", str(DEMO)])
    assert r.exit_code == 0, r.output
    assert "tokens" in r.output and "12 codable codes, categories: challenge, enabler; 0 warning(s)" in r.output
    p = tmp_path / "cb.yaml"
    p.write_text("codes:\n  - {id: A, kind: enabler, label: x, exclude: ['(use Z_other)']}\n", encoding="utf-8")
    r = runner.invoke(app, ["codebook", "check", str(p)])
    assert r.exit_code == 1 and "no definition" in r.output and "'Z_other', which is not a code id" in r.output
