"""What a run would cost, before it runs: tokens and dollars, with no model call.

The unit requests are built by the :class:`~quallm.coding.extract.Extractor` itself (a tokenizer-only stand-in
model, so chunking uses the model's own tiktoken encoding exactly as the real backend would) and
their prompts counted as the chat API counts them. What the model will write cannot be known, so
completion tokens come from stated per-unit assumptions, shown with the result. Prices come from the
shipped table ``quallm/data/prices.json`` (dated; prices change) or a user's own file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quallm.coding.extract import ExtractOptions, Extractor
from quallm.coding.prompting import codebook_values, load_prompt
from quallm.coding.schemas import summary_schema
from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError
from quallm.core.transcript import Transcript
from quallm.ingest.tokenizers import Tokenizer, encoding_for_model, tokenizer_for_model
from quallm.models.base import ChatRequest, Completion, OutputMode
from quallm.run.batch_api import chat_body, job_requests


class ModelPrice(BaseModel):
    """USD per 1M tokens."""

    model_config = ConfigDict(frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class PriceTable(BaseModel):
    """A dated price table (the shipped one, or the user's, merged over it)."""

    model_config = ConfigDict(frozen=True)

    written: str = ""
    prices_as_of: str = ""
    note: str = ""
    currency: str = "USD"
    unit: str = "per 1M tokens"
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    models: dict[str, ModelPrice] = Field(default_factory=dict)
    source: str = "quallm/data/prices.json"

    def lookup(self, model: str) -> tuple[str, ModelPrice] | None:
        """The price of ``model``: an exact name, else the longest listed name it extends (dated snapshots)."""
        name = model.lower().split("/")[-1]
        if name in self.models:
            return name, self.models[name]
        candidates = [k for k in self.models if name.startswith(k + "-")]
        if not candidates:
            return None
        best = max(candidates, key=len)
        return best, self.models[best]


def load_prices(override: str | Path | Mapping[str, Any] | None = None) -> PriceTable:
    """The shipped table, with ``override`` (a JSON/YAML file or a mapping) merged over it.

    An override may be a whole table (with ``models``) or just ``{model: {input, output}}``.
    """
    shipped = json.loads(resources.files("quallm").joinpath("data", "prices.json").read_text(encoding="utf-8"))
    if override is None:
        return PriceTable.model_validate(shipped)
    source = "(given)"
    if isinstance(override, str | Path):
        path = Path(override)
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the price table ({exc})") from exc
        source = str(path)
    else:
        data = dict(override)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a price table must be a mapping")
    if "models" in data:
        models, top = dict(data["models"] or {}), {k: v for k, v in data.items() if k != "models"}
    elif all(isinstance(v, dict) for v in data.values()):
        models, top = data, {}  # just {model: {input, output}}
    else:
        models, top = {}, data
    merged = {**shipped, **top}
    merged["models"] = {**shipped["models"], **{str(k).lower(): v for k, v in models.items()}}
    merged["source"] = f"{source} over quallm/data/prices.json"
    try:
        return PriceTable.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{source}: invalid price table: {first['msg']} at {first['loc']}") from exc


class Assumptions(BaseModel):
    """What cannot be counted before the run; stated with every estimate."""

    model_config = ConfigDict(frozen=True)

    turn_completion_tokens: int = Field(default=40, description="per turn unit (sentence-number answers)")
    chunk_completion_tokens_per_segment: int = Field(default=60, description="per coded segment in a chunk")
    summary_completion_tokens: int = Field(default=400, description="per transcript")
    summary_evidence_tokens: int = Field(default=600, description="numbered quotes in a summary prompt")
    reask_rate: float = Field(default=0.0, ge=0, description="extra requests per request (0 = none re-asked)")


class TranscriptEstimate(BaseModel):
    """One transcript's share."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    transcript_tokens: int
    units: int
    requests: int
    prompt_tokens: int
    completion_tokens: int


class Estimate(BaseModel):
    """Tokens and cost of a run, before it runs."""

    model_config = ConfigDict(frozen=True)

    model: str
    encoding: str
    strategy: str
    transcripts: list[TranscriptEstimate]
    requests: int
    transcript_tokens: int
    prompt_tokens: int
    completion_tokens: int
    price_model: str | None = None
    price: ModelPrice | None = None
    cost_usd: float | None = None
    batch_cost_usd: float | None = None
    prices: PriceTable
    assumptions: Assumptions
    notes: list[str] = Field(default_factory=list)

    def render(self) -> str:
        """Print-ready text: a table per transcript, totals, cost, and the assumptions behind them."""
        w = max([len("transcript"), *(len(t.transcript_id) for t in self.transcripts)])
        head = f"{'transcript':<{w}}  {'tokens':>9}  {'requests':>8}  {'prompt tok':>11}  {'completion tok':>14}"
        lines = [
            f"Estimate for {self.model} ({self.encoding}), {self.strategy} strategy, "
            f"{len(self.transcripts)} transcript(s); no model was called.",
            "",
            head,
            "-" * len(head),
        ]
        for t in self.transcripts:
            lines.append(
                f"{t.transcript_id:<{w}}  {t.transcript_tokens:>9,}  {t.requests:>8,}  {t.prompt_tokens:>11,}  "
                f"{t.completion_tokens:>14,}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<{w}}  {self.transcript_tokens:>9,}  {self.requests:>8,}  {self.prompt_tokens:>11,}  "
            f"{self.completion_tokens:>14,}"
        )
        if self.transcript_tokens:
            lines.append(f"Prompt tokens per transcript token: {self.prompt_tokens / self.transcript_tokens:.1f}")
        lines.append("")
        if self.price is not None and self.cost_usd is not None:
            lines.append(
                f"Cost: ${self.cost_usd:,.4f} at {self.price_model} prices (${self.price.input:g} in / "
                f"${self.price.output:g} out {self.prices.unit}); Batch API: ${self.batch_cost_usd or 0:,.4f}."
            )
            lines.append(f"Prices: {self.prices.source}, as of {self.prices.prices_as_of or self.prices.written}.")
        else:
            lines.append(f"Cost: unknown, {self.model} is not in the price table (pass --prices FILE).")
        a = self.assumptions
        lines.append(
            f"Assumed completion tokens: turn {a.turn_completion_tokens}/unit, chunk "
            f"{a.chunk_completion_tokens_per_segment}/coded segment, summary {a.summary_completion_tokens}/transcript; "
            f"summary prompt evidence {a.summary_evidence_tokens}; re-ask rate {a.reask_rate:g}."
        )
        lines.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(lines)


class _TokenizerOnly:
    """A stand-in ChatModel: the model's name, endpoint and tokenizer, and no way to call it."""

    def __init__(self, name: str, endpoint: str, tokenizer: Tokenizer) -> None:
        self._name, self._endpoint, self._tok = name, endpoint, tokenizer

    @property
    def name(self) -> str:
        """Model id."""
        return self._name

    @property
    def endpoint(self) -> str:
        """Endpoint identity."""
        return self._endpoint

    @property
    def output_mode(self) -> OutputMode:
        """Strict JSON schema, as sent to OpenAI models."""
        return OutputMode.JSON_SCHEMA

    def count_tokens(self, text: str) -> int:
        """Tokens in the model's encoding."""
        return self._tok.count(text)

    def complete(self, request: ChatRequest) -> Completion:
        """Never called: an estimate makes no request."""
        raise ConfigError("an estimate never calls the model")


# The chat format's per-message framing and reply priming (OpenAI's published counting recipe).
_PER_MESSAGE = 3
_REPLY_PRIMING = 3


def prompt_tokens(request: ChatRequest, tok: Tokenizer) -> int:
    """Prompt tokens of ``request`` as sent (schema in the prompt for json_object/plain; else counted as JSON)."""
    body = chat_body(request)
    n = _REPLY_PRIMING + sum(_PER_MESSAGE + tok.count(m["role"]) + tok.count(m["content"]) for m in body["messages"])
    if request.json_schema is not None and request.output_mode == OutputMode.JSON_SCHEMA:
        # Structured output adds the schema to the prompt in the provider's own form; its compact JSON is a near proxy.
        n += tok.count(json.dumps(request.json_schema, separators=(",", ":")))
    return n


def estimate(
    transcripts: Sequence[Transcript],
    codebook: Codebook,
    model_name: str,
    options: ExtractOptions | None = None,
    prices: str | Path | Mapping[str, Any] | PriceTable | None = None,
    *,
    endpoint: str = "api.openai.com",
    assumptions: Assumptions | None = None,
) -> Estimate:
    """Tokens and cost of coding ``transcripts`` with ``model_name``, without calling it."""
    opts = options or ExtractOptions()
    a = assumptions or Assumptions()
    table = prices if isinstance(prices, PriceTable) else load_prices(prices)
    tok = tokenizer_for_model(model_name)
    extractor = Extractor(_TokenizerOnly(model_name, endpoint, tok), codebook, opts)
    summary_prompt = load_prompt("summary")
    per: list[TranscriptEstimate] = []
    t_tokens = {t.id: tok.count(t.text) for t in transcripts}
    acc: dict[str, list[int]] = {t.id: [0, 0, 0, 0] for t in transcripts}  # units, requests, prompt, completion
    for ids, r in job_requests(extractor, transcripts):
        p_tok = prompt_tokens(r, tok)
        if extractor.strategy == "turn":
            c_tok = a.turn_completion_tokens
        else:
            c_tok = min(r.max_tokens, a.chunk_completion_tokens_per_segment * _coded_segments(r))
        # A packed request is shared out in proportion to each transcript's length.
        weights = [max(1, t_tokens[i]) for i in ids]
        shares = zip(ids, _split(p_tok, weights), _split(c_tok, weights), strict=True)
        for k, (i, p_share, c_share) in enumerate(shares):
            acc[i][0] += 1
            acc[i][1] += 1 if k == 0 else 0
            acc[i][2] += p_share
            acc[i][3] += c_share
    for t in transcripts:
        units, requests, p_tok, c_tok = acc[t.id]
        if opts.summary:
            system, user = summary_prompt.render(
                transcript_id=t.id, metadata="", evidence="", **codebook_values(codebook)
            )
            schema = json.dumps(summary_schema(list(codebook.ids)), separators=(",", ":"))
            p_tok += 2 * _PER_MESSAGE + _REPLY_PRIMING + tok.count(system) + tok.count(user) + tok.count(schema)
            p_tok += a.summary_evidence_tokens
            c_tok += a.summary_completion_tokens
            requests += 1
        scale = 1 + a.reask_rate
        per.append(
            TranscriptEstimate(
                transcript_id=t.id,
                transcript_tokens=t_tokens[t.id],
                units=units,
                requests=round(requests * scale),
                prompt_tokens=round(p_tok * scale),
                completion_tokens=round(c_tok * scale),
            )
        )
    total_p = sum(x.prompt_tokens for x in per)
    total_c = sum(x.completion_tokens for x in per)
    found = table.lookup(model_name)
    cost = batch = None
    if found is not None:
        cost = (total_p * found[1].input + total_c * found[1].output) / 1_000_000
        batch = cost * (1 - table.batch_discount)
    notes = [
        table.note or "Prices change; check your provider's current prices.",
        "Completion tokens are assumptions, not counts; re-asks add requests (see reask_rate).",
        "Providers discount repeated prompt prefixes (the instructions and codebook); not counted here.",
    ]
    if not opts.summary:
        notes.append("Summaries are off: no summary requests counted.")
    return Estimate(
        model=model_name,
        encoding=encoding_for_model(model_name),
        strategy=extractor.strategy,
        transcripts=per,
        requests=sum(x.requests for x in per),
        transcript_tokens=sum(x.transcript_tokens for x in per),
        prompt_tokens=total_p,
        completion_tokens=total_c,
        price_model=found[0] if found else None,
        price=found[1] if found else None,
        cost_usd=round(cost, 6) if cost is not None else None,
        batch_cost_usd=round(batch, 6) if batch is not None else None,
        prices=table,
        assumptions=a,
        notes=notes,
    )


def _split(total: int, weights: list[int]) -> list[int]:
    """``total`` in whole parts proportional to ``weights``; the remainder goes to the first."""
    parts = [total * w // sum(weights) for w in weights]
    parts[0] += total - sum(parts)
    return parts


_CODE_LINE = re.compile(r"^\[S\d+\] \([^,\n]*, CODE\) ", re.M)


def _coded_segments(request: ChatRequest) -> int:
    """Coded segments in a chunk request (its ``[Sn] (speaker, CODE)`` lines)."""
    return max(1, len(_CODE_LINE.findall(request.messages[-1].content)))
