"""Vectorised binary (presence/absence) coefficients from additive counts.

Every coefficient reconcile reports is a function of sums over units, so sums per transcript can be
bootstrapped by re-weighting transcripts (a matrix product) instead of re-running anything. The
functions broadcast over any array shape and return NaN where a coefficient is undefined; the caller
turns NaN into ``None``. They agree with :mod:`quallm.analysis.agreement.metrics` (tested).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

PAIR_STATS = ("percent", "kappa", "alpha", "ac1", "precision", "recall", "f1")
GROUP_STATS = ("percent", "fleiss_kappa", "alpha", "ac1")


def _div(num: FloatArray, den: FloatArray, ok: npt.NDArray[np.bool_]) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def pair_stats(n11: FloatArray, n10: FloatArray, n01: FloatArray, n: FloatArray) -> dict[str, FloatArray]:
    """Two coders, ``a`` the reference: ``n11`` both marked, ``n10`` only a, ``n01`` only b, ``n`` units."""
    n00 = n - n11 - n10 - n01
    a1, b1 = n11 + n10, n11 + n01
    agree = n11 + n00
    has = n > 0
    percent = _div(agree, n, has)
    # Cohen: (n*agree - chance) / (n^2 - chance), all integers, so "no expected disagreement" is exact.
    chance = a1 * b1 + (n - a1) * (n - b1)
    kappa = _div(n * agree - chance, n * n - chance, n * n - chance > 0)
    # Krippendorff (2 coders, no missing in pairable units): o_01 = discordant units, n_c from o.
    d = n10 + n01
    v1, v0 = 2 * n11 + d, 2 * n00 + d
    alpha = 1.0 - _div((2 * n - 1) * d, v0 * v1, v0 * v1 > 0)
    # Gwet AC1 with q = 2: pe = 2 pi (1 - pi), pi = mean share of "present" over both coders.
    pi = _div(a1 + b1, 2 * n, has)
    pe = 2 * pi * (1 - pi)
    ac1 = _div(percent - pe, 1 - pe, has)
    return {
        "percent": percent,
        "kappa": kappa,
        "alpha": alpha,
        "ac1": ac1,
        "precision": _div(n11, b1, b1 > 0),
        "recall": _div(n11, a1, a1 > 0),
        "f1": _div(2 * n11, a1 + b1, a1 + b1 > 0),
    }


def group_stats(
    n: FloatArray,
    n_rated: FloatArray,
    pu: FloatArray,
    share1: FloatArray,
    share0: FloatArray,
    o01: FloatArray,
    v1: FloatArray,
    v0: FloatArray,
) -> dict[str, FloatArray]:
    """Several coders over ``n`` pairable units. Per unit with ``m`` values of which ``k`` "present":
    ``pu`` sums the share of agreeing pairs over pairable units, ``o01`` sums k(m-k)/(m-1) (the
    coincidence of present with absent), ``v1``/``v0`` sum k and m-k over pairable units.
    ``share1``/``share0`` sum k/m and (m-k)/m over the ``n_rated`` units with at least one value: the
    chance terms of Fleiss' kappa and AC1 average over every rated unit, as Gwet's irrCAC does
    (``chance_from="rated"`` in :mod:`quallm.analysis.agreement.metrics`)."""
    has = n > 0
    percent = _div(pu, n, has)
    rated = n_rated > 0
    pi1, pi0 = _div(share1, n_rated, rated), _div(share0, n_rated, rated)
    pe_k = pi1 * pi1 + pi0 * pi0
    fleiss = _div(percent - pe_k, 1 - pe_k, (share1 > 0) & (share0 > 0))
    pe_g = 2 * pi1 * pi0
    ac1 = _div(percent - pe_g, 1 - pe_g, has)
    alpha = 1.0 - _div((v0 + v1 - 1) * o01, v0 * v1, v0 * v1 > 0)
    return {"percent": percent, "fleiss_kappa": fleiss, "alpha": alpha, "ac1": ac1}
