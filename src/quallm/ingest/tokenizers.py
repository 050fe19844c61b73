"""Token counting in a model's own tokenizer, offline.

tiktoken downloads its encodings on first use, which fails on machines without internet, so the two
encodings quallm needs (``cl100k_base``, ``o200k_base``) ship inside the package (gzipped, verified
against tiktoken's own expected sha256 on load).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Protocol

import tiktoken

from quallm.core.errors import ConfigError

# tiktoken's published hashes of the decompressed encoding files.
_EXPECTED_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_patch_lock = threading.Lock()


class Tokenizer(Protocol):
    """Anything that counts tokens."""

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        ...


class TiktokenTokenizer:
    """A tiktoken encoding loaded from the package's own data."""

    def __init__(self, encoding_name: str) -> None:
        self.encoding = load_encoding(encoding_name)

    def count(self, text: str) -> int:
        """Number of tokens in ``text`` (special tokens counted as plain text)."""
        return len(self.encoding.encode(text, disallowed_special=()))


class CallableTokenizer:
    """Wraps a model's own ``count_tokens`` (e.g. llama.cpp's tokenizer)."""

    def __init__(self, fn: Callable[[str], int]) -> None:
        self._fn = fn

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        return self._fn(text)


def _read_ranks(name: str) -> dict[bytes, int]:
    data = resources.files("quallm").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    raw = gzip.decompress(data)
    if hashlib.sha256(raw).hexdigest() != _EXPECTED_SHA256[name]:
        raise ConfigError(f"the shipped tiktoken encoding {name} is corrupt (sha256 mismatch)")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=4)
def load_encoding(name: str) -> tiktoken.Encoding:
    """Load ``cl100k_base`` or ``o200k_base`` from the package, never from the network."""
    if name not in _EXPECTED_SHA256:
        raise ConfigError(f"unknown tiktoken encoding {name!r}; shipped: {', '.join(_EXPECTED_SHA256)}")
    from tiktoken_ext import openai_public

    ranks = _read_ranks(name)
    # Reuse tiktoken's own constructor (its split regex and special tokens) rather than copying them,
    # swapping in our local ranks for its download for the duration of the call.
    with _patch_lock:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = lambda *_a, **_k: ranks
        try:
            params = getattr(openai_public, name)()
        finally:
            openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**params)


def encoding_for_model(model: str) -> str:
    """The tiktoken encoding of an OpenAI model name; ``o200k_base`` for unknown names."""
    m = model.lower().split("/")[-1]
    if m.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "gpt-oss", "chatgpt")):
        return "o200k_base"
    if m.startswith(("gpt-4", "gpt-3.5", "text-embedding")):
        return "cl100k_base"
    return "o200k_base"


def tokenizer_for_model(model: str) -> TiktokenTokenizer:
    """A tokenizer for a remote model (OpenAI models exactly; others approximately, by o200k)."""
    return TiktokenTokenizer(encoding_for_model(model))
