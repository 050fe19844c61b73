"""Turns a resolved :class:`~quallm.models.resolve.ModelChoice` into a ready chat model."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from quallm.models.base import ChatModel
from quallm.models.resolve import ModelChoice, build_local_model

LOCAL_N_CTX = 8192  # room for the codebook prefix, a long answer or a summary's evidence, and the reply


def build_chat_model(
    choice: ModelChoice, *, api_key_env: str = "OPENAI_API_KEY", azure_api_version: str | None = None
) -> tuple[ChatModel, dict[str, Any]]:
    """The backend for ``choice`` and the facts about it that belong in a run manifest."""
    if choice.kind == "local":
        model = build_local_model(choice, n_ctx=LOCAL_N_CTX)
        return model, {
            "backend": "local_llama",
            "source": choice.source,
            "file": choice.file_name,
            "sha256": choice.gguf_sha256(),
            "n_ctx": LOCAL_N_CTX,
            "n_threads": model.n_threads,
        }
    from quallm.models.openai_compat import OpenAICompatModel

    remote = OpenAICompatModel(
        choice.model, base_url=choice.base_url, api_key_env=api_key_env, azure_api_version=azure_api_version
    )
    host = urlparse(choice.base_url).hostname if choice.base_url else "api.openai.com"
    return remote, {"backend": "openai_compat", "endpoint_host": host, "api_key_env": api_key_env}
