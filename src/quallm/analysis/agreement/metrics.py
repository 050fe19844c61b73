"""Agreement coefficients over a units x coders table of category labels.

A *table* is a sequence of units (rows); each row holds one label per coder (columns), ``None``
(or a float NaN) where that coder gave no value. Labels can be any hashable value.

Every coefficient returns ``float | None``: ``None`` where the coefficient is undefined (no pairable
units, zero expected disagreement), never NaN, and never raises on degenerate data. Conventions for
the degenerate cases, chosen so that a report never shows a misleading number:

* perfect agreement on a single category: percent agreement is ``1.0``; Cohen's kappa, Fleiss'
  kappa and Krippendorff's alpha are ``None`` (chance agreement is 1, so 0/0); Gwet's AC1 is
  ``1.0`` (its chance term is 0 when only one category exists);
* no unit rated by two coders (or an empty table, or all ``None``): every coefficient is ``None``.

Malformed input (ragged rows, unknown options, labels outside ``categories``, non-numeric labels at
the interval/ratio level) raises :class:`AgreementInputError` or :class:`~quallm.core.errors.ConfigError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from quallm.core.errors import ConfigError, QuallmError

Label = Hashable | None
Table = Sequence[Sequence[Label]]
Weights = Literal["linear", "quadratic"]
Level = Literal["nominal", "ordinal", "interval", "ratio"]
ChanceFrom = Literal["pairable", "rated"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class AgreementInputError(QuallmError, ValueError):
    """Data handed to an agreement function has the wrong shape or content."""


class PrecisionRecall(BaseModel):
    """Precision, recall and F1 of ``predicted`` against ``reference`` on binary presence."""

    model_config = ConfigDict(frozen=True)

    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    # NaN is how pandas and numpy spell "no value"; treat it like None.
    return isinstance(value, float | np.floating) and math.isnan(float(value))


def _ordered(labels: list[Hashable]) -> list[Hashable]:
    """Sorted labels when they sort (stable, reproducible), else in order of first appearance."""
    try:
        return sorted(labels)  # type: ignore[type-var]
    except TypeError:
        return labels


def _encode(
    table: Table, categories: Sequence[Hashable] | None = None, n_coders: int | None = None
) -> tuple[IntArray, list[Hashable]]:
    """Codes of each label (units x coders, -1 where missing) and the category list they index."""
    rows: list[Sequence[Label]] = []
    width: int | None = n_coders
    for i, row in enumerate(table):
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise AgreementInputError(f"unit {i}: a row must be a sequence of labels, one per coder")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise AgreementInputError(f"unit {i}: has {len(row)} labels, expected {width} (one per coder)")
        rows.append(row)
    width = width or 0
    seen: dict[Hashable, int] = {}
    try:
        for row in rows:
            for v in row:
                if not _is_missing(v) and v not in seen:
                    seen[v] = len(seen)
    except TypeError as exc:  # unhashable label
        raise AgreementInputError(f"labels must be hashable: {exc}") from exc
    if categories is not None:
        cats = list(categories)
        unknown = [v for v in seen if v not in set(cats)]
        if unknown:
            raise AgreementInputError(f"labels not in categories: {unknown[:5]!r}")
    else:
        cats = _ordered(list(seen))
    index = {c: k for k, c in enumerate(cats)}
    codes = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if not _is_missing(v):
                codes[i, j] = index[v]
    return codes, cats


def _counts(codes: IntArray, n_categories: int) -> IntArray:
    """Units x categories: how many coders put each unit in each category."""
    counts = np.zeros((codes.shape[0], max(n_categories, 1)), dtype=np.int64)
    rows, cols = np.nonzero(codes >= 0)
    np.add.at(counts, (rows, codes[rows, cols]), 1)
    return counts


def _observed_agreement(counts: IntArray) -> tuple[float | None, npt.NDArray[np.bool_]]:
    """Mean over pairable units of the share of agreeing coder pairs (Fleiss' P-bar)."""
    r = counts.sum(axis=1)
    pairable = r >= 2
    if not pairable.any():
        return None, pairable
    c = counts[pairable].astype(np.float64)
    m = r[pairable].astype(np.float64)
    p_u = (c * (c - 1)).sum(axis=1) / (m * (m - 1))
    return float(p_u.mean()), pairable


def _category_shares(counts: IntArray, pairable: npt.NDArray[np.bool_], chance_from: ChanceFrom) -> FloatArray:
    """Mean over units of each category's share of the unit's ratings (Gwet 2014, eq. for pi_k)."""
    if chance_from not in ("pairable", "rated"):
        raise ConfigError(f"chance_from must be 'pairable' or 'rated', not {chance_from!r}")
    r = counts.sum(axis=1)
    use = pairable if chance_from == "pairable" else r >= 1
    return (counts[use] / r[use, None]).mean(axis=0)


def percent_agreement(table: Table) -> float | None:
    """Observed agreement: mean over units rated by at least two coders of the share of coder pairs
    that agree on the unit. With two coders this is the share of jointly rated units on which they
    agree. ``None`` when no unit has two ratings."""
    codes, cats = _encode(table)
    value, _ = _observed_agreement(_counts(codes, len(cats)))
    return value


def cohen_kappa(
    table: Table, weights: Weights | None = None, categories: Sequence[Hashable] | None = None
) -> float | None:
    """Cohen's kappa for exactly two coders (columns), on the units both rated.

    ``weights`` gives weighted kappa (Cohen 1968) with disagreement weights ``|i - j|`` ("linear")
    or ``(i - j)**2`` ("quadratic") over category *positions*: the order of ``categories`` if
    given (unused categories then keep their place), else the sorted observed labels. ``None`` when
    no unit was rated by both or expected disagreement is zero (e.g. both used one category only).
    """
    if weights not in (None, "linear", "quadratic"):
        raise ConfigError(f"weights must be None, 'linear' or 'quadratic', not {weights!r}")
    codes, cats = _encode(table, categories)
    if codes.shape[0] == 0:
        return None
    if codes.shape[1] != 2:
        raise AgreementInputError(f"Cohen's kappa needs exactly 2 coders, got {codes.shape[1]}")
    both = (codes >= 0).all(axis=1)
    a, b = codes[both, 0], codes[both, 1]
    n = int(a.size)
    if n == 0:
        return None
    k = len(cats)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (a, b), 1)
    pos = np.arange(k)
    diff = np.abs(pos[:, None] - pos[None, :])
    # Disagreement weights; their scale cancels in the ratio so no 1/(k-1) normalisation is needed.
    v = (diff > 0).astype(np.int64) if weights is None else diff if weights == "linear" else diff**2
    # Integer arithmetic: observed/expected disagreement are exact, so "zero" is really zero.
    observed = n * int((v * confusion).sum())
    expected = int((v * np.outer(confusion.sum(axis=1), confusion.sum(axis=0))).sum())
    if expected == 0:
        return None
    return 1.0 - observed / expected


