"""From codings to label tables: which units the human marked with each code, and the machine's score
(highest proposal probability) for each unit and code. Uses the agreement package's units, so a unit
here is a unit in ``quallm reconcile``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quallm.analysis.agreement.units import Unit, UnitKind, mark_units
from quallm.analysis.calibration.maths import FloatArray, LabelTable
from quallm.core.codings import Coding
from quallm.core.transcript import Transcript


def score_matrix(
    transcripts: Sequence[Transcript],
    proposals: Sequence[Coding],
    codes: Sequence[str],
    unit: UnitKind = "turn",
    min_overlap: int = 1,
) -> tuple[list[Unit], np.ndarray, FloatArray, list[str]]:
    """Units, the transcript index of each, units x codes scores, and the proposals that could not be
    placed. A proposal without a probability scores ``+inf`` (a threshold cannot remove it)."""
    marked = mark_units(transcripts, proposals, unit, min_overlap)
    col = {c: i for i, c in enumerate(codes)}
    s = np.full((len(marked.units), len(codes)), -np.inf)
    for k, c in marked.hits:
        j = col.get(c.code_id)
        if j is not None:
            s[k, j] = max(s[k, j], np.inf if c.probability is None else c.probability)
    t_of_unit = np.repeat(np.arange(len(transcripts)), np.diff(marked.bounds)).astype(np.int64)
    return marked.units, t_of_unit, s, marked.issues


def label_table(
    transcripts: Sequence[Transcript],
    proposals: Sequence[Coding],
    human: Sequence[Coding],
    codes: Sequence[str],
    unit: UnitKind = "turn",
    min_overlap: int = 1,
) -> tuple[LabelTable, list[str]]:
    """The label table of the human-coded ``transcripts`` and the codings that could not be placed."""
    _, t_of_unit, s, issues = score_matrix(transcripts, proposals, codes, unit, min_overlap)
    marked = mark_units(transcripts, human, unit, min_overlap)
    col = {c: i for i, c in enumerate(codes)}
    y = np.zeros(s.shape, dtype=bool)
    for k, c in marked.hits:
        j = col.get(c.code_id)
        if j is not None:
            y[k, j] = True
    table = LabelTable(list(codes), [t.id for t in transcripts], t_of_unit, y, s)
    return table, [*issues, *marked.issues]
