"""The calibration maths: per-code thresholds chosen by cross-validation over transcripts, out-of-fold
agreement with bootstrap intervals, and verdicts. Pure numpy on label tables; it never imports the
model layer or reads a file.

A label table has one row per unit (turn by default) of the human-coded transcripts and one column per
code: ``y`` is the human's mark, ``s`` the machine's score, the highest probability of any proposal
(reported coding or candidate) of that code on that unit; ``-inf`` where nothing was proposed (no
threshold can add it) and ``+inf`` for a proposal without a probability (no threshold can remove it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from quallm.analysis.agreement._binary import pair_stats
from quallm.analysis.agreement.reconcile import Estimate, _draw_weights, _interval, _num, _per_transcript, _rng

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Verdict = Literal["reliable", "review", "unreliable", "insufficient"]

#: Folds above this many transcripts: k-fold instead of leave-one-transcript-out.
MAX_LOO_TRANSCRIPTS = 10


@dataclass
class LabelTable:
    """Units x codes: human marks ``y``, machine scores ``s``, the transcript of each unit."""

    codes: list[str]
    transcripts: list[str]
    t_of_unit: IntArray
    y: BoolArray
    s: FloatArray

    @property
    def n_t(self) -> int:
        """Number of transcripts."""
        return len(self.transcripts)


def predict(s: FloatArray, thresholds: FloatArray) -> BoolArray:
    """Machine marks at per-code ``thresholds`` (a proposal counts when its probability reaches it)."""
    return np.asarray(s >= thresholds[None, :], dtype=bool)


def _kappa(y: BoolArray, pred: BoolArray) -> float:
    n11 = float(np.sum(y & pred))
    n10 = float(np.sum(y & ~pred))
    n01 = float(np.sum(~y & pred))
    k = pair_stats(np.array(n11), np.array(n10), np.array(n01), np.array(float(y.size)))["kappa"]
    return float(k)


#: A code's threshold leaves the default only with this many human positives in the fitting data and a
#: kappa gain of at least MIN_GAIN there. Unregularised, per-code thresholds fitted on 2-4 transcripts
#: lowered held-out kappa on every set but the demo (synth-la -0.06, dev-la -0.04; README "Calibrate").
MIN_FIT_POSITIVES = 3
MIN_GAIN = 0.05


def fit_threshold(
    y: BoolArray, s: FloatArray, default: float, min_positives: int | None = None, min_gain: float | None = None
) -> float:
    """The threshold on one code's scores that maximises Cohen's kappa with ``y``.

    Kappa is a step function of the threshold, constant between consecutive proposal probabilities, so
    each interval is one candidate. Among equally good intervals the one nearest ``default`` wins, and
    within it ``default`` itself if it lies there, else the interval's midpoint (never a probability
    seen in training, which would make the choice hinge on that one unit). Without proposals with a
    probability, with fewer than ``min_positives`` human positives, where the best kappa beats the
    default's by less than ``min_gain``, or where kappa is undefined for every choice, ``default`` stands.
    """
    min_positives = MIN_FIT_POSITIVES if min_positives is None else min_positives
    min_gain = MIN_GAIN if min_gain is None else min_gain
    u = np.unique(s[np.isfinite(s)])
    if u.size == 0 or int(y.sum()) < max(1, min_positives):  # too little to learn from
        return default
    lows = np.concatenate([[0.0], u])  # interval k: thresholds in (lows[k], highs[k]] keep s >= highs[k]
    highs = np.concatenate([u, [1.0]])
    kappas = np.array([_kappa(y, s >= (u[k] if k < u.size else np.inf)) for k in range(u.size + 1)])
    if not np.isfinite(kappas).any():
        return default
    at_default = _kappa(y, s >= default)
    if np.isfinite(at_default) and np.nanmax(kappas) < at_default + min_gain:
        return default  # the gain would rest on a unit or two: keep the default
    best = np.flatnonzero(kappas >= np.nanmax(kappas) - 1e-12)
    lo, hi = lows[best], highs[best]
    inside = (lo < default) & (default <= hi)
    if inside.any():
        return default
    distance = np.minimum(np.abs(lo - default), np.abs(hi - default))
    k = int(np.argmin(distance))
    return float(round((lo[k] + hi[k]) / 2, 6))


def fit_thresholds(y: BoolArray, s: FloatArray, default: float) -> FloatArray:
    """:func:`fit_threshold` for every code (columns)."""
    return np.array([fit_threshold(y[:, c], s[:, c], default) for c in range(y.shape[1])], dtype=np.float64)


def folds(n_t: int, k: int | None = None) -> list[list[int]]:
    """Transcript folds: one per transcript up to :data:`MAX_LOO_TRANSCRIPTS`, else ``k`` (default 10),
    transcripts dealt out in order (deterministic, so the same sample gives the same folds)."""
    if n_t < 2:
        return []
    k = n_t if (k is None and n_t <= MAX_LOO_TRANSCRIPTS) else min(n_t, k or MAX_LOO_TRANSCRIPTS)
    return [list(range(i, n_t, k)) for i in range(k)]


def out_of_fold(table: LabelTable, default: float, k: int | None = None) -> tuple[BoolArray, FloatArray]:
    """Machine marks of every unit at thresholds chosen without its transcript, and those thresholds
    (folds x codes). With fewer than two transcripts there is nothing to hold out: ``default`` is used."""
    pred = np.zeros_like(table.y)
    fs = folds(table.n_t, k)
    chosen = np.full((max(len(fs), 1), len(table.codes)), default, dtype=np.float64)
    if not fs:
        return predict(table.s, chosen[0]), chosen
    for f, held in enumerate(fs):
        test = np.isin(table.t_of_unit, held)
        thr = fit_thresholds(table.y[~test], table.s[~test], default)
        chosen[f] = thr
        pred[test] = predict(table.s[test], thr)
    return pred, chosen


@dataclass
class Figures:
    """Kappa, precision and recall (human as reference) per code and pooled (micro), with CIs."""

    per_code: list[dict[str, Estimate]]
    pooled: dict[str, Estimate]


STATS = ("kappa", "precision", "recall")


def agreement_figures(
    table: LabelTable, pred: BoolArray, n_boot: int = 1000, seed: int = 0, level: float = 0.95, label: str = ""
) -> Figures:
    """Agreement of ``pred`` with the human marks, with percentile bootstrap intervals over transcripts.

    The resampling keeps the predictions fixed: it measures the spread over transcripts of agreement at
    the out-of-fold thresholds, not the spread of the threshold choice itself."""
    y = table.y
    sums = {
        "n11": _per_transcript(y & pred, table.t_of_unit, table.n_t),
        "n10": _per_transcript(y & ~pred, table.t_of_unit, table.n_t),
        "n01": _per_transcript(~y & pred, table.t_of_unit, table.n_t),
        "n": _per_transcript(np.ones_like(y), table.t_of_unit, table.n_t),
    }
    totals = {k: v.sum(axis=0) for k, v in sums.items()}
    point = pair_stats(**totals)
    micro = pair_stats(**{k: v.sum() for k, v in totals.items()})
    n_codes = y.shape[1]
    ci: dict[str, list[tuple[float | None, float | None]]] = {s: [(None, None)] * n_codes for s in STATS}
    ci_pooled: dict[str, tuple[float | None, float | None]] = dict.fromkeys(STATS, (None, None))
    if n_boot > 0 and table.n_t > 1:
        w = _draw_weights(_rng(seed, "calibration " + label), n_boot, table.n_t)
        boot_totals = {k: w @ v for k, v in sums.items()}
        boot = pair_stats(**boot_totals)
        boot_micro = pair_stats(**{k: v.sum(axis=1) for k, v in boot_totals.items()})
        for s in STATS:
            ci[s] = [_interval(boot[s][:, i], level) for i in range(n_codes)]
            ci_pooled[s] = _interval(boot_micro[s], level)
    return Figures(
        per_code=[
            {s: Estimate(value=_num(point[s][i]), ci_low=ci[s][i][0], ci_high=ci[s][i][1]) for s in STATS}
            for i in range(n_codes)
        ],
        pooled={s: Estimate(value=_num(micro[s]), ci_low=ci_pooled[s][0], ci_high=ci_pooled[s][1]) for s in STATS},
    )


def verdict(kappa: Estimate, positives: int, min_kappa: float = 0.6, min_positives: int = 3) -> Verdict:
    """``insufficient`` below ``min_positives`` human positives; else ``reliable`` when the CI's lower
    bound reaches ``min_kappa``, ``review`` when only the point estimate does, ``unreliable`` otherwise."""
    if positives < min_positives:
        return "insufficient"
    if kappa.value is None or kappa.value < min_kappa:
        return "unreliable"
    if kappa.ci_low is not None and kappa.ci_low >= min_kappa:
        return "reliable"
    return "review"


def interval_width(est: Estimate) -> float:
    """Width of an estimate's interval; 2 (kappa's whole range) where it has none."""
    if est.ci_low is None or est.ci_high is None:
        return 2.0
    return est.ci_high - est.ci_low


def suggest_weight(kappa: Estimate, verdict: Verdict, floor: float = 0.05) -> float:
    """How much a code needs more human coding: its kappa interval's width, the whole range (2) when it
    has too few positives to judge, and never below ``floor`` (so near-threshold units still count)."""
    return 2.0 if verdict == "insufficient" else max(interval_width(kappa), floor)


def near_threshold(s: FloatArray, thresholds: FloatArray, scale: float = 0.15) -> FloatArray:
    """Per code, how many proposals lie near its threshold, counted with a triangular kernel (1 at the
    threshold, 0 at ``scale`` away): the units whose human coding would move the threshold's figures."""
    with np.errstate(invalid="ignore"):
        d = np.abs(s - thresholds[None, :])
    return np.asarray(np.where(np.isfinite(d), np.clip(1.0 - d / scale, 0.0, None), 0.0).sum(axis=0))


def greedy_picks(near: dict[str, FloatArray], weights: FloatArray, n: int) -> list[tuple[str, float, list[int]]]:
    """``n`` keys of ``near`` by greatest ``near * weights``; after each pick the codes it informs weigh
    less (divided by 1 + its count), so the picks spread over the weak codes. Each pick comes with its
    score and the codes it informs, most first."""
    pool = dict(near)
    w = np.asarray(weights, dtype=np.float64).copy()
    out: list[tuple[str, float, list[int]]] = []
    while pool and len(out) < n:
        key = max(sorted(pool), key=lambda k: float((pool[k] * w).sum()))
        gain = pool[key] * w
        out.append((key, round(float(gain.sum()), 4), [int(j) for j in np.argsort(-gain) if gain[j] > 0]))
        w = w / (1.0 + pool.pop(key))
    return out
