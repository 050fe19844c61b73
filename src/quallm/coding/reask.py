"""The output loop: parse and validate a completion, re-ask a bounded number of times on failure.

Kept apart from the transport loop (tenacity, in the backends): a rate limit is never treated as a
bad answer, and a bad answer never as a transport failure. Each re-ask builds a fresh message tuple;
the caller's request is never mutated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from quallm.core.errors import OutputValidationError, TruncatedOutputError
from quallm.models.base import ChatModel, ChatRequest, Completion, Message, Usage

T = TypeVar("T", bound=BaseModel)


def _strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t.strip()


def parse_answer(
    raw: str, model_type: type[T], check: Callable[[T], list[str]] | None = None
) -> tuple[T | None, list[str]]:
    """Parse ``raw`` as JSON into ``model_type``; returns (value, errors)."""
    try:
        data = json.loads(_strip_fences(raw))
    except json.JSONDecodeError as exc:
        return None, [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
    try:
        value = model_type.model_validate(data)
    except ValidationError as exc:
        return None, [f"{'.'.join(str(x) for x in e['loc']) or 'answer'}: {e['msg']}" for e in exc.errors()[:8]]
    errors = check(value) if check else []
    return (value if not errors else None), errors


def ask(
    model: ChatModel,
    request: ChatRequest,
    model_type: type[T],
    *,
    check: Callable[[T], list[str]] | None = None,
    max_reasks: int = 2,
) -> tuple[T, Completion, int, Usage]:
    """Send ``request``; validate; re-ask with the errors up to ``max_reasks`` times.

    Raises :class:`TruncatedOutputError` on ``finish_reason == "length"`` and
    :class:`OutputValidationError` (with the last raw output and errors) when re-asks run out.
    """
    current = request
    prompt_tokens = completion_tokens = 0
    last_raw = ""
    errors: list[str] = []
    for attempt in range(1, max_reasks + 2):
        completion = model.complete(current)
        prompt_tokens += completion.usage.prompt_tokens
        completion_tokens += completion.usage.completion_tokens
        if completion.finish_reason == "length":
            raise TruncatedOutputError(
                f"output cut off at max_tokens={current.max_tokens} (finish_reason 'length')", raw=completion.content
            )
        last_raw = completion.content
        value, errors = parse_answer(completion.content, model_type, check)
        if value is not None:
            return value, completion, attempt, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        feedback = (
            "Your previous reply was not valid:\n- "
            + "\n- ".join(errors)
            + "\nReply again with JSON only, following the required form exactly."
        )
        current = request.with_messages(
            (
                *request.messages,
                Message(role="assistant", content=completion.content),
                Message(role="user", content=feedback),
            )
        )
    raise OutputValidationError(
        f"invalid output after {max_reasks + 1} attempts: {'; '.join(errors)}", raw=last_raw, errors=errors
    )
