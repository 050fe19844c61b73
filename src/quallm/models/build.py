"""The one builder of the wrapped chat model every command uses.

From the model options (``--model``, ``--model-path``, ``--base-url``, the key's variable, Azure,
record/replay, the cache, ``--rpm``/``--tpm``) to the stack: backend -> rate limits -> cache ->
recorder. The rate limits sit inside the cache, so cached answers never wait; the cache sits inside
the recorder, so a recording holds every exchange of the run, cached or not. Replay stands in for
the whole stack. The Batch API's answers (``batch_api.BatchAnswersModel``) go on top, in the batch run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quallm.models.base import ChatModel
from quallm.models.profile import ModelProfile, profile_of


@dataclass(frozen=True)
class ModelSettings:
    """Which model, and how it is wrapped. The defaults are the CLI's."""

    model: str | None = None
    model_path: Path | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    azure_api_version: str | None = None
    record: Path | None = None
    replay: Path | None = None
    cache: Path | None = None  # the cache file (default: the user cache dir)
    use_cache: bool = True
    rpm: int | None = None
    tpm: int | None = None


@dataclass
class BuiltModel:
    """The wrapped model, the manifest facts about it, the bare backend, and its profile."""

    chat: ChatModel
    info: dict[str, Any] = field(default_factory=dict)
    bare: ChatModel | None = None
    profile: ModelProfile | None = None


def build_model(settings: ModelSettings, *, on_cache_warning: Callable[[str], None] | None = None) -> BuiltModel:
    """The chat model ``settings`` ask for, wrapped for limits, cache and record/replay."""
    from quallm.models.cache import CachedModel, ResponseCache
    from quallm.models.factory import build_chat_model
    from quallm.models.recording import RecordingModel, ReplayModel
    from quallm.models.resolve import resolve_model

    if settings.replay is not None:
        rm = ReplayModel(settings.replay)
        return BuiltModel(rm, {"backend": "replay", "recordings": str(settings.replay)}, rm, profile_of(rm))
    choice = resolve_model(
        settings.model,
        model_path=str(settings.model_path) if settings.model_path else None,
        base_url=settings.base_url,
        api_key_env=settings.api_key_env,
    )
    bare, info = build_chat_model(
        choice, api_key_env=settings.api_key_env, azure_api_version=settings.azure_api_version
    )
    chat: ChatModel = bare
    if settings.rpm or settings.tpm:
        from quallm.models.limits import RateLimitedModel

        chat = RateLimitedModel(chat, settings.rpm, settings.tpm)  # inside the cache: cached answers never wait
        info["rate_limits"] = {"requests_per_minute": settings.rpm, "tokens_per_minute": settings.tpm}
    if settings.use_cache:
        cached = CachedModel(chat, ResponseCache(settings.cache, on_warning=on_cache_warning))
        info["cache"] = str(cached.cache.path)
        chat = cached
    if settings.record is not None:
        chat = RecordingModel(chat, settings.record)
        info["recorded_to"] = str(settings.record)
    return BuiltModel(chat, info, bare, profile_of(bare))
