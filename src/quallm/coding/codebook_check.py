"""Checks of a codebook before any token is spent: what a careful reader would flag, found by quallm.

- Near-duplicate codes: "label: definition" of every pair of codable codes embedded with MiniLM
  (``quallm.models.embeddings``); a pair at cosine similarity ``>= NEAR_DUPLICATE`` is flagged. 0.80 because
  a paraphrased definition of the same code scored 0.92 here, while the closest distinct codes of the
  demo codebook score 0.58 and of the development codebook 0.54. Without onnxruntime (or the model)
  this check is skipped, with a note.
- Codable codes with no definition (or an empty one).
- ``include`` / ``exclude`` notes that point to a code id that does not exist: ``(code X)``, ``(use X)``,
  ``(see X)``, or a word that looks like an id (has ``_`` or a digit) after "code" or "use".
- The rendered codebook's size in tokens (as the coding prompt shows it) for the chosen model.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import BaseModel, Field

from quallm.coding.prompting import render_codebook
from quallm.core.codebook import Codebook
from quallm.core.errors import QuallmError
from quallm.models.embeddings import Embedder

NEAR_DUPLICATE = 0.80
_POINTER = re.compile(r"\((?:code|use|see)\s+([A-Za-z0-9][A-Za-z0-9_.\-]*?)[.,;:]?\)", re.IGNORECASE)
_LOOSE = re.compile(r"\b(?:code|use)\s+([A-Za-z0-9][A-Za-z0-9_.\-]*[A-Za-z0-9])", re.IGNORECASE)


class CodebookCheck(BaseModel):
    """What :func:`check_codebook` found: warnings (one line each), notes, and the prompt's size."""

    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    tokens: int = 0
    tokenizer: str = ""
    near_duplicates: list[tuple[str, str, float]] = Field(default_factory=list)


def _pointers(note: str) -> list[str]:
    found = [m.group(1) for m in _POINTER.finditer(note)]
    found += [m.group(1) for m in _LOOSE.finditer(note) if "_" in m.group(1) or any(ch.isdigit() for ch in m.group(1))]
    return list(dict.fromkeys(found))


def check_codebook(
    codebook: Codebook,
    *,
    embedder: Embedder | None = None,
    count_tokens: Callable[[str], int] | None = None,
    tokenizer: str = "",
    threshold: float = NEAR_DUPLICATE,
) -> CodebookCheck:
    """Check ``codebook``; ``embedder`` None skips the near-duplicate check, ``count_tokens`` None the size."""
    out = CodebookCheck(tokenizer=tokenizer)
    codable = [c for c in codebook.codes if c.codable]
    for c in codable:
        if not c.definition.strip():
            out.warnings.append(f"code {c.id!r}: no definition (the model sees only its label)")
    ids = set(codebook.all_ids)
    for c in codebook.codes:
        for field, notes in (("include", c.include), ("exclude", c.exclude)):
            for note in notes:
                for ref in _pointers(note):
                    if ref not in ids:
                        out.warnings.append(f"code {c.id!r}: its {field} note names {ref!r}, which is not a code id")
    if embedder is None:
        out.notes.append("near-duplicate check skipped (no embedding model)")
    elif len(codable) > 1:
        try:
            vecs = embedder.embed([f"{c.label}: {c.definition}".strip() for c in codable])
        except QuallmError as exc:
            out.notes.append(f"near-duplicate check skipped: {exc}")
        else:
            sims = vecs @ vecs.T
            for i in range(len(codable)):
                for j in range(i + 1, len(codable)):
                    s = float(sims[i, j])
                    if s >= threshold:
                        a, b = codable[i].id, codable[j].id
                        out.near_duplicates.append((a, b, s))
                        out.warnings.append(
                            f"codes {a!r} and {b!r} have near-duplicate definitions (MiniLM cosine {s:.2f} >= "
                            f"{threshold:.2f}): merge them or say in exclude notes how they differ"
                        )
    if count_tokens is not None:
        out.tokens = count_tokens(render_codebook(codebook))
        out.notes.append(
            f"the codebook renders to {out.tokens} tokens"
            + (f" ({tokenizer})" if tokenizer else "")
            + f": {len(codable)} codable codes"
            + (f", {len(codebook.codes) - len(codable)} headings" if len(codable) < len(codebook.codes) else "")
        )
    return out
