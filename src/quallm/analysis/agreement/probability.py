"""How well the machine's probabilities are calibrated against a human coder: Brier score, expected
calibration error (ECE) and the reliability diagram's bins.

Each machine proposal with a probability (a reported coding or a candidate below the threshold) is
one forecast "this code applies to this unit"; its outcome is whether the human marked that unit with
that code. Pure numpy: no model, no run directory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

N_BINS = 10


class ReliabilityBin(BaseModel):
    """One bin of the reliability diagram: probabilities in ``[low, high)`` (the last bin includes 1)."""

    model_config = ConfigDict(frozen=True)

    low: float
    high: float
    n: int
    mean_probability: float | None
    observed: float | None  # share of the bin's proposals the human coded too


class ProbabilityCalibration(BaseModel):
    """Calibration of the machine's probabilities against one human coder (or all pooled)."""

    model_config = ConfigDict(frozen=True)

    coder: str
    n: int
    positives: int
    brier: float | None
    ece: float | None
    bins: tuple[ReliabilityBin, ...] = ()
    note: str = ""


def brier_score(p: Sequence[float] | np.ndarray, y: Sequence[bool] | np.ndarray) -> float | None:
    """Mean squared difference between probability and outcome (0 is perfect); None with no forecasts."""
    pa, ya = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.mean((pa - ya) ** 2)) if pa.size else None


def reliability_bins(
    p: Sequence[float] | np.ndarray, y: Sequence[bool] | np.ndarray, n_bins: int = N_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1] with the count, mean probability and observed share of each."""
    pa, ya = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    idx = np.minimum((pa * n_bins).astype(np.int64), n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        out.append(
            ReliabilityBin(
                low=b / n_bins,
                high=(b + 1) / n_bins,
                n=n,
                mean_probability=float(pa[sel].mean()) if n else None,
                observed=float(ya[sel].mean()) if n else None,
            )
        )
    return out


def expected_calibration_error(
    p: Sequence[float] | np.ndarray, y: Sequence[bool] | np.ndarray, n_bins: int = N_BINS
) -> float | None:
    """Sum over equal-width bins of (share of forecasts) x |mean probability - observed share|."""
    bins = reliability_bins(p, y, n_bins)
    total = sum(b.n for b in bins)
    if not total:
        return None
    return float(
        sum(b.n / total * abs((b.mean_probability or 0.0) - (b.observed or 0.0)) for b in bins if b.n)
    )


def probability_calibration(
    coder: str, p: Sequence[float] | np.ndarray, y: Sequence[bool] | np.ndarray, n_bins: int = N_BINS
) -> ProbabilityCalibration:
    """Brier score, ECE and reliability bins of forecasts ``p`` with outcomes ``y``."""
    pa = np.asarray(p, dtype=np.float64)
    note = "" if pa.size else "no machine coding carries a probability (the backend gave none)"
    return ProbabilityCalibration(
        coder=coder,
        n=int(pa.size),
        positives=int(np.asarray(y, dtype=bool).sum()),
        brier=brier_score(pa, y),
        ece=expected_calibration_error(pa, y, n_bins),
        bins=tuple(reliability_bins(pa, y, n_bins)) if pa.size else (),
        note=note,
    )