def fleiss_kappa(table: Table, chance_from: ChanceFrom = "rated") -> float | None:
    """Fleiss' kappa (Fleiss 1971) for any number of coders, meant for more than two.

    Units with fewer than two ratings are left out. With a varying number of ratings per unit it
    follows the generalisation in Gwet's Handbook (2014): observed agreement is the mean over
    pairable units of the share of agreeing rating pairs, and each category's chance probability is
    the mean over units of its share of the unit's ratings. ``chance_from="rated"`` (default) takes
    that mean over every unit with at least one rating, as Gwet's irrCAC (``fleiss.kappa.raw``) does;
    ``"pairable"`` over pairable units only. With a constant number of ratings both equal Fleiss'
    original formula. ``None`` when no unit is pairable or only one category was ever used.
    """
    codes, cats = _encode(table)
    counts = _counts(codes, len(cats))
    pa, pairable = _observed_agreement(counts)
    if pa is None:
        return None
    pi = _category_shares(counts, pairable, chance_from)
    if int((pi > 0).sum()) < 2:  # one category only: chance agreement is 1, kappa is 0/0
        return None
    pe = float((pi**2).sum())
    return (pa - pe) / (1.0 - pe)


def gwet_ac1(
    table: Table, categories: Sequence[Hashable] | None = None, chance_from: ChanceFrom = "rated"
) -> float | None:
    """Gwet's AC1 (Gwet 2008), multi-rater form, for any number of coders with missing values.

    ``pa`` is as in :func:`fleiss_kappa`; chance agreement is ``sum_k pi_k (1 - pi_k) / (q - 1)``
    with ``q`` the number of categories (``len(categories)`` if given, else the number observed) and
    ``pi_k`` taken as ``chance_from`` says (see :func:`fleiss_kappa`; the default ``"rated"`` is
    Gwet's own, ``gwet.ac1.raw`` in irrCAC).
    When only one category exists (``q == 1``) chance agreement is taken as 0, so perfect agreement
    on one category gives ``1.0``. ``None`` only when no unit is pairable.
    """
    codes, cats = _encode(table, categories)
    counts = _counts(codes, len(cats))
    pa, pairable = _observed_agreement(counts)
    if pa is None:
        return None
    q = len(cats)
    if q < 2:
        return pa
    pi = _category_shares(counts, pairable, chance_from)
    pe = float((pi * (1.0 - pi)).sum()) / (q - 1)
    return (pa - pe) / (1.0 - pe)  # pe <= 1/q <= 0.5, never 0/0


