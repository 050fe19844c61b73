"""Codebook validation, chunking, grounding, prompt hashing, tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest

from quallm.coding.prompting import kind_values, load_prompt
from quallm.core.codebook import Codebook
from quallm.core.errors import CodebookError
from quallm.core.spans import align_quote, sentence_spans
from quallm.ingest.chunking import chunk_transcript
from quallm.ingest.codebooks import load_codebook
from quallm.ingest.tokenizers import CallableTokenizer, TiktokenTokenizer, encoding_for_model
from quallm.ingest.transcripts import load_transcript


def words() -> CallableTokenizer:
    return CallableTokenizer(lambda s: len(s.split()))


def test_codebook_loads_and_hashes(tiny_codebook_yaml: Path) -> None:
    cb = load_codebook(tiny_codebook_yaml)
    assert cb.ids == ["C_money", "E_help"] and len(cb.hash) == 64
    again = Codebook.from_data(__import__("yaml").safe_load(cb.to_yaml()))
    assert again == cb


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("codes:\n  - id: A1\n    kind: barrier\n    label: x\n    definition: y\n", "(id 'A1'): kind 'barrier'"),
        ("codes:\n  - id: A1\n    kind: enabler\n", "codes[0] (id 'A1').label"),
        (
            "codes:\n  - {id: A, kind: enabler, label: x, definition: y}\n  - {id: A, kind: enabler, label: z, "
            "definition: w}\n",
            "duplicate id 'A'",
        ),
        ("codes: []\n", "codes"),
        ("codes: [\n", "not valid YAML"),
        ("codes:\n  - id: 'bad id!'\n    kind: enabler\n    label: x\n    definition: y\n", "codes[0]"),
    ],
)
def test_codebook_errors_point_at_entry(tmp_path: Path, yaml_text: str, needle: str) -> None:
    p = tmp_path / "cb.yaml"
    p.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(CodebookError) as ei:
        load_codebook(p)
    assert needle in str(ei.value) and str(p) in str(ei.value)


def test_chunks_never_split_turns(sample_txt: Path) -> None:
    t = load_transcript(sample_txt)
    chunks = chunk_transcript(t, words(), budget=40)
    seen = [s.turn_index for c in chunks for s in c.segments]
    coded = [s.turn_index for c in chunks for s in c.coded_segments]
    assert sorted(coded) == [x.index for x in t.coded_turns()]  # each answer exactly once, none split
    assert len(seen) == len(set(seen))
    assert all(s.part == 0 for c in chunks for s in c.segments)
    assert len(chunks) > 1


def test_long_turn_splits_on_sentences_and_context_is_not_coded(sample_txt: Path) -> None:
    t = load_transcript(sample_txt)
    chunks = chunk_transcript(t, words(), budget=12, context_tokens=30)
    parts = [s for c in chunks for s in c.segments if s.turn_index == 3]
    assert len(parts) >= 2 and all(p.part >= 1 for p in parts)
    assert "".join(p.text for p in parts).replace(" ", "").replace("\n", "") == t.turns[3].text.replace(
        " ", ""
    ).replace("\n", "")
    for p in parts:
        assert t.text[p.start : p.end] == p.text and p.text[-1] in ".!?"
    assert any(c.context for c in chunks[1:])
    coded = [(s.turn_index, s.part) for c in chunks for s in c.segments]
    assert len(coded) == len(set(coded))  # context rides along but no segment is coded twice


def test_sentence_spans_cover_text() -> None:
    text = 'He said "no." Then we left! Was it right? Yes.'
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == ['He said "no."', "Then we left!", "Was it right?", "Yes."]


@pytest.mark.parametrize(
    ("quote", "status", "expected"),
    [
        ("the budget is", "exact", "the budget is"),
        ("The budget is 'really' tight", "normalised", "the budget is \u2018really\u2019 tight"),
        ("we had to cut early help services", "normalised", "We had to cut   early help services"),
        ("We had to cut early-help service last year", "fuzzy", "We had to cut   early help services last year"),
        ("budget is ... last year", "exact", None),
    ],
)
def test_alignment_statuses(quote: str, status: str, expected: str | None) -> None:
    text = "Well, honestly, the budget is \u2018really\u2019 tight.  We had to cut   early help services last year."
    a = align_quote(quote, text)
    assert a is not None and a.status == status
    if expected is not None:
        assert text[a.start : a.end] == expected


@pytest.mark.parametrize("quote", ["nothing like this is here at all", "", "ok", "(.*)+ regex chars [a-z"])
def test_alignment_refuses_what_is_not_there(quote: str) -> None:
    assert align_quote(quote, "Well, honestly, the budget is tight. We had to cut early help.") is None


def test_alignment_respects_window() -> None:
    text = "budget here. and budget there."
    a = align_quote("budget", text, 10)
    assert a is not None and a.start == 17


def test_prompt_hash_is_stable_and_renders() -> None:
    p = load_prompt("code_turn")
    assert p.hash == load_prompt("code_turn").hash and len(p.hash) == 16
    system, user = p.render(
        codebook_name="X", codebook="- A", max_codes="3", question="Q?", speaker="R", answer="A.", **kind_values(())
    )
    assert "- A" in system and "Q?" in user and "$" not in user


def test_shipped_tiktoken_encodings_work_offline() -> None:
    assert encoding_for_model("gpt-4o-mini") == "o200k_base" and encoding_for_model("gpt-4") == "cl100k_base"
    enc = TiktokenTokenizer("cl100k_base").encoding
    assert enc.encode("hello world") == [15339, 1917]  # tiktoken's documented ids for cl100k_base
    assert TiktokenTokenizer("o200k_base").count("hello world") == 2
