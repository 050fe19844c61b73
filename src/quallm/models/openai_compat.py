"""Backend for any OpenAI-compatible endpoint: OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server.

Transport retries (429, 5xx, timeouts, dropped connections; Retry-After honoured) are done here with
tenacity, with the SDK's own retries switched off so the two never stack. Structured output is asked
for as strict ``json_schema``; a server that refuses it is asked with ``json_object`` and the schema in
the prompt, and failing that with plain text and the schema in the prompt.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any
from urllib.parse import urlparse

from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from quallm.core.errors import ConfigError, ModelError, NetworkDisabledError, TransportError
from quallm.core.redact import register_secret
from quallm.ingest.tokenizers import tokenizer_for_model
from quallm.models.base import ChatRequest, Completion, Message, OutputMode, TokenLogprob, Usage

# Tests set this to False; a request then fails at once instead of reaching a server by accident.
ALLOW_MODEL_REQUESTS = True
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _is_transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError | openai.APITimeoutError | openai.RateLimitError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def _retry_after_seconds(exc: BaseException | None) -> float | None:
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after")
    try:
        return min(float(value), 120.0) if value is not None else None
    except ValueError:
        return None


def _endpoint_identity(base_url: str | None) -> str:
    if not base_url:
        return "api.openai.com"
    u = urlparse(base_url)
    return f"{u.hostname}{':' + str(u.port) if u.port else ''}{u.path.rstrip('/')}"


class OpenAICompatModel:
    """A :class:`~quallm.models.base.ChatModel` over the ``openai`` SDK's chat completions."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 6,
        output_mode: OutputMode = OutputMode.JSON_SCHEMA,
        azure_api_version: str | None = None,
    ) -> None:
        import openai

        key = os.environ.get(api_key_env)
        register_secret(key)  # whatever quallm writes from now on is redacted of it
        host = urlparse(base_url).hostname if base_url else "api.openai.com"
        if not key:
            if host in _LOCAL_HOSTS or (base_url and not base_url.startswith("https://api.openai.com")):
                key = "not-needed"  # local servers (vLLM, Ollama, llama.cpp) accept any key
            else:
                raise ConfigError(f"no API key: set the environment variable {api_key_env}")
        self._model = model
        self._base_url = base_url
        self._mode = output_mode
        self._lock = threading.Lock()
        self._max_retries = max_retries
        if azure_api_version:
            self._client: Any = openai.AzureOpenAI(
                api_key=key,
                azure_endpoint=base_url or "",
                api_version=azure_api_version,
                max_retries=0,
                timeout=timeout,
            )
        else:
            self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self._tokenizer = tokenizer_for_model(model)

    @property
    def name(self) -> str:
        """The model id as the endpoint knows it."""
        return self._model

    @property
    def endpoint(self) -> str:
        """Host and path of the endpoint (no key, no scheme)."""
        return _endpoint_identity(self._base_url)

    @property
    def output_mode(self) -> OutputMode:
        """The structured-output mode in use (falls back when the server refuses one)."""
        return self._mode

    def count_tokens(self, text: str) -> int:
        """Tokens by the model's tiktoken encoding (approximate for non-OpenAI models)."""
        return self._tokenizer.count(text)

    def complete(self, request: ChatRequest) -> Completion:
        """Send one chat completion, retrying transport failures; fall back on refused output modes."""
        import openai

        if (
            not ALLOW_MODEL_REQUESTS
            and urlparse(self._base_url or "https://api.openai.com").hostname not in _LOCAL_HOSTS
        ):
            raise NetworkDisabledError("remote model requests are disabled (quallm.models.openai_compat)")
        while True:
            mode = self._mode
            try:
                return self._send_with_retries(request, mode)
            except openai.BadRequestError as exc:
                if request.json_schema is not None and mode != OutputMode.PLAIN and _refuses_format(exc):
                    with self._lock:
                        self._mode = OutputMode.JSON_OBJECT if mode == OutputMode.JSON_SCHEMA else OutputMode.PLAIN
                    continue
                raise ModelError(f"{self.endpoint} refused the request: {_short(exc)}") from exc
            except openai.APIStatusError as exc:
                raise TransportError(f"{self.endpoint} answered HTTP {exc.status_code}: {_short(exc)}") from exc
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                raise TransportError(f"{self.endpoint}: {type(exc).__name__} after retries") from exc

    def _send_with_retries(self, request: ChatRequest, mode: OutputMode) -> Completion:
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            after = _retry_after_seconds(exc)
            return after if after is not None else wait_exponential_jitter(initial=1, max=30)(state)

        sender = retry(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self._max_retries + 1),
            wait=wait,
            reraise=True,
        )(self._send)
        return sender(request, mode)

    def _send(self, request: ChatRequest, mode: OutputMode) -> Completion:
        resp = self._client.chat.completions.create(**chat_body(request, mode))
        choice = resp.choices[0]
        usage = resp.usage
        probs = None
        if request.choices:
            probs = choice_probs_from_logprobs(request.choices, getattr(choice, "logprobs", None))
        tokens = tokens_from_logprobs(getattr(choice, "logprobs", None)) if request.logprobs else None
        return Completion(
            choice_probs=probs,
            tokens=tokens,
            content=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            usage=Usage(
                prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            ),
            model=resp.model or request.model,
        )


