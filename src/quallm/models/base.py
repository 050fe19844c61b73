"""The one small model interface: a frozen request in, a completion out.

Caching, recording, retries and validation wrap a :class:`ChatModel`; a backend only talks to its
engine. What the endpoint is (base URL, key) is kept apart from what the model supports
(:class:`OutputMode`).
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

# Usage is a shared value (results carry it), so it lives in the core; re-exported here for backends.
from quallm.core.results import Usage


class OutputMode(str, Enum):
    """How a backend is asked for structured output."""

    JSON_SCHEMA = "json_schema"  # OpenAI structured output, strict (or a grammar built from the schema)
    JSON_OBJECT = "json_object"  # JSON mode; the schema goes into the prompt
    PLAIN = "plain"  # no constraint; the schema goes into the prompt


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """Everything that can change an answer, as one frozen value (its hash is the cache key)."""

    model_config = ConfigDict(frozen=True)

    model: str
    endpoint: str = Field(description="endpoint identity: 'local:<file sha256>' or the base URL host; never a key")
    messages: tuple[Message, ...]
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"
    output_mode: OutputMode = OutputMode.JSON_SCHEMA
    temperature: float = 0.0
    max_tokens: int = 1024
    seed: int | None = 0
    prompt_id: str = ""
    prompt_hash: str = ""
    choices: tuple[str, ...] = Field(
        default=(),
        description="a scoring request: the answer is one of these words, and the backend reports the "
        "probability of each from its own next-token distribution (Completion.choice_probs)",
    )

    logprobs: bool = Field(
        default=False,
        description="ask for each generated token's log probability and its top alternatives "
        "(Completion.tokens); backends that cannot give them return None",
    )

    def key(self) -> str:
        """sha256 of the canonical JSON of the request: the cache and recording key."""
        payload = self.model_dump(mode="json")
        # Fields added later are left out at their defaults, so keys of older requests stay the same.
        for later in ("choices", "logprobs"):
            if not payload[later]:
                del payload[later]
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def with_messages(self, messages: tuple[Message, ...]) -> ChatRequest:
        """A copy with other messages (re-asks never mutate the caller's request)."""
        return self.model_copy(update={"messages": messages})


class TokenLogprob(BaseModel):
    """One generated token: its text, its log probability, and the top alternatives at its position.

    Log probabilities are of the model's own distribution before any grammar or schema constraint;
    whoever reads them renormalises over the tokens that were allowed.
    """

    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float
    top: dict[str, float] = Field(default_factory=dict)


class Completion(BaseModel):
    """What a backend returns: the raw text, why it stopped, and the tokens used."""

    model_config = ConfigDict(frozen=True)

    content: str
    finish_reason: str = "stop"
    usage: Usage = Usage()
    model: str = ""
    cached: bool = False
    tokens: tuple[TokenLogprob, ...] | None = Field(
        default=None, description="per generated token log probabilities, when the request asked for them"
    )
    choice_probs: dict[str, float] | None = Field(
        default=None,
        description="for a scoring request: each choice's probability from the model's token probabilities, "
        "renormalised over the choices; None where the backend gives none",
    )


@runtime_checkable
class ChatModel(Protocol):
    """A backend: one method that sends one request to one engine."""

    @property
    def name(self) -> str:
        """The model id reported in manifests."""
        ...

    @property
    def endpoint(self) -> str:
        """Endpoint identity for cache keys (never a key or secret)."""
        ...

    @property
    def output_mode(self) -> OutputMode:
        """The structured-output mode this backend supports best."""
        ...

    def complete(self, request: ChatRequest) -> Completion:
        """Send one request; raise a :class:`~quallm.core.errors.ModelError` on failure."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's own tokenizer."""
        ...


class ModelWrapper:
    """Base of the wrappers (cache, recording, batch answers): all but ``complete`` is the inner model's.

    Subclasses override :meth:`complete`; identity, output mode and tokenizer stay the wrapped model's,
    so a wrapped model produces exactly the requests (and cache keys) the bare one would.
    """

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        """The wrapped model's id."""
        return self.inner.name

    @property
    def endpoint(self) -> str:
        """The wrapped model's endpoint identity."""
        return self.inner.endpoint

    @property
    def output_mode(self) -> OutputMode:
        """The wrapped model's output mode."""
        return self.inner.output_mode

    def count_tokens(self, text: str) -> int:
        """The wrapped model's token count."""
        return self.inner.count_tokens(text)

    def complete(self, request: ChatRequest) -> Completion:
        """Forward to the wrapped model."""
        return self.inner.complete(request)
