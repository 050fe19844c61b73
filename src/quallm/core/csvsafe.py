"""CSV that a spreadsheet cannot run: the one place quallm writes and reads its CSV files.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel
and LibreOffice (``=cmd|' /C calc'!A0``), so every *text* cell quallm writes is neutralised by
OWASP's rule: a ``'`` is put in front (:func:`neutralise`). Text is whatever came from outside: a
transcript, a speaker, a file name, metadata, a codebook, a coder. Numbers quallm computed itself
(offsets, counts, a negative kappa) are passed as ``int``/``float`` and written as they are.

quallm's own readers of these files (:class:`SafeDictReader`: the human coding CSV, metadata) take
the ``'`` off again (:func:`restore`), so a round trip is exact and ``quote == text[start:end]``
still holds. A text that itself starts with ``'`` followed by a trigger gets one more ``'``, so the
two are never confused. JSON files are written without any of this: they stay exact.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

Cell = str | int | float | None

# Optional apostrophes, then a character that starts a formula (or hides one: tab, CR).
_FORMULA = re.compile(r"'*[=+\-@\t\r]")


def neutralise(text: str) -> str:
    """``text`` with a ``'`` in front if a spreadsheet would read it as a formula."""
    return "'" + text if _FORMULA.match(text) else text


def restore(text: str) -> str:
    """The text :func:`neutralise` was given (the one ``'`` it added taken off)."""
    return text[1:] if text.startswith("'") and _FORMULA.match(text, 1) else text


def safe_row(row: Iterable[Cell]) -> list[str | int | float]:
    """A row ready for ``csv.writer``: text neutralised, numbers kept, ``None`` empty."""
    out: list[str | int | float] = []
    for cell in row:
        if cell is None:
            out.append("")
        elif isinstance(cell, str):
            out.append(neutralise(cell))
        else:
            out.append(cell)
    return out


class SafeWriter:
    """``csv.writer`` over ``fh`` that writes every row through :func:`safe_row`."""

    def __init__(self, fh: TextIO) -> None:
        self._w = csv.writer(fh)

    def writerow(self, row: Iterable[Cell]) -> None:
        """Write one row."""
        self._w.writerow(safe_row(row))

    def writerows(self, rows: Iterable[Iterable[Cell]]) -> None:
        """Write many rows."""
        for row in rows:
            self.writerow(row)


def to_csv(rows: Iterable[Iterable[Cell]]) -> str:
    """The CSV text of ``rows`` (header first), every text cell neutralised."""
    buf = io.StringIO()
    SafeWriter(buf).writerows(rows)
    return buf.getvalue()


class SafeDictReader(Iterator[dict[str, str]]):
    """``csv.DictReader`` whose field names and values have the ``'`` of :func:`neutralise` taken off."""

    def __init__(self, source: Iterable[str], **kwargs: Any) -> None:
        self._r = csv.DictReader(source, **kwargs)

    @property
    def fieldnames(self) -> list[str] | None:
        """The header's field names, restored."""
        names = self._r.fieldnames
        return None if names is None else [restore(n) for n in names]

    def __iter__(self) -> SafeDictReader:
        return self

    def __next__(self) -> dict[str, str]:
        row = next(self._r)
        return {
            (restore(k) if isinstance(k, str) else k): (restore(v) if isinstance(v, str) else v)
            for k, v in row.items()
        }
