"""Reading bytes into text: UTF-8 (with or without BOM), UTF-16/32 with a BOM, then cp1252; CRLF normalised to LF."""

from __future__ import annotations

import codecs
from pathlib import Path

from quallm.core.errors import InputError

# Longest first: the UTF-32 LE BOM begins with the UTF-16 LE one. Windows "Unicode text" is UTF-16 LE.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def read_text(path: Path) -> tuple[str, list[str]]:
    """The text of ``path`` and any warnings; raises :class:`InputError` for empty or binary files."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_bytes(data, path)


def decode_bytes(data: bytes, path: Path | str) -> tuple[str, list[str]]:
    """Decode transcript bytes; NUL bytes (without a UTF-16/32 BOM) mean binary, refused rather than guessed at."""
    warnings: list[str] = []
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise InputError(
                    path, f"starts with a {encoding.upper()} byte order mark but is not valid {encoding.upper()}"
                ) from exc
            if not text.strip():
                raise InputError(path, "file is empty")
            return text.replace("\r\n", "\n").replace("\r", "\n"), warnings
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
