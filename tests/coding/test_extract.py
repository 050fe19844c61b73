"""Extraction with the fake model: both strategies, grounding, re-asks, failures kept per unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import keyword_answer

from quallm.coding.extract import ExtractOptions, Extractor, extract
from quallm.coding.reask import ask
from quallm.coding.schemas import TurnAnswer
from quallm.core.codebook import Codebook
from quallm.core.errors import OutputValidationError, TruncatedOutputError
from quallm.ingest.transcripts import load_transcript
from quallm.models.base import ChatRequest, Completion, Message
from quallm.models.fake import FakeModel


def keyword_model(**kw: object) -> FakeModel:
    return FakeModel(lambda r: keyword_answer(list(r.messages)), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["turn", "chunk"])
def test_both_strategies_give_the_same_grounded_codings(
    sample_txt: Path, tiny_codebook_yaml: Path, strategy: str
) -> None:
    t = load_transcript(sample_txt)
    cb = Codebook.load(tiny_codebook_yaml)
    result = extract(t, cb, keyword_model(), ExtractOptions(strategy=strategy))  # type: ignore[arg-type]
    assert result.complete and result.strategy == strategy
    got = {(c.code_id, c.turn_index, c.quote) for c in result.codings}
    if strategy == "chunk":  # quotes as the model wrote them, aligned
        assert got == {
            ("C_money", 3, "Honestly the budget is the big thing"),
            ("E_help", 5, "Our early help offer has been transformative"),
        }
    else:  # the numbered sentence the model chose
        assert got == {
            ("C_money", 3, "Honestly the budget is the big thing."),
            ("E_help", 5, "Our early help offer has been transformative."),
        }
    for c in result.codings:
        assert t.text[c.start : c.end] == c.quote and c.alignment == "exact"
        assert not t.turns[c.turn_index].is_interviewer
    assert result.summary is not None and result.summary.narrative
    assert [p.code_id for p in result.summary.challenges] == ["C_money"]
    for p in (*result.summary.challenges, *result.summary.enablers):
        for q in p.quotes:
            assert t.text[q.start : q.end] == q.text


def test_turn_strategy_prefix_is_identical_and_interviewer_never_coded(
    sample_txt: Path, tiny_codebook_yaml: Path
) -> None:
    model = keyword_model()
    extract(
        load_transcript(sample_txt),
        Codebook.load(tiny_codebook_yaml),
        model,
        ExtractOptions(strategy="turn", summary=False),
    )
    systems = {r.messages[0].content for r in model.requests}  # the yes/no checks share it too
    coding = [r for r in model.requests if not r.choices]
    assert len(coding) == 3 and len(systems) == 1  # one call per answer, one shared prefix
    assert all("director of children's services" not in r.messages[0].content for r in model.requests)
    assert "What gets in the way?" in coding[1].messages[1].content  # preceding question as context


def test_auto_strategy_is_turn_for_local_and_chunk_otherwise(tiny_codebook_yaml: Path) -> None:
    cb = Codebook.load(tiny_codebook_yaml)
    assert Extractor(FakeModel(endpoint="local:abc"), cb).strategy == "turn"
    assert Extractor(FakeModel(endpoint="api.openai.com"), cb).strategy == "chunk"


def test_invented_quotes_are_dropped_and_counted(sample_txt: Path, tiny_codebook_yaml: Path) -> None:
    invented = {
        "segment": 2,
        "code_id": "C_money",
        "quote": "we never had any money at all",
        "rationale": "",
        "confidence": 0.9,
    }
    model = FakeModel(lambda r: json.dumps({"codings": [invented]}))
    result = extract(
        load_transcript(sample_txt),
        Codebook.load(tiny_codebook_yaml),
        model,
        ExtractOptions(strategy="chunk", summary=False),
    )
    assert result.codings == [] and len(result.ungrounded) == 1
    assert result.ungrounded[0].quote == "we never had any money at all"


def test_turn_answer_with_missing_sentence_is_reasked(sample_txt: Path, tiny_codebook_yaml: Path) -> None:
    model = keyword_model()
    model.enqueue({"codes": [{"code_id": "C_money", "sentence": 7}]})
    result = extract(
        load_transcript(sample_txt),
        Codebook.load(tiny_codebook_yaml),
        model,
        ExtractOptions(strategy="turn", summary=False),
    )
    assert result.reasks == 1 and "sentence 7 does not exist" in model.requests[1].messages[-1].content
    assert all(result.codings[i].quote.endswith(".") for i in range(len(result.codings)))


def test_chunk_answer_with_wrong_segment_is_reasked_without_mutating_request(
    sample_txt: Path, tiny_codebook_yaml: Path
) -> None:
    model = keyword_model()
    model.enqueue({"codings": [{"segment": 99, "code_id": "C_money", "quote": "x", "rationale": "", "confidence": 1}]})
    result = extract(
        load_transcript(sample_txt),
        Codebook.load(tiny_codebook_yaml),
        model,
        ExtractOptions(strategy="chunk", summary=False),
    )
    assert result.complete and result.reasks == 1 and len(result.codings) == 2
    first, second = model.requests[0], model.requests[1]
    assert len(first.messages) == 2 and len(second.messages) == 4
    assert "segment 99 does not exist" in second.messages[-1].content


def test_failed_unit_is_recorded_and_rest_goes_on(sample_txt: Path, tiny_codebook_yaml: Path) -> None:
    model = keyword_model()
    model.enqueue("not json", "still not json", "{broken")  # the first unit exhausts its re-asks
    result = extract(
        load_transcript(sample_txt),
        Codebook.load(tiny_codebook_yaml),
        model,
        ExtractOptions(strategy="turn", summary=False),
    )
    assert not result.complete and len(result.failures) == 1
    f = result.failures[0]
    assert f.unit == "turn 1" and f.error_type == "OutputValidationError" and f.raw == "{broken"
    assert {c.code_id for c in result.codings} == {"C_money", "E_help"}  # the other units still coded


def _req() -> ChatRequest:
    return ChatRequest(
        model="m", endpoint="e", messages=(Message(role="user", content="hi"),), json_schema={"type": "object"}
    )


def test_length_is_an_error_not_a_result() -> None:
    model = FakeModel()
    model.enqueue(Completion(content='{"codes": [', finish_reason="length"))
    with pytest.raises(TruncatedOutputError) as ei:
        ask(model, _req(), TurnAnswer)
    assert ei.value.raw == '{"codes": ['


def test_reask_exhaustion_carries_raw_and_errors() -> None:
    model = FakeModel()
    model.enqueue('{"codes": 5}', '{"codes": 6}', '{"codes": 7}')
    with pytest.raises(OutputValidationError) as ei:
        ask(model, _req(), TurnAnswer, max_reasks=2)
    assert ei.value.raw == '{"codes": 7}' and ei.value.errors and len(model.requests) == 3


def test_truncated_chunk_is_retried_once_as_two_halves(sample_txt: Path, tiny_codebook_yaml: Path) -> None:
    model = keyword_model()
    model.enqueue(Completion(content='{"codings": [', finish_reason="length"))
    result = extract(
        load_transcript(sample_txt),
        Codebook.load(tiny_codebook_yaml),
        model,
        ExtractOptions(strategy="chunk", summary=False),
    )
    assert result.complete and {c.code_id for c in result.codings} == {"C_money", "E_help"}
    _first, *halves = model.requests
    coded = [r.messages[1].content.count(", CODE)") for r in model.requests]
    assert len(halves) == 2 and coded[1] + coded[2] == coded[0] and 0 < coded[1] < coded[0]


def test_truncation_after_the_split_is_reported(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    p = tmp_path / "one.txt"
    p.write_text("Interviewer: Why?\n\nRespondent: The budget is small.\n", encoding="utf-8")
    model = keyword_model()
    cut = Completion(content='{"codings": [', finish_reason="length")
    model.enqueue(cut, cut)  # the chunk, then its coded half: both cut off
    result = extract(
        load_transcript(p),
        Codebook.load(tiny_codebook_yaml),
        model,
        ExtractOptions(strategy="chunk", summary=False, context_tokens=0),
    )
    assert [f.error_type for f in result.failures] == ["TruncatedOutputError"]
    assert result.failures[0].raw == '{"codings": ['


def test_verification_probability_splits_codings_from_candidates(sample_txt: Path, tiny_codebook_yaml: Path) -> None:
    # The scorer stands in for the backend's token probabilities: money checks say 0.2, help 0.8.
    def scorer(r: ChatRequest) -> dict[str, float]:
        code_line = r.messages[1].content.split("Check one code only:\n", 1)[1].splitlines()[0]
        p = 0.2 if code_line.startswith("C_money") else 0.8
        return {"yes": p, "no": 1 - p}

    model = keyword_model(scorer=scorer)
    t = load_transcript(sample_txt)
    yesno = ExtractOptions(strategy="turn", summary=False, scoring="yesno", min_confidence=0.5)
    result = extract(t, Codebook.load(tiny_codebook_yaml), model, yesno)
    assert [(c.code_id, c.probability) for c in result.codings] == [("E_help", 0.8)]
    assert [(c.code_id, c.probability) for c in result.candidates] == [("C_money", 0.2)]
    checks = [r for r in model.requests if r.choices]
    assert len(checks) == 2 and all(r.choices == ("yes", "no") and r.max_tokens == 1 for r in checks)
    # The check repeats the coding request's messages as its prefix (llama.cpp reuses their KV cache).
    coding = [r for r in model.requests if not r.choices]
    assert all(any(ch.messages[1].content.startswith(c.messages[1].content.rstrip()) for c in coding) for ch in checks)
    # Lower the threshold and both are reported; a backend with no probabilities reports both, unscored.
    low = extract(t, Codebook.load(tiny_codebook_yaml), keyword_model(scorer=scorer),
                  yesno.model_copy(update={"min_confidence": 0.1}))  # fmt: skip
    assert sorted(c.code_id for c in low.codings) == ["C_money", "E_help"] and not low.candidates
    cb = Codebook.load(tiny_codebook_yaml)
    plain = extract(t, cb, keyword_model(), yesno)
    assert len(plain.codings) == 2 and all(c.probability is None for c in plain.codings)


def test_both_scoring_multiplies_the_token_probability_by_p_yes(
    sample_txt: Path, tiny_codebook_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake backend writes no token log probabilities: every answered code reads 0.5 from its tokens.
    monkeypatch.setattr(Extractor, "_answer_probabilities", lambda self, completion, n: [0.5] * n)

    def scorer(r: ChatRequest) -> dict[str, float]:
        code_line = r.messages[1].content.split("Check one code only:\n", 1)[1].splitlines()[0]
        p = 0.2 if code_line.startswith("C_money") else 0.8
        return {"yes": p, "no": 1 - p}

    model = keyword_model(scorer=scorer)
    both = ExtractOptions(strategy="turn", summary=False, scoring="both", min_confidence=0.3)
    result = extract(load_transcript(sample_txt), Codebook.load(tiny_codebook_yaml), model, both)
    assert [(c.code_id, c.probability) for c in result.codings] == [("E_help", 0.4)]
    assert [(c.code_id, c.probability) for c in result.candidates] == [("C_money", 0.1)]
    coding = [r for r in model.requests if not r.choices]
    assert coding and all(r.logprobs for r in coding)  # the same coding requests (cache keys) as "tokens"
    # Without yes/no probabilities from the backend, the token probability alone decides.
    alone = extract(load_transcript(sample_txt), Codebook.load(tiny_codebook_yaml), keyword_model(), both)
    assert sorted((c.code_id, c.probability) for c in alone.codings) == [("C_money", 0.5), ("E_help", 0.5)]


def test_max_codes_auto_grows_with_long_answers_only() -> None:
    from quallm.coding.extract import LONG_ANSWER_WORDS, codes_allowed, codes_guidance

    assert codes_allowed(2, 1000) == 2 and codes_allowed(4, 5) == 4
    assert [codes_allowed("auto", n) for n in (5, LONG_ANSWER_WORDS, 181, 280, 281, 380, 381, 5000)] == [
        2, 2, 3, 3, 4, 4, 5, 5,
    ]
    # A fixed number and a short answer under "auto" keep the sentence every earlier prompt had.
    assert codes_guidance(2, 500)[1] == codes_guidance("auto", 100)[1] == (
        "Most answers get 0 or 1 code, some 2; never more than 2."
    )
    n, text = codes_guidance("auto", 300)
    assert n == 4 and "at most 4" in text and "Most answers" not in text


def test_none_code_is_offered_first_and_never_reported(sample_txt: Path, tiny_codebook_yaml: Path) -> None:
    t = load_transcript(sample_txt)
    cb = Codebook.load(tiny_codebook_yaml)
    seen: list[ChatRequest] = []

    def answer(r: ChatRequest) -> str:
        seen.append(r)
        # "none" on every answer, plus a real code where the keyword coder finds one.
        real = json.loads(keyword_answer(list(r.messages)))["codes"]
        return json.dumps({"codes": [{"code_id": "none", "sentence": 1}, *real][:2]})

    result = extract(t, cb, FakeModel(answer), ExtractOptions(strategy="turn", none_code=True, summary=False))
    assert result.complete and result.codings and all(c.code_id != "none" for c in result.codings)
    turn = next(r for r in seen if r.schema_name == "turn_codes")
    assert turn.json_schema is not None
    enum = turn.json_schema["properties"]["codes"]["items"]["properties"]["code_id"]["enum"]
    assert enum[0] == "none" and enum[1:] == cb.ids
    assert "- none: no code of this codebook clearly applies" in turn.messages[0].content
    # Off, the request carries no trace of it.
    plain = Extractor(FakeModel(answer), cb, ExtractOptions(strategy="turn", none_code=False))
    seg = next(s for s in plain.chunks(t)[0].coded_segments)
    assert "- none:" not in plain.turn_request(t, seg).messages[0].content


def test_none_code_refused_when_the_codebook_has_a_code_named_none(tmp_path: Path) -> None:
    from quallm.core.errors import ConfigError

    cb = Codebook.from_data(
        {"name": "x", "codes": [{"id": "none", "kind": "challenge", "label": "None", "definition": "d"}]}
    )
    with pytest.raises(ConfigError, match="'none'"):
        Extractor(FakeModel(), cb, ExtractOptions(strategy="turn", none_code=True))


def test_answers_under_min_unit_words_are_not_sent(tmp_path: Path, tiny_codebook_yaml: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text(
        "Interviewer: Is it all right if I record this?\n\nRespondent: Yes, that's fine, go ahead.\n\n"
        "Interviewer: What has been hardest?\n\nRespondent: Honestly the budget is the big thing for us. "
        "We lost a lot of funding over ten years.\n",
        encoding="utf-8",
    )
    t = load_transcript(p)
    cb = Codebook.load(tiny_codebook_yaml)
    seen: list[ChatRequest] = []

    def answer(r: ChatRequest) -> str:
        seen.append(r)
        return keyword_answer(list(r.messages))

    result = extract(t, cb, FakeModel(answer), ExtractOptions(strategy="turn", summary=False))
    sent = [r.messages[1].content for r in seen]
    assert len(sent) == 1 and "budget" in sent[0] and result.n_coded_units == 1
    assert [c.code_id for c in result.codings] == ["C_money"]
    # With the minimum at 1 the consent answer is sent too.
    seen.clear()
    extract(t, cb, FakeModel(answer), ExtractOptions(strategy="turn", summary=False, min_unit_words=1))
    assert len(seen) == 2
