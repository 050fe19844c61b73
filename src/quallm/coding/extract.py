"""The extraction pipeline: units -> model -> validate -> ground -> merge, per transcript.

Two coding strategies produce the same :class:`~quallm.core.codings.Coding` values:

* ``turn`` (per-unit classification): one call per coded turn, the codebook as an identical system
  prefix (so llama.cpp and providers reuse its KV cache), the preceding question as context, at most a
  few codes; suits small local models.
* ``chunk`` (whole-chunk extraction): numbered segments in, codes with segment ids and quotes out; suits
  strong remote models and sends fewer tokens per transcript token.

``auto`` picks ``turn`` for in-process local models and ``chunk`` otherwise.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from quallm.coding.confidence import code_probabilities
from quallm.coding.examples import ExampleBank, render_examples
from quallm.coding.fencing import fence
from quallm.coding.prompting import PromptTemplate, codebook_values, load_prompt, render_code, render_codebook
from quallm.coding.reask import ask
from quallm.coding.schemas import ChunkAnswer, ChunkCoding, TurnAnswer, chunk_schema, turn_schema
from quallm.coding.summarise import summarise
from quallm.coding.thresholds import is_reported, mark_review
from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.core.errors import ConfigError, ModelError, TruncatedOutputError
from quallm.core.results import Failure, TranscriptResult, Ungrounded
from quallm.core.spans import align_quote, evidence_span, sentence_spans
from quallm.core.transcript import Transcript
from quallm.ingest.chunking import Chunk, Segment, chunk_transcript
from quallm.ingest.tokenizers import CallableTokenizer
from quallm.models.base import ChatModel, ChatRequest, Completion, Message, Usage
from quallm.models.profile import profile_of

Strategy = Literal["auto", "turn", "chunk"]
_CHUNK_MEMO = 32  # transcripts whose chunks an Extractor keeps (a pool's window and a pack fit in it)

class ExtractOptions(BaseModel):
    """Settings that change what extraction produces (all part of the resume fingerprint)."""

    model_config = ConfigDict(frozen=True)

    strategy: Strategy = "auto"
    chunk_tokens: int = 3000
    # Chunk strategy: transcripts that fit in one chunk share a request, up to chunk_tokens of
    # transcript per request, so the instructions and codebook are sent once for several of them.
    pack: bool = True
    context_tokens: int = 200
    unit_tokens: int = 1200
    # Codes one answer may get: a number, or "auto" (2 up to LONG_ANSWER_WORDS words, one more for
    # each further 100 words, at most 5; see codes_allowed). Measured in README "Evaluation".
    max_codes_per_unit: int | Literal["auto"] = 2
    # Turn strategy: offer the model an explicit first choice "none" (listed before the codebook's codes
    # and first in the schema's enum). The 1.5B model named the codebook's first code for small talk
    # when its only way out was an empty list; a "none" answer is dropped, and its probability is
    # part of what every code's probability is renormalised over. Measured in README "Evaluation".
    none_code: bool = False
    # Turn strategy: answers of fewer words are not coded (no request). On synth-la, our set with real
    # small talk, the 1.5B model coded all 15 such answers ("Yes, that's fine, go ahead.", "Pleasure.")
    # with some code; no gold-coded answer of any set is under 18 words. See README "Evaluation".
    min_unit_words: int = 8
    # Each proposed coding is checked by a yes/no question with the code's definition and notes; the
    # probability of "yes" (the model's own token probability) becomes Coding.probability, and codings
    # below min_confidence are kept as candidates instead of reported. See README "Evaluation".
    verify: bool = True
    # "tokens": the coding answer's own token probabilities (no extra request; quallm.coding.confidence).
    # "yesno": one yes/no request per proposed coding (the probability of "yes").
    # "both": their product. AUC between right and wrong proposals (README "Evaluation"): tokens 0.81 /
    # 0.65 / 0.62 on demo / dev-la / synth-la, yesno 0.61 / 0.72 / 0.69, both 0.80 / 0.69 / 0.67; the
    # default stays "tokens" because no threshold of "both" raised kappa on any set.
    scoring: Literal["tokens", "yesno", "both"] = "tokens"
    min_confidence: float = 0.2
    # A calibration (quallm calibrate): per-code thresholds that replace min_confidence for the codes
    # they cover, the codes whose codings are marked needs_review, and the calibration file's sha256.
    code_thresholds: dict[str, float] = Field(default_factory=dict)
    review_codes: tuple[str, ...] = ()
    calibration_sha256: str | None = None
    # Worked examples (--examples-from): the human coding file's sha256, its coder, and how many of the
    # most similar human-coded units each turn request shows (turn strategy; see calibration.examples).
    examples_sha256: str | None = None
    examples_coder: str | None = None
    examples_k: int = 3
    max_codings_per_chunk: int = 40
    max_reasks: int = 2
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 1024
    coded_speakers: tuple[str, ...] = ()
    summary: bool = True
    concurrency: int = 1


#: Above this many words an answer may get more codes under ``max_codes_per_unit="auto"``. No turn of
#: the demo (longest 176 words) or of dev-la (88) is longer, so their prompts are unchanged by "auto".
LONG_ANSWER_WORDS = 180
_ORDINARY_GUIDANCE = "Most answers get 0 or 1 code, some 2; never more than {n}."
_LONG_GUIDANCE = "This answer is long: give every code it clearly raises, at most {n}, each with its own sentence."


#: The explicit "nothing applies" choice of ``ExtractOptions.none_code`` (never a coding).
NONE_CODE = "none"
NONE_LINE = (
    '- none: no code of this codebook clearly applies (small talk, thanks, consent, a job title, a request to '
    "repeat, a topic only named, denied, or ruled out by a code's \"not when\" note)"
)


def codes_allowed(setting: int | Literal["auto"], n_words: int) -> int:
    """How many codes an answer of ``n_words`` words may get under the ``max_codes_per_unit`` setting."""
    if setting != "auto":
        return setting
    if n_words <= LONG_ANSWER_WORDS:
        return 2
    return min(5, 3 + (n_words - LONG_ANSWER_WORDS - 1) // 100)


def codes_guidance(setting: int | Literal["auto"], n_words: int) -> tuple[int, str]:
    """The cap for one answer and the prompt's sentence about how many codes to give.

    A fixed number keeps the ordinary sentence, so ``--max-codes N`` renders as it always did; only
    "auto" on a long answer says that several codes are expected.
    """
    n = codes_allowed(setting, n_words)
    if setting == "auto" and n_words > LONG_ANSWER_WORDS:
        return n, _LONG_GUIDANCE.format(n=n)
    return n, _ORDINARY_GUIDANCE.format(n=n)


def resolve_strategy(options: ExtractOptions, model: ChatModel) -> Literal["turn", "chunk"]:
    """The strategy actually used: ``auto`` means ``turn`` for local models, else ``chunk``."""
    if options.strategy != "auto":
        return options.strategy
    return profile_of(model).strategy


#: Options that only split proposals into codings and candidates (re-applied without a model call).
THRESHOLD_OPTIONS = frozenset({"min_confidence", "code_thresholds", "review_codes", "calibration_sha256"})


def proposals_fingerprint(
    transcript: Transcript, codebook: Codebook, model: ChatModel, options: ExtractOptions
) -> str:
    """:func:`fingerprint` without the thresholds: equal for results whose proposals are the same."""
    return fingerprint(transcript, codebook, model, options, exclude=THRESHOLD_OPTIONS)


def fingerprint(
    transcript: Transcript,
    codebook: Codebook,
    model: ChatModel,
    options: ExtractOptions,
    exclude: frozenset[str] = frozenset(),
) -> str:
    """Hash of everything that determines a transcript's result (used to skip finished work)."""
    opts = options.model_dump(mode="json", exclude={"concurrency", *exclude})
    for name in ("code_thresholds", "review_codes", "calibration_sha256"):
        if not opts.get(name, True):  # absent when not calibrated, so earlier runs keep their fingerprints
            del opts[name]
    if options.examples_sha256 is None:  # likewise without worked examples
        for name in ("examples_sha256", "examples_coder", "examples_k"):
            opts.pop(name, None)
    prompts = {n: load_prompt(n).hash for n in ("code_turn", "code_chunk", "summary", "verify_turn")}
    blob = json.dumps(
        {
            "text": hashlib.sha256(transcript.text.encode()).hexdigest(),
            "meta": transcript.metadata,
            "codebook": codebook.hash,
            "model": model.name,
            "endpoint": model.endpoint,
            "prompts": prompts,
            "options": opts,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class _Tally:
    codings: list[Coding] = field(default_factory=list)
    candidates: list[Coding] = field(default_factory=list)
    ungrounded: list[Ungrounded] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    calls: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_usage(self, usage: Usage, attempts: int) -> None:
        self.calls += attempts
        self.reasks += max(attempts - 1, 0)  # 0 attempts: a pack's call counted on another transcript
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens


@dataclass(frozen=True)
class _UnitOutcome:
    codings: list[Coding]
    ungrounded: list[Ungrounded]
    usage: Usage
    attempts: int
    candidates: list[Coding] = field(default_factory=list)


def _preceding_question(transcript: Transcript, turn_index: int, max_words: int = 80) -> str:
    for t in reversed(transcript.turns[:turn_index]):
        if t.is_interviewer:
            words = t.text.split()
            return " ".join(words[-max_words:]) if len(words) > max_words else t.text
    return "(none)"


def _coder_name(model: ChatModel) -> str:
    return f"quallm ({model.name})"


class Extractor:
    """Codes transcripts with one model and one codebook; reusable across a batch."""

    def __init__(
        self,
        model: ChatModel,
        codebook: Codebook,
        options: ExtractOptions | None = None,
        examples: ExampleBank | None = None,
    ) -> None:
        self.model = model
        self.codebook = codebook
        self.options = options or ExtractOptions()
        self.strategy = resolve_strategy(self.options, model)
        # The bank and the file hash travel together: the fingerprint must say when examples were shown.
        if (examples is None) != (self.options.examples_sha256 is None):
            raise ConfigError("worked examples need both the example bank and ExtractOptions.examples_sha256")
        if examples is not None and self.strategy != "turn":
            raise ConfigError("worked examples (--examples-from) need the turn strategy")
        self.examples = examples
        self.tokenizer = CallableTokenizer(model.count_tokens)
        self._turn_prompt = load_prompt("code_turn")
        self._verify_prompt = load_prompt("verify_turn")
        self._no_probabilities = False
        self._chunk_prompt = load_prompt("code_chunk")
        self._codebook_text = render_codebook(codebook)
        none = self.options.none_code
        if none and NONE_CODE in codebook.all_ids:
            raise ConfigError(f"the codebook has a code with the id {NONE_CODE!r}; rename it to use the none choice")
        if none:
            self._codebook_text = NONE_LINE + "\n" + self._codebook_text
        # The ids a turn answer may name: "none" first when offered (the position a small model favours).
        self._answer_ids = [NONE_CODE, *codebook.ids] if none else list(codebook.ids)
        self._kind_values = codebook_values(codebook)
        self.coder = _coder_name(model)
        # The chunks of the last few transcripts: the progress display, packing and coding of one
        # transcript share one chunking. Bounded, so memory stays flat in the number of transcripts.
        self._chunked: OrderedDict[tuple[str, int, int, int], list[Chunk]] = OrderedDict()
        self._chunked_lock = threading.Lock()

    def _chunk(self, transcript: Transcript, budget: int, context_tokens: int = 0) -> list[Chunk]:
        """``chunk_transcript`` with this extractor's speakers, remembered for recent transcripts."""
        key = (transcript.id, hash(transcript.text), budget, context_tokens)
        with self._chunked_lock:
            found = self._chunked.get(key)
            if found is not None:
                self._chunked.move_to_end(key)
                return found
        speakers = frozenset(self.options.coded_speakers) or None
        chunks = chunk_transcript(
            transcript, self.tokenizer, budget, context_tokens=context_tokens, coded_speakers=speakers
        )
        with self._chunked_lock:
            self._chunked[key] = chunks
            while len(self._chunked) > _CHUNK_MEMO:
                self._chunked.popitem(last=False)
        return chunks

    # --- requests -------------------------------------------------------------------------------

    def _request(self, prompt: PromptTemplate, schema: dict[str, Any], name: str, **values: str) -> ChatRequest:
        o = self.options
        return prompt.request(
            self.model, schema, name, temperature=o.temperature, max_tokens=o.max_tokens, seed=o.seed, **values
        )

    def _turn_values(self, transcript: Transcript, seg: Segment) -> dict[str, str]:
        sentences = sentence_spans(seg.text, seg.start)
        numbered = "\n".join(f"[{n}] {fence(transcript.text[a:b])}" for n, (a, b) in enumerate(sentences, start=1))
        return {
            "codebook_name": self.codebook.name,
            "codebook": self._codebook_text,
            **self._kind_values,
            "how_many": codes_guidance(self.options.max_codes_per_unit, len(seg.text.split()))[1],
            "question": fence(_preceding_question(transcript, seg.turn_index)),
            "speaker": fence(seg.speaker),
            "answer": numbered,
        }

    def _examples_block(self, transcript: Transcript, seg: Segment) -> str:
        """The worked examples for a segment ("" without --examples-from); never from its own transcript."""
        if self.examples is None:
            return ""
        return render_examples(self.examples.examples_for(transcript.id, seg.text))

    def turn_request(self, transcript: Transcript, seg: Segment) -> ChatRequest:
        """The per-unit request for one coded segment, its sentences numbered.

        Worked examples, if any, start the user message: the system message stays the same for every
        unit, so a local model keeps reusing its KV cache for the codebook.
        """
        n_sentences = len(sentence_spans(seg.text, seg.start))
        cap = codes_allowed(self.options.max_codes_per_unit, len(seg.text.split()))
        schema = turn_schema(self._answer_ids, cap, n_sentences)
        req = self._request(self._turn_prompt, schema, "turn_codes", **self._turn_values(transcript, seg))
        block = self._examples_block(transcript, seg)
        if block:
            system, user = req.messages
            req = req.model_copy(update={"messages": (system, Message(role="user", content=block + user.content))})
        return req.model_copy(update={"logprobs": self._wants_token_probs})

    def verify_request(self, transcript: Transcript, seg: Segment, code_id: str) -> ChatRequest:
        """The yes/no check of one proposed code on one segment: a scoring request (nothing is generated).

        It repeats the coding request's system message and the start of its user message (question and
        numbered answer), so a local model re-evaluates only the code's own tail (KV prefix reuse), and
        asks whether the code applies, with its definition and its "use when" / "not when" notes.
        """
        values = self._turn_values(transcript, seg)
        system, user = self._turn_prompt.render(**values)
        user = self._examples_block(transcript, seg) + user
        code = self.codebook.get(code_id)
        assert code is not None
        req = self._verify_prompt.request(
            self.model,
            {},
            "verify",
            temperature=0.0,
            max_tokens=1,
            seed=self.options.seed,
            turn_system=system.rstrip("\n"),
            turn_user=user.rstrip("\n"),
            code=render_code(code).removeprefix("- "),
        )
        return req.model_copy(update={"json_schema": None, "choices": ("yes", "no")})

    def _verified(
        self, transcript: Transcript, seg: Segment, codings: list[Coding]
    ) -> tuple[list[Coding], list[Coding], Usage]:
        """(reported, candidates, usage): each coding with the probability that its code applies.

        A backend that reports no probabilities (or a failed check) leaves the coding as it was: with
        ``scoring="both"`` its token probability alone decides, else ``probability`` stays None and the
        coding is reported: nothing is dropped on a number that does not exist.
        """
        if not self.options.verify or not codings or self._no_probabilities:
            return (*self._split(codings), Usage())
        checked: list[Coding] = []
        prompt_tokens = 0
        for c in codings:
            try:
                done = self.model.complete(self.verify_request(transcript, seg, c.code_id))
            except ModelError:
                checked.append(c)
                continue
            prompt_tokens += done.usage.prompt_tokens
            p = (done.choice_probs or {}).get("yes") if done.choice_probs else None
            if p is None:
                # The backend gives no token probabilities: say so once and stop asking.
                self._no_probabilities = True
                checked.append(c)
                continue
            if self.options.scoring == "both":
                # The token probability is None where the answer's tokens were unreadable: P(yes) alone.
                p = p * (c.probability if c.probability is not None else 1.0)
            checked.append(c.model_copy(update={"probability": round(p, 4)}))
        reported, candidates = self._split(checked)
        return reported, candidates, Usage(prompt_tokens=prompt_tokens)

    def chunk_request(self, chunk: Chunk) -> ChatRequest:
        """The whole-chunk request: numbered segments, only CODE segments to be coded."""
        lines = []
        for n, s in enumerate(chunk.segments, start=1):
            role = "CODE" if s.coded else "context"
            lines.append(f"[S{n}] ({fence(s.speaker)}, {role}) {fence(s.text)}")
        ctx = ""
        if chunk.context:
            ctx = "Earlier in the interview (context only, do not code):\n" + "\n".join(
                f"({fence(s.speaker)}) {fence(s.text)}" for s in chunk.context
            )
            ctx += "\n"
        return self._chunk_request(chunk.segments, ctx, "\n\n".join(lines))

    def _chunk_request(self, segments: Sequence[Segment], context: str, body: str) -> ChatRequest:
        """A whole-chunk request; the answer's room grows with the transcript it holds.

        Up to 3,000 tokens of transcript this is ``max_codings_per_chunk`` codings and ``max_tokens``;
        a larger (or packed) chunk gets one coding per 75 transcript tokens and half its size in
        completion tokens, so that a long request is not cut off for want of room.
        """
        o = self.options
        size = sum(self.tokenizer.count(s.text) for s in segments)
        schema = chunk_schema(self.codebook.ids, len(segments), max(o.max_codings_per_chunk, size // 75))
        req = self._chunk_prompt.request(
            self.model,
            schema,
            "chunk_codings",
            temperature=o.temperature,
            max_tokens=max(o.max_tokens, size // 2),
            seed=o.seed,
            codebook_name=self.codebook.name,
            codebook=self._codebook_text,
            **self._kind_values,
            context=context,
            segments=body,
        )
        return req.model_copy(update={"logprobs": self._wants_token_probs})

    def pack_request(self, items: Sequence[tuple[Transcript, Chunk]]) -> ChatRequest:
        """One request for several short transcripts, each under its own header, segments numbered across them."""
        lines = []
        n = 0
        for k, (t, chunk) in enumerate(items, start=1):
            lines.append(f"=== Interview {k} of {len(items)}: {fence(t.id)} ===")
            for s in chunk.segments:
                n += 1
                lines.append(f"[S{n}] ({fence(s.speaker)}, {'CODE' if s.coded else 'context'}) {fence(s.text)}")
        return self._chunk_request([s for _, c in items for s in c.segments], "", "\n\n".join(lines))

    # --- units ----------------------------------------------------------------------------------

    def _ground(self, transcript: Transcript, seg: Segment, code_id: str, quote: str) -> Coding | None:
        a = align_quote(quote, transcript.text, seg.start, seg.end)
        if a is None:
            return None
        return Coding(
            transcript_id=transcript.id,
            coder=self.coder,
            code_id=code_id,
            start=a.start,
            end=a.end,
            turn_index=seg.turn_index,
            speaker=seg.speaker,
            quote=transcript.text[a.start : a.end],
            alignment=a.status,
        )

    def code_turn(self, transcript: Transcript, seg: Segment) -> _UnitOutcome:
        """Classify one unit; each code's evidence is the numbered sentence the model chose."""
        valid = set(self._answer_ids)
        sentences = sentence_spans(seg.text, seg.start)
        cap = codes_allowed(self.options.max_codes_per_unit, len(seg.text.split()))

        def check(ans: TurnAnswer) -> list[str]:
            errs = []
            for i, c in enumerate(ans.codes):
                if c.code_id not in valid:
                    errs.append(f"codes[{i}].code_id {c.code_id!r} is not in the codebook")
                if not 1 <= c.sentence <= len(sentences):
                    errs.append(f"codes[{i}].sentence {c.sentence} does not exist (sentences are 1..{len(sentences)})")
            if len(ans.codes) > cap:
                errs.append(f"give at most {cap} codes")
            return errs

        ans, completion, attempts, usage = ask(
            self.model,
            self.turn_request(transcript, seg),
            TurnAnswer,
            check=check,
            max_reasks=self.options.max_reasks,
        )
        token_probs = self._answer_probabilities(completion, len(ans.codes))
        codings: list[Coding] = []
        lost: list[Ungrounded] = []  # sentence evidence cannot be ungrounded; kept for one outcome type
        seen: set[str] = set()
        for c, prob in zip(ans.codes, token_probs, strict=True):
            if c.code_id in seen or c.code_id == NONE_CODE:
                continue
            seen.add(c.code_id)
            a, b = evidence_span(seg.text, sentences, c.sentence - 1, seg.start)
            # The sentence (widened when it is a few words) is our own exact slice: grounded by construction.
            codings.append(
                Coding(
                    transcript_id=transcript.id,
                    coder=self.coder,
                    code_id=c.code_id,
                    start=a,
                    end=b,
                    turn_index=seg.turn_index,
                    speaker=seg.speaker,
                    quote=transcript.text[a:b],
                    alignment="exact",
                    probability=prob,
                )
            )
        if self.options.scoring == "tokens":  # yesno and both ask the checks (_verified splits)
            reported, candidates = self._split(codings)
            v_usage = Usage()
        else:
            reported, candidates, v_usage = self._verified(transcript, seg, codings)
        usage = Usage(
            prompt_tokens=usage.prompt_tokens + v_usage.prompt_tokens, completion_tokens=usage.completion_tokens
        )
        return _UnitOutcome(reported, lost, usage, attempts, candidates)

    def code_chunk(self, transcript: Transcript, chunk: Chunk) -> _UnitOutcome:
        """Extract codings from one chunk; ground each in its segment (then the chunk's other coded ones)."""
        ans, completion, attempts, usage = ask(
            self.model,
            self.chunk_request(chunk),
            ChunkAnswer,
            check=self._chunk_check(len(chunk.segments)),
            max_reasks=self.options.max_reasks,
        )
        codings: list[Coding] = []
        lost: list[Ungrounded] = []
        probs = self._answer_probabilities(completion, len(ans.codings))
        for c, prob in zip(ans.codings, probs, strict=True):
            self._ground_chunk_coding(transcript, chunk, chunk.segments[c.segment - 1], c, codings, lost, prob)
        reported, candidates = self._split(codings)
        return _UnitOutcome(reported, lost, usage, attempts, candidates)

    @property
    def _wants_token_probs(self) -> bool:
        return self.options.verify and self.options.scoring in ("tokens", "both")

    def _answer_probabilities(self, completion: Completion, n: int) -> list[float | None]:
        """Each answered coding's probability from the answer's own tokens (None where unreadable)."""
        if not self._wants_token_probs:
            return [None] * n
        read = code_probabilities(completion.content, completion.tokens, self._answer_ids)
        return read if len(read) == n else [None] * n

    def _split(self, codings: list[Coding]) -> tuple[list[Coding], list[Coding]]:
        """(reported, candidates): codings below their threshold (a calibration's, else ``min_confidence``)
        are candidates; unscored ones are reported."""
        o = self.options
        reported = [c for c in codings if is_reported(c, o.code_thresholds, o.min_confidence)]
        return reported, [c for c in codings if not is_reported(c, o.code_thresholds, o.min_confidence)]

    def _chunk_check(self, n: int) -> Callable[[ChunkAnswer], list[str]]:
        """The re-ask check of a chunk answer over ``n`` segments: known codes, existing segments."""
        valid = set(self.codebook.ids)

        def check(ans: ChunkAnswer) -> list[str]:
            errs = []
            for i, c in enumerate(ans.codings):
                if c.code_id not in valid:
                    errs.append(f"codings[{i}].code_id {c.code_id!r} is not in the codebook")
                if not 1 <= c.segment <= n:
                    errs.append(f"codings[{i}].segment {c.segment} does not exist (segments are 1..{n})")
            return errs

        return check

    def _ground_chunk_coding(
        self,
        transcript: Transcript,
        chunk: Chunk,
        seg: Segment,
        c: ChunkCoding,
        codings: list[Coding],
        lost: list[Ungrounded],
        probability: float | None = None,
    ) -> None:
        """Ground one answered coding in its segment, then in the chunk's other coded segments."""
        order = [seg] + [s for s in chunk.coded_segments if s is not seg]
        for candidate in order:
            if not candidate.coded:
                continue
            coding = self._ground(transcript, candidate, c.code_id, c.quote)
            if coding is not None:
                update = {"rationale": c.rationale or None, "confidence": c.confidence, "probability": probability}
                codings.append(coding.model_copy(update=update))
                return
        lost.append(Ungrounded(code_id=c.code_id, quote=c.quote, turn_index=seg.turn_index))

    def code_pack(self, items: Sequence[tuple[Transcript, Chunk]]) -> list[_UnitOutcome]:
        """Code several one-chunk transcripts in one request; each coding is grounded in its own transcript.

        The request's usage is shared out in proportion to each transcript's segments; the call is
        counted once, on the first transcript.
        """
        index = [(k, s) for k, (_, chunk) in enumerate(items) for s in chunk.segments]
        ans, completion, attempts, usage = ask(
            self.model,
            self.pack_request(items),
            ChunkAnswer,
            check=self._chunk_check(len(index)),
            max_reasks=self.options.max_reasks,
        )
        codings: list[list[Coding]] = [[] for _ in items]
        lost: list[list[Ungrounded]] = [[] for _ in items]
        probs = self._answer_probabilities(completion, len(ans.codings))
        for c, prob in zip(ans.codings, probs, strict=True):
            k, seg = index[c.segment - 1]
            self._ground_chunk_coding(items[k][0], items[k][1], seg, c, codings[k], lost[k], prob)
        shares = _shares([len(chunk.segments) for _, chunk in items], usage)
        splits = [self._split(codings[k]) for k in range(len(items))]
        return [
            _UnitOutcome(splits[k][0], lost[k], shares[k], attempts if k == 0 else 0, splits[k][1])
            for k in range(len(items))
        ]

    # --- transcripts ----------------------------------------------------------------------------

    def units(self, transcript: Transcript) -> list[tuple[str, Callable[[], _UnitOutcome]]]:
        """The units of work for a transcript, each with a stable name and a thunk."""
        if self.strategy == "turn":
            chunks = self._chunk(transcript, self.options.unit_tokens)
            # Answers of fewer than min_unit_words words (consent, thanks, "Pleasure.") are not sent.
            segs = [s for ch in chunks for s in ch.coded_segments if len(s.text.split()) >= self.options.min_unit_words]
            return [
                (f"turn {s.turn_index}" + (f".{s.part}" if s.part else ""), partial(self.code_turn, transcript, s))
                for s in segs
            ]
        return [(f"chunk {c.index}", partial(self.code_chunk_or_split, transcript, c)) for c in self.chunks(transcript)]

    def chunks(self, transcript: Transcript) -> list[Chunk]:
        """The transcript's chunks for the chunk strategy."""
        return self._chunk(transcript, self.options.chunk_tokens, self.options.context_tokens)

    def pack_size(self, transcript: Transcript) -> int | None:
        """Transcript tokens of a transcript that packing may share a request with others, else None.

        Only with the chunk strategy and ``pack`` on, and only for a transcript that is one chunk.
        """
        if self.strategy != "chunk" or not self.options.pack:
            return None
        chunks = self.chunks(transcript)
        if len(chunks) != 1 or not chunks[0].coded_segments:
            return None
        return sum(self.tokenizer.count(s.text) for s in chunks[0].segments)

    def code_chunk_or_split(self, transcript: Transcript, chunk: Chunk) -> _UnitOutcome:
        """Code a chunk; if the answer is cut off (``length``), retry once as two halves, then report."""
        try:
            return self.code_chunk(transcript, chunk)
        except TruncatedOutputError:
            if len(chunk.segments) < 2:
                raise
        half = len(chunk.segments) // 2
        first = Chunk(chunk.index, chunk.segments[:half], chunk.context)
        second = Chunk(chunk.index, chunk.segments[half:], chunk.segments[:half])  # first half as context
        outcomes = [self.code_chunk(transcript, c) for c in (first, second) if c.coded_segments]
        return _UnitOutcome(
            codings=[c for o in outcomes for c in o.codings],
            ungrounded=[u for o in outcomes for u in o.ungrounded],
            usage=Usage(
                prompt_tokens=sum(o.usage.prompt_tokens for o in outcomes),
                completion_tokens=sum(o.usage.completion_tokens for o in outcomes),
            ),
            attempts=1 + sum(o.attempts for o in outcomes),  # the truncated call counts as a call
        )

    def extract(self, transcript: Transcript, on_unit: Callable[[], None] | None = None) -> TranscriptResult:
        """Code one transcript. A failed unit is recorded and the rest of the transcript goes on."""
        t0 = time.perf_counter()
        tally = _Tally()
        units = self.units(transcript)

        def run(unit: tuple[str, Callable[[], _UnitOutcome]]) -> tuple[str, _UnitOutcome | BaseException]:
            name, thunk = unit
            try:
                return name, thunk()
            except ModelError as exc:
                return name, exc
            finally:
                if on_unit:
                    on_unit()

        workers = max(1, self.options.concurrency)
        if workers == 1:
            outcomes = [run(u) for u in units]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outcomes = list(pool.map(run, units))
        for name, out in outcomes:
            if isinstance(out, BaseException):
                tally.failures.append(Failure.from_error(name, out))
                continue
            tally.codings.extend(out.codings)
            tally.candidates.extend(out.candidates)
            tally.ungrounded.extend(out.ungrounded)
            tally.add_usage(out.usage, out.attempts)
        return self._finish(transcript, tally, len(units), t0)

    def extract_pack(
        self, transcripts: Sequence[Transcript], on_unit: Callable[[str], None] | None = None
    ) -> list[TranscriptResult]:
        """Code several short transcripts in one shared request (see :meth:`pack_size`), then summarise each.

        If the shared request fails or is cut off, each transcript is coded on its own instead, so
        packing never loses a transcript.
        """
        if len(transcripts) == 1:
            return [self.extract(transcripts[0], on_unit=partial(on_unit, transcripts[0].id) if on_unit else None)]
        t0 = time.perf_counter()
        items = [(t, self.chunks(t)[0]) for t in transcripts]
        try:
            outcomes = self.code_pack(items)
        except ModelError:
            return [self.extract(t, on_unit=partial(on_unit, t.id) if on_unit else None) for t in transcripts]
        results = []
        ids = [t.id for t in transcripts]
        for t, out in zip(transcripts, outcomes, strict=True):
            if on_unit:
                on_unit(t.id)
            tally = _Tally(codings=list(out.codings), ungrounded=list(out.ungrounded))
            tally.add_usage(out.usage, out.attempts)
            result = self._finish(t, tally, 1, t0)
            results.append(result.model_copy(update={"packed_with": [i for i in ids if i != t.id]}))
        return results

    def _finish(self, transcript: Transcript, tally: _Tally, n_units: int, t0: float) -> TranscriptResult:
        """Dedupe, summarise and wrap up one transcript's codings."""
        codings = mark_review(_dedupe(tally.codings), self.options.review_codes)
        summary = None
        if self.options.summary:
            try:
                summary, s_usage, s_attempts, s_lost = summarise(
                    self.model, self.codebook, transcript, codings, self.options
                )
                tally.add_usage(s_usage, s_attempts)
                tally.ungrounded.extend(s_lost)
            except ModelError as exc:
                tally.failures.append(Failure.from_error("summary", exc))
        return TranscriptResult(
            transcript_id=transcript.id,
            source=transcript.source,
            format=transcript.format,
            fingerprint=fingerprint(transcript, self.codebook, self.model, self.options),
            proposals_fingerprint=proposals_fingerprint(transcript, self.codebook, self.model, self.options),
            metadata=transcript.metadata,
            n_turns=len(transcript.turns),
            n_coded_units=n_units,
            strategy=self.strategy,
            codings=codings,
            candidates=_dedupe(tally.candidates),
            summary=summary,
            ungrounded=tally.ungrounded,
            failures=tally.failures,
            warnings=list(transcript.warnings),
            calls=tally.calls,
            reasks=tally.reasks,
            usage=Usage(prompt_tokens=tally.prompt_tokens, completion_tokens=tally.completion_tokens),
            seconds=round(time.perf_counter() - t0, 3),
        )


def plan_packs(sizes: Sequence[int | None], budget: int) -> list[list[int]]:
    """Group transcripts (by index, in order) into requests: consecutive packable ones up to ``budget`` tokens.

    ``sizes[i]`` is :meth:`Extractor.pack_size` of transcript ``i``; None means it goes alone.
    """
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if size is None:
            packs.append([i])
            continue
        if current and used + size > budget:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        packs.append(current)
    return sorted(packs, key=lambda pack: pack[0])


def _shares(weights: Sequence[int], usage: Usage) -> list[Usage]:
    """``usage`` split in proportion to ``weights`` (whole tokens; the remainder goes to the first)."""
    total = max(1, sum(weights))
    p = [usage.prompt_tokens * w // total for w in weights]
    c = [usage.completion_tokens * w // total for w in weights]
    p[0] += usage.prompt_tokens - sum(p)
    c[0] += usage.completion_tokens - sum(c)
    return [Usage(prompt_tokens=a, completion_tokens=b) for a, b in zip(p, c, strict=True)]


def _dedupe(codings: Sequence[Coding]) -> list[Coding]:
    """One coding per code per overlapping span (models sometimes repeat themselves)."""
    out: list[Coding] = []
    for c in sorted(codings, key=lambda c: (c.start or 0, c.code_id)):
        if any(o.code_id == c.code_id and (o.start or 0) < (c.end or 0) and (c.start or 0) < (o.end or 0) for o in out):
            continue
        out.append(c)
    return out


def extract(
    transcript: Transcript, codebook: Codebook, model: ChatModel, options: ExtractOptions | None = None
) -> TranscriptResult:
    """Code one transcript against a codebook with a model (the library's one-call entry point)."""
    return Extractor(model, codebook, options).extract(transcript)