def chat_body(request: ChatRequest, mode: OutputMode | None = None) -> dict[str, Any]:
    """The chat-completions body sent for ``request`` in output ``mode`` (also each Batch API line)."""
    mode = mode or request.output_mode
    messages = list(request.messages)
    body: dict[str, Any] = {}
    if request.json_schema is not None:
        if mode == OutputMode.JSON_SCHEMA:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": True},
            }
        else:
            if mode == OutputMode.JSON_OBJECT:
                body["response_format"] = {"type": "json_object"}
            messages = _with_schema_in_prompt(messages, request.json_schema)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.choices or request.logprobs:
        # The first token's top alternatives carry the probability of each choice; for a coding request,
        # every token's alternatives give the probability of each code the answer names.
        body["logprobs"] = True
        body["top_logprobs"] = 20
    return {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        **body,
    }


def tokens_from_logprobs(logprobs: Any) -> tuple[TokenLogprob, ...] | None:
    """The generated tokens with their top alternatives, from an OpenAI ``logprobs`` object; None if absent."""
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return None
    return tuple(
        TokenLogprob(
            token=str(t.token),
            logprob=float(t.logprob),
            top={str(a.token): float(a.logprob) for a in (getattr(t, "top_logprobs", None) or [])},
        )
        for t in content
    )


def choice_probs_from_logprobs(choices: tuple[str, ...], logprobs: Any) -> dict[str, float] | None:
    """Each choice's probability from the first answer token's ``top_logprobs``, renormalised over the
    choices (case and a leading space ignored); None when the server sent no logprobs or none matched."""
    import math

    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return None
    top = getattr(content[0], "top_logprobs", None) or []
    mass = dict.fromkeys(choices, 0.0)
    wanted = {c.casefold(): c for c in choices}
    for alt in top:
        word = wanted.get(str(getattr(alt, "token", "")).strip().casefold())
        if word is not None:
            mass[word] += math.exp(float(getattr(alt, "logprob", -math.inf)))
    total = sum(mass.values())
    if total <= 0:
        return None
    return {c: v / total for c, v in mass.items()}


def _with_schema_in_prompt(messages: list[Message], schema: dict[str, Any]) -> list[Message]:
    note = "\n\nYour reply must be a single JSON object that validates against this JSON schema:\n" + json.dumps(
        schema, separators=(",", ":")
    )
    if messages and messages[0].role == "system":
        return [Message(role="system", content=messages[0].content + note), *messages[1:]]
    return [Message(role="system", content=note.strip()), *messages]


def _refuses_format(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("response_format", "json_schema", "structured output", "json_object"))


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]
