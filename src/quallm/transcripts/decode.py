"""Reading bytes into text: UTF-8 (with or without BOM), then cp1252; CRLF normalised to LF."""

from __future__ import annotations

from pathlib import Path

from quallm.errors import InputError


def read_text(path: Path) -> tuple[str, list[str]]:
    """The text of ``path`` and any warnings; raises :class:`InputError` for empty or binary files."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_bytes(data, path)


def decode_bytes(data: bytes, path: Path | str) -> tuple[str, list[str]]:
    """Decode transcript bytes; NUL bytes mean binary, which is refused rather than guessed at."""
    warnings: list[str] = []
    if not data.strip():
        raise InputError(path, "file is empty")
    if b"\x00" in data[:8192]:
        raise InputError(path, "looks like a binary file, not a text transcript")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as exc:
            raise InputError(path, "not valid UTF-8 or cp1252 text") from exc
        warnings.append(f"{path}: not UTF-8; decoded as cp1252")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, warnings
