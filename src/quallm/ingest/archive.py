"""The one safe reader of zip archives (.qdpx projects, .qdc/.qdpx codebooks, .docx transcripts).

A zip can declare any sizes it likes and inflate a thousand times over (a 1 MB "zip bomb" becomes
gigabytes). :class:`SafeArchive` therefore

- reads nothing when it is opened but the central directory (member names);
- reads a member only when asked (:meth:`SafeArchive.read`), inflating it in blocks and counting the
  bytes actually produced, never trusting the sizes the archive declares;
- refuses past :attr:`ArchiveLimits.max_member_bytes` for one member or
  :attr:`ArchiveLimits.max_total_bytes` for everything read from the archive, and past
  :attr:`ArchiveLimits.max_members` entries, with an :class:`ArchiveLimitError` naming the file and
  the member.

Usage::

    with SafeArchive(path) as archive:          # limits from the environment, see ArchiveLimits
        name = archive.find("project.qde")      # case-insensitive lookup of a member name
        xml = archive.read(name) if name else None

The caps default to 64 MiB per member and 256 MiB in total and can be set with the environment
variables ``QUALLM_ARCHIVE_MAX_MEMBER_MB`` and ``QUALLM_ARCHIVE_MAX_TOTAL_MB``
(:meth:`ArchiveLimits.from_env`), or by passing ``limits=ArchiveLimits(...)``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from quallm.core.errors import ConfigError, InputError

MIB = 1024 * 1024
BLOCK = 64 * 1024
MEMBER_ENV = "QUALLM_ARCHIVE_MAX_MEMBER_MB"
TOTAL_ENV = "QUALLM_ARCHIVE_MAX_TOTAL_MB"


class ArchiveError(InputError):
    """An archive that cannot be read (not a zip, corrupt, encrypted, a member missing)."""


class ArchiveLimitError(ArchiveError):
    """An archive that inflates past a configured cap (a zip bomb, or a limit set too low)."""


def _env_bytes(name: str, default: int) -> int:
    """Bytes from the environment variable ``name`` (in MB), else ``default`` (bytes)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        mb = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of megabytes") from None
    if mb <= 0:
        raise ConfigError(f"{name}={raw!r} must be more than 0")
    return int(mb * MIB)


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one archive may inflate to, in bytes actually inflated."""

    max_member_bytes: int = 64 * MIB
    max_total_bytes: int = 256 * MIB
    max_members: int = 100_000

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        """The defaults, overridden by ``QUALLM_ARCHIVE_MAX_MEMBER_MB`` / ``QUALLM_ARCHIVE_MAX_TOTAL_MB``."""
        d = cls()
        return cls(
            max_member_bytes=_env_bytes(MEMBER_ENV, d.max_member_bytes),
            max_total_bytes=_env_bytes(TOTAL_ENV, d.max_total_bytes),
        )


def is_zip(path: str | Path) -> bool:
    """Whether ``path`` is a zip archive (reads only its end record)."""
    return zipfile.is_zipfile(path)


def _mb(n: int) -> str:
    return f"{n / MIB:g} MB"


class SafeArchive:
    """A zip archive opened for bounded, lazy reading; see the module docstring."""

    def __init__(self, path: str | Path, limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits.from_env()
        self.total_read = 0
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ArchiveError(self.path, f"cannot read the archive: {exc}") from exc
        infos = self._zip.infolist()
        if len(infos) > self.limits.max_members:
            self._zip.close()
            raise ArchiveLimitError(
                self.path, f"the archive has {len(infos)} entries, more than the limit of {self.limits.max_members}"
            )
        self._names = [i.filename for i in infos if not i.is_dir()]

    def __enter__(self) -> SafeArchive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying file."""
        self._zip.close()

    def names(self) -> list[str]:
        """Member file names (folders left out), as stored."""
        return list(self._names)

    def find(self, name: str) -> str | None:
        """The stored name of the member called ``name``, compared case-insensitively, or ``None``."""
        low = name.lower()
        return next((n for n in self._names if n.lower() == low), None)

    def read(self, name: str) -> bytes:
        """The inflated bytes of member ``name``, counted as they inflate against the caps."""
        return b"".join(self._inflate(name, keep=True))

    def check(self) -> None:
        """Inflate every member once, keeping nothing, so that a reader that takes the whole file
        itself (python-docx) is known to stay within the caps; raises as :meth:`read` does."""
        for name in self._names:
            self._inflate(name, keep=False)

    def _inflate(self, name: str, keep: bool) -> list[bytes]:
        limits = self.limits
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise ArchiveError(self.path, f"no member {name!r} in the archive") from None
        parts: list[bytes] = []
        size = 0
        try:
            with self._zip.open(info) as fh:
                while block := fh.read(BLOCK):
                    size += len(block)
                    if size > limits.max_member_bytes:
                        raise ArchiveLimitError(
                            self.path,
                            f"member {name!r} inflates past the limit of {_mb(limits.max_member_bytes)} "
                            f"per member (set {MEMBER_ENV} to allow more)",
                        )
                    if self.total_read + size > limits.max_total_bytes:
                        raise ArchiveLimitError(
                            self.path,
                            f"reading member {name!r} takes the archive past the limit of "
                            f"{_mb(limits.max_total_bytes)} in total (set {TOTAL_ENV} to allow more)",
                        )
                    if keep:
                        parts.append(block)
        except (zipfile.BadZipFile, zlib.error, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
            # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method.
            raise ArchiveError(self.path, f"cannot read member {name!r}: {exc}") from exc
        self.total_read += size
        return parts
