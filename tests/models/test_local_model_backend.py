"""LocalLlamaModel on a stand-in Llama: request mapping, grammars, errors (no model file needed)."""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from quallm.core.errors import ModelError, ModelNotAvailableError
from quallm.models.base import ChatModel, ChatRequest, Message, OutputMode
from quallm.models.local_llama import LocalLlamaModel, available_cpus, int_range_gbnf, schema_to_gbnf

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="grammar building needs llama-cpp-python")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "codes": {
            "type": "array",
            "items": {"type": "string", "enum": ["C01", "E01", "none"]},
            "maxItems": 2,
        },
        "quote": {"type": "string", "maxLength": 200},
    },
    "required": ["codes", "quote"],
    "additionalProperties": False,
}


class FakeLlama:
    """Records create_chat_completion calls and answers like llama-cpp-python."""

    def __init__(self, *, finish_reason: str = "stop", error: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.finish_reason = finish_reason
        self.error = error
        self.active = 0
        self.max_active = 0

    def create_chat_completion(self, **kwargs: Any) -> dict[str, Any]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(0.01)
            self.calls.append(kwargs)
            if self.error is not None:
                raise self.error
            return {
                "choices": [
                    {
                        "message": {"role": "assistant", "content": '{"codes": []}'},
                        "finish_reason": self.finish_reason,
                    }
                ],
                "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
            }
        finally:
            self.active -= 1

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        assert add_bos is False and special is False
        return list(range(len(text.split())))


def _model(llama: FakeLlama | None = None) -> LocalLlamaModel:
    return LocalLlamaModel(Path("/models/tiny.gguf"), sha256="AB" * 32, llama=llama or FakeLlama())


def _request(**changes: Any) -> ChatRequest:
    values: dict[str, Any] = {
        "model": "tiny.gguf",
        "endpoint": "local:abababababababab",
        "messages": (Message(role="system", content="You code."), Message(role="user", content="Text.")),
        "json_schema": None,
        "temperature": 0.0,
        "max_tokens": 64,
        "seed": 3,
    }
    values.update(changes)
    return ChatRequest(**values)


def test_identity_and_protocol() -> None:
    model = _model()
    assert isinstance(model, ChatModel)
    assert model.name == "tiny.gguf"
    assert model.endpoint == "local:abababababababab"
    assert model.output_mode is OutputMode.JSON_SCHEMA
    assert model.n_threads == available_cpus() >= 1
    assert model.n_ctx == 4096


def test_complete_maps_request_and_response() -> None:
    llama = FakeLlama()
    completion = _model(llama).complete(_request())
    call = llama.calls[0]
    assert call["messages"] == [
        {"role": "system", "content": "You code."},
        {"role": "user", "content": "Text."},
    ]
    assert (call["temperature"], call["max_tokens"], call["seed"], call["stream"]) == (0.0, 64, 3, False)
    assert "grammar" not in call and "response_format" not in call
    assert completion.content == '{"codes": []}'
    assert completion.finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (42, 7)
    assert completion.model == "tiny.gguf"


def test_no_seed_is_left_to_llama() -> None:
    llama = FakeLlama()
    _model(llama).complete(_request(seed=None))
    assert "seed" not in llama.calls[0]


def test_length_finish_is_reported_like_openai() -> None:
    completion = _model(FakeLlama(finish_reason="length")).complete(_request())
    assert completion.finish_reason == "length"


def test_llama_errors_become_model_errors() -> None:
    overflow = ValueError("Requested tokens (5000) exceed context window of 4096")
    with pytest.raises(ModelError, match="larger n_ctx"):
        _model(FakeLlama(error=overflow)).complete(_request())
    with pytest.raises(ModelError, match=r"llama\.cpp failed: RuntimeError"):
        _model(FakeLlama(error=RuntimeError("boom"))).complete(_request())


def test_count_tokens_uses_model_tokenizer() -> None:
    assert _model().count_tokens("three little words") == 3


def test_calls_never_overlap() -> None:
    llama = FakeLlama()
    model = _model(llama)
    threads = [threading.Thread(target=model.complete, args=(_request(),)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(llama.calls) == 6 and llama.max_active == 1


def test_missing_extra_names_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install 'quallm\[local\]'"):
        LocalLlamaModel(gguf, sha256="0" * 64)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="not found"):
        LocalLlamaModel(tmp_path / "absent.gguf", sha256="0" * 64)


@needs_llama_cpp
def test_schema_becomes_a_cached_grammar() -> None:
    llama = FakeLlama()
    model = _model(llama)
    model.complete(_request(json_schema=SCHEMA))
    model.complete(_request(json_schema=dict(reversed(list(SCHEMA.items())))))  # same schema, other key order
    first, second = (call["grammar"] for call in llama.calls)
    assert first is second
    gbnf = first._grammar
    for fragment in ('"\\"C01\\""', '"\\"E01\\""', '"\\"none\\""', '"\\"quote\\""'):
        assert fragment in gbnf
    # maxItems 2: at most one more item after the first
    assert '("," space codes-item)?' in gbnf


@needs_llama_cpp
def test_output_modes_choose_the_constraint() -> None:
    from llama_cpp.llama_grammar import JSON_GBNF

    llama = FakeLlama()
    model = _model(llama)
    model.complete(_request(json_schema=SCHEMA, output_mode=OutputMode.PLAIN))
    model.complete(_request(json_schema=SCHEMA, output_mode=OutputMode.JSON_OBJECT))
    model.complete(_request(json_schema=None, output_mode=OutputMode.JSON_SCHEMA))
    assert "grammar" not in llama.calls[0]
    assert llama.calls[1]["grammar"]._grammar == JSON_GBNF
    assert "grammar" not in llama.calls[2]


@needs_llama_cpp
def test_unconvertible_schema_falls_back_to_any_json(caplog: pytest.LogCaptureFixture) -> None:
    from llama_cpp.llama_grammar import JSON_GBNF

    llama = FakeLlama()
    with caplog.at_level(logging.WARNING, logger="quallm.models.local_llama"):
        _model(llama).complete(_request(json_schema={"type": "tuple-of-magic"}))
    assert llama.calls[0]["grammar"]._grammar == JSON_GBNF
    assert "not convertible" in caplog.text


def test_amx_detection_reads_llama_system_info() -> None:
    from quallm.models.local_llama import cpu_has_amx

    fake = types.SimpleNamespace(
        llama_print_system_info=lambda: b"CPU : AVX2 = 1 | AMX_INT8 = 1 | OPENMP = 1"
    )
    assert cpu_has_amx(fake)  # type: ignore[arg-type]
    fake = types.SimpleNamespace(llama_print_system_info=lambda: b"CPU : AVX2 = 1 | AMX_INT8 = 0")
    assert not cpu_has_amx(fake)  # type: ignore[arg-type]


@needs_llama_cpp
@pytest.mark.parametrize("extra_buffers", [True, False])
def test_extra_buffers_switch_reaches_llama_and_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra_buffers: bool
) -> None:
    import llama_cpp
    import llama_cpp.llama_cpp as low

    seen: dict[str, Any] = {}

    def fake_llama(**kwargs: Any) -> FakeLlama:
        # Llama() reads llama_model_default_params() while loading; look at what it would get.
        seen["use_extra_bufts"] = low.llama_model_default_params().use_extra_bufts
        seen.update(kwargs)
        return FakeLlama()

    original = low.llama_model_default_params
    monkeypatch.setattr(llama_cpp, "Llama", fake_llama)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    model = LocalLlamaModel(gguf, sha256="0" * 64, n_ctx=1024, extra_buffers=extra_buffers)
    assert seen["use_extra_bufts"] is extra_buffers
    assert low.llama_model_default_params is original
    assert (seen["n_ctx"], seen["n_threads"], seen["verbose"]) == (1024, available_cpus(), False)
    assert "chat_format" not in seen  # the GGUF's own chat template is used
    assert model.count_tokens("a b") == 2


def _gbnf_to_regex(gbnf: str) -> str:
    """The digit grammars of int_range_gbnf are regular: quoted digits and classes, | and ()."""
    return re.sub(r'"(\d+)"', r"\1", gbnf).replace(" ", "")


@pytest.mark.parametrize("lo,hi", [(0, 0), (1, 1), (1, 9), (1, 37), (0, 100), (17, 17), (99, 101), (5, 1234)])
def test_int_range_grammar_matches_exactly_the_range(lo: int, hi: int) -> None:
    pattern = _gbnf_to_regex(int_range_gbnf(lo, hi))
    for n in range(0, 2000):
        assert bool(re.fullmatch(pattern, str(n))) == (lo <= n <= hi), n
    for leading_zero in ("00", "01", "007"):
        assert not re.fullmatch(pattern, leading_zero)


@needs_llama_cpp
def test_schema_grammar_uses_bounded_repetition_and_integer_ranges() -> None:
    schema = {
        "type": "object",
        "properties": {
            "narrative": {"type": "string", "maxLength": 1200},
            "short": {"type": "string", "minLength": 2, "maxLength": 5},
            "items": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 37},
                "maxItems": 3,
            },
            "free": {"type": "string"},
        },
        "required": ["narrative", "short", "items", "free"],
        "additionalProperties": False,
    }
    gbnf = schema_to_gbnf(schema)
    rules = dict(line.split(" ::= ", 1) for line in gbnf.strip().splitlines())
    # llama.cpp expands x{m,n} itself; the stock port's n nested groups are refused above a few hundred.
    assert rules["narrative"] == r'"\"" char{0,1200} "\"" space'
    assert rules["short"] == r'"\"" char{2,5} "\"" space'
    assert rules["items"] == '"[" space (items-item ("," space items-item){0,2})? "]" space'
    assert rules["items-item"] == f"({int_range_gbnf(1, 37)}) space"
    assert rules["free-kv"].endswith(" string")  # other cases go to the stock converter
    assert rules["root"].startswith('"{" space narrative-kv')
