"""A fake backend for unit tests: queued answers, a responder function, or schema-driven defaults."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from quallm.models.base import ChatRequest, Completion, OutputMode, Usage

Responder = Callable[[ChatRequest], "str | Completion"]


def minimal_instance(schema: dict[str, Any]) -> Any:
    """The smallest value valid against ``schema`` (empty arrays, first enum value, zeros)."""
    if "enum" in schema:
        return schema["enum"][0]
    t = schema.get("type")
    if t == "object":
        return {k: minimal_instance(v) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        return []
    if t == "integer":
        return int(schema.get("minimum", 0))
    if t == "number":
        return float(schema.get("minimum", 0))
    if t == "boolean":
        return False
    return ""


class FakeModel:
    """A :class:`~quallm.models.base.ChatModel` that never leaves the process.

    Answers come from, in order: the queue (``enqueue``), the ``responder``, or the minimal valid
    instance of the request's schema. Every request is kept in ``requests``.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        name: str = "fake",
        endpoint: str = "fake",
        scorer: Callable[[ChatRequest], dict[str, float] | None] | None = None,
    ) -> None:
        self._queue: deque[str | Completion] = deque()
        self._responder = responder
        self._scorer = scorer
        self._name = name
        self._endpoint = endpoint
        self.requests: list[ChatRequest] = []

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
        """Fake backends honour schemas exactly."""
        return OutputMode.JSON_SCHEMA

    def enqueue(self, *answers: str | Completion | dict[str, Any]) -> None:
        """Queue answers (a dict is serialised to JSON)."""
        for a in answers:
            self._queue.append(json.dumps(a) if isinstance(a, dict) else a)

    def count_tokens(self, text: str) -> int:
        """Whitespace-separated words, a stable stand-in for a tokenizer."""
        return len(text.split())

    def complete(self, request: ChatRequest) -> Completion:
        """Answer from the queue, the responder, or the schema; scoring requests from the ``scorer``.

        A scoring request (``request.choices``) never takes a queued answer: without a scorer its
        probabilities are None, as from a backend that reports none.
        """
        self.requests.append(request)
        if request.choices:
            probs = self._scorer(request) if self._scorer else None
            best = max(request.choices, key=lambda c: probs[c]) if probs else request.choices[0]
            return Completion(content=best, finish_reason="stop", model=self._name, choice_probs=probs)
        if self._queue:
            out: str | Completion = self._queue.popleft()
        elif self._responder is not None:
            out = self._responder(request)
        else:
            out = json.dumps(minimal_instance(request.json_schema or {"type": "object"}))
        if isinstance(out, Completion):
            return out
        prompt = sum(self.count_tokens(m.content) for m in request.messages)
        return Completion(
            content=out,
            finish_reason="stop",
            usage=Usage(prompt_tokens=prompt, completion_tokens=self.count_tokens(out)),
            model=self._name,
        )
