"""What a backend is and can do: the one place that decides "is this model local?" and what follows.

An in-process model (llama.cpp, endpoint ``local:<sha256>``) runs one request at a time, has an
8,192-token context and codes short excerpts best, one answer per call (the ``turn`` strategy). A
remote model takes requests concurrently and reads a whole interview in one request (``chunk``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quallm.models.base import ChatModel

LOCAL_ENDPOINT_PREFIX = "local:"

#: Transcript tokens per request by default: small for an in-process model (its context is 8,192 tokens
#: and it codes short excerpts better), large for remote models, whose contexts hold a whole interview,
#: so the instructions and codebook (about 2,000 tokens for the demo) are sent less often.
LOCAL_CHUNK_TOKENS = 3000
REMOTE_CHUNK_TOKENS = 12000


@dataclass(frozen=True)
class ModelProfile:
    """A backend's kind and the defaults that follow from it."""

    local: bool
    strategy: Literal["turn", "chunk"]  # what ``--strategy auto`` means for it
    chunk_tokens: int  # transcript tokens per request, chunk strategy
    discover_min_themes: int  # discovery: candidate themes asked of each chunk, at least

    def concurrency(self, requested: int) -> int:
        """Requests in flight for a run that asks for ``requested``: one at a time in process."""
        return 1 if self.local else max(1, requested)


LOCAL = ModelProfile(local=True, strategy="turn", chunk_tokens=LOCAL_CHUNK_TOKENS, discover_min_themes=2)
REMOTE = ModelProfile(local=False, strategy="chunk", chunk_tokens=REMOTE_CHUNK_TOKENS, discover_min_themes=0)


def is_local(endpoint: str) -> bool:
    """True for the endpoint identity of an in-process model."""
    return endpoint.startswith(LOCAL_ENDPOINT_PREFIX)


def profile_of(model: ChatModel) -> ModelProfile:
    """The profile of ``model`` (wrappers report the wrapped backend's endpoint, so it sees through them)."""
    return LOCAL if is_local(model.endpoint) else REMOTE