def _delta2(level: Level, values: Sequence[Hashable], n_c: FloatArray) -> FloatArray:
    """Squared distance between categories for Krippendorff's alpha at ``level``."""
    k = len(values)
    if level == "nominal":
        return 1.0 - np.eye(k)
    if level == "ordinal":
        # Krippendorff (2011): (sum of n_g from c to k, minus half of n_c and n_k) squared.
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo = np.minimum.outer(np.arange(k), np.arange(k))
        hi = np.maximum.outer(np.arange(k), np.arange(k))
        between = cum[hi + 1] - cum[lo] - (n_c[lo] + n_c[hi]) / 2.0
        return between**2
    nums: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise AgreementInputError(f"{level} alpha needs numeric labels, got {v!r}")
        nums.append(float(v))
    x = np.asarray(nums, dtype=np.float64)
    diff = x[:, None] - x[None, :]
    if level == "interval":
        return diff**2
    total = x[:, None] + x[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(total == 0, 0.0, diff / np.where(total == 0, 1.0, total))
    return ratio**2


def krippendorff_alpha(
    table: Table, level: Level = "nominal", categories: Sequence[Hashable] | None = None
) -> float | None:
    """Krippendorff's alpha (coincidence-matrix form, Krippendorff 2011) for any number of coders.

    Units with fewer than two values are not pairable and are ignored. ``level`` picks the distance:
    nominal, ordinal (order of ``categories`` if given, else sorted labels), interval or ratio
    (numeric labels). ``None`` when no unit is pairable or expected disagreement is zero.
    """
    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise ConfigError(f"level must be nominal, ordinal, interval or ratio, not {level!r}")
    codes, cats = _encode(table, categories)
    counts = _counts(codes, len(cats)).astype(np.float64)
    m = counts.sum(axis=1)
    pairable = m >= 2
    if not pairable.any():
        return None
    c, mu = counts[pairable], m[pairable]
    # o_ck = sum_u (number of c-k value pairs in u) / (m_u - 1); pairs of a value with itself excluded.
    weighted = c / (mu - 1)[:, None]
    coincidence = weighted.T @ c - np.diag(weighted.sum(axis=0))
    n_c = coincidence.sum(axis=1)
    n = float(n_c.sum())
    d2 = _delta2(level, cats, n_c)
    d_o = float((coincidence * d2).sum())
    d_e = float((np.outer(n_c, n_c) * d2).sum()) / (n - 1.0)
    if d_e <= 0.0:
        return None
    return 1.0 - d_o / d_e


def precision_recall_f1(
    reference: Sequence[bool | None], predicted: Sequence[bool | None]
) -> PrecisionRecall:
    """Precision, recall and F1 of ``predicted`` against ``reference`` on binary presence.

    Positions where either side is ``None`` are skipped. A figure is ``None`` when its denominator is
    zero (e.g. precision when nothing was predicted; F1 when neither side marked anything).
    """
    if len(reference) != len(predicted):
        raise AgreementInputError(f"reference has {len(reference)} values, predicted {len(predicted)}")
    tp = fp = fn = tn = 0
    for r, p in zip(reference, predicted, strict=True):
        if _is_missing(r) or _is_missing(p):
            continue
        if r and p:
            tp += 1
        elif p:
            fp += 1
        elif r:
            fn += 1
        else:
            tn += 1
    return PrecisionRecall(
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / (tp + fn) if tp + fn else None,
        f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
    )
