"""Reconcile the codings of several coders: agreement per code and pooled, with bootstrap CIs.

Every statistic is computed on binary presence/absence of one code in one unit. For each pair of
coders: percent agreement, Cohen's kappa, Krippendorff's alpha (nominal), Gwet's AC1, and
precision/recall/F1 of one coder against the other taken as reference; across all coders (when
there are more than two): percent agreement, Fleiss' kappa, Krippendorff's alpha and Gwet's AC1.

The work is vectorised: units x coders x codes presence is one boolean array, per-transcript sums
are bincounts, and a bootstrap replicate is a re-weighting of transcripts (one matrix product).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from quallm.analysis.agreement._binary import GROUP_STATS, PAIR_STATS, group_stats, pair_stats
from quallm.analysis.agreement.probability import ProbabilityCalibration
from quallm.analysis.agreement.units import MarkedUnits, UnitKind, mark_units
from quallm.core.codings import Coding
from quallm.core.errors import ConfigError
from quallm.core.transcript import Transcript

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
PairKind = Literal[
    "human-human", "machine-human", "machine-machine", "reviewed-human", "reviewed-machine", "reviewed-reviewed"
]

POOLED_MICRO = "(micro)"
POOLED_MACRO = "(macro)"
MACHINE_PREFIX = "quallm"
# A reviewed machine coding (quallm.outputs.review): anchored on the machine's proposals, never an independent human.
REVIEWED_PREFIX = "quallm reviewed by "
REVIEWED_KIND = "reviewed machine coding"


class Estimate(BaseModel):
    """A statistic and its bootstrap confidence interval; ``None`` where undefined or not computed."""

    model_config = ConfigDict(frozen=True)

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None


class PairCodeStats(BaseModel):
    """Agreement of a pair of coders on one code (or pooled over codes). ``coder_a`` is the reference
    for precision/recall: precision is the share of b's marks that a also made."""

    model_config = ConfigDict(frozen=True)

    code: str
    n_units: int
    marked_a: int | None
    marked_b: int | None
    percent: Estimate
    kappa: Estimate
    alpha: Estimate
    ac1: Estimate
    precision: Estimate
    recall: Estimate
    f1: Estimate


class PairReport(BaseModel):
    """All statistics of one pair of coders."""

    model_config = ConfigDict(frozen=True)

    pair: str
    coder_a: str
    coder_b: str
    kind: PairKind
    n_transcripts: int
    n_units: int
    codes: list[PairCodeStats]
    micro: PairCodeStats
    macro: PairCodeStats


class GroupCodeStats(BaseModel):
    """Agreement of all coders on one code (or pooled over codes)."""

    model_config = ConfigDict(frozen=True)

    code: str
    n_units: int
    percent: Estimate
    fleiss_kappa: Estimate
    alpha: Estimate
    ac1: Estimate


class GroupReport(BaseModel):
    """Statistics across all coders (reported when there are more than two)."""

    model_config = ConfigDict(frozen=True)

    coders: list[str]
    n_transcripts: int
    n_units: int
    codes: list[GroupCodeStats]
    micro: GroupCodeStats
    macro: GroupCodeStats


class Disagreement(BaseModel):
    """One unit and code on which the coders who coded the unit's transcript did not all agree."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    unit_id: str
    turn_index: int | None
    start: int
    end: int
    unit_text: str
    code_id: str
    votes: dict[str, bool | None]  # coder -> marked?; None where the coder did not code the transcript
    machine_coder: str | None = None
    machine_quote: str | None = None
    machine_rationale: str | None = None
    machine_confidence: float | None = None


class AgreementReport(BaseModel):
    """Everything :func:`reconcile` found; JSON-serialisable (``model_dump_json``)."""

    model_config = ConfigDict(frozen=True)

    unit: UnitKind
    min_overlap: int
    n_boot: int
    seed: int
    confidence_level: float
    coders: list[str]
    machine_coders: list[str]
    reference: str | None
    reviewed_coders: list[str] = []
    codes: list[str]
    n_transcripts: int
    n_units: int
    pairs: list[PairReport]
    group: GroupReport | None
    disagreements: list[Disagreement]
    issues: list[str]
    notes: list[str]
    # How well the machine's probabilities forecast each human coder's marks (quallm.analysis.reconciling fills it:
    # it needs the candidates below the threshold, which only a run directory has).
    probability_calibration: list[ProbabilityCalibration] = []


def is_reviewed_coder(coder: str, reviewed_coders: Collection[str] = ()) -> bool:
    """A coder is a reviewed machine coding when its name starts with ``quallm reviewed by`` or it is listed."""
    return coder.startswith(REVIEWED_PREFIX) or coder in reviewed_coders


def is_machine_coder(coder: str, machine_coders: Collection[str] = ()) -> bool:
    """A coder is a machine when its name starts with ``quallm`` or it is listed in ``machine_coders``
    (a reviewed machine coding is neither machine nor human: see :func:`is_reviewed_coder`)."""
    return (coder.startswith(MACHINE_PREFIX) or coder in machine_coders) and not is_reviewed_coder(coder)


@dataclass
class _Prepared:
    transcripts: list[Transcript]
    coders: list[str]
    machine: set[str]
    reviewed: set[str]
    codes: list[str]
    marked: MarkedUnits
    t_of_unit: npt.NDArray[np.int64]
    has: BoolArray  # units x coders: the coder coded the unit's transcript
    x: BoolArray  # units x coders x codes: the coder marked the unit with the code
    issues: list[str]


def _prepare(
    transcripts: Sequence[Transcript],
    codings: Sequence[Coding],
    codebook_codes: Sequence[str] | None,
    unit: UnitKind,
    coders: Sequence[str] | None,
    min_overlap: int,
    machine_coders: Collection[str],
    speakers: frozenset[str] | None,
    coverage: Mapping[str, Collection[str]] | None,
    reviewed_coders: Collection[str] = (),
) -> _Prepared:
    issues: list[str] = []
    transcripts = list(transcripts)
    known_ids = {t.id for t in transcripts}
    if coders is None:
        found = {c.coder for c in codings}
        # A reviewer who rejected every proposal still coded their transcripts: "nothing applies".
        found |= {name for name in coverage or {} if is_reviewed_coder(name, reviewed_coders)}
        # Humans first, so that each machine-human pair lists the human (the reference) first; then
        # reviewed machine codings, then machines.
        rev = {c for c in found if is_reviewed_coder(c, reviewed_coders)}
        mach = {c for c in found - rev if is_machine_coder(c, machine_coders)}
        coder_list = sorted(found - rev - mach) + sorted(rev) + sorted(mach)
    else:
        coder_list = list(dict.fromkeys(coders))
    if len(coder_list) < 2:
        raise ConfigError(f"agreement needs at least two coders; found {coder_list or 'none'}")
    reviewed = {c for c in coder_list if is_reviewed_coder(c, reviewed_coders)}
    machine = {c for c in coder_list if c not in reviewed and is_machine_coder(c, machine_coders)}
    wanted = set(coder_list)
    if codebook_codes is None:
        codes = sorted({c.code_id for c in codings if c.coder in wanted})
    else:
        codes = list(dict.fromkeys(codebook_codes))
    code_index = {c: k for k, c in enumerate(codes)}

    # Which transcripts each coder coded: given, or every transcript where it applied any code.
    cover: dict[str, set[str]] = {c: set() for c in coder_list}
    for c in codings:
        if c.coder in wanted and (coverage is None or c.coder not in coverage):
            cover[c.coder].add(c.transcript_id)
    if coverage is not None:
        for name, ids in coverage.items():
            if name in cover:
                cover[name] = set(ids)
    for name in coder_list:
        if not cover[name] & known_ids:
            issues.append(f"coder {name} coded none of the transcripts; all its comparisons are undefined")

    kept: list[Coding] = []
    bad_code: dict[str, int] = {}
    outside: dict[str, int] = {}
    for c in codings:
        if c.coder not in wanted:
            continue
        if c.code_id not in code_index:
            bad_code[c.code_id] = bad_code.get(c.code_id, 0) + 1
        elif c.transcript_id not in cover[c.coder]:
            outside[c.coder] = outside.get(c.coder, 0) + 1
        else:
            kept.append(c)
    issues += [f"{n} coding(s) use code {code!r}, which is not in the codebook; ignored"
               for code, n in sorted(bad_code.items())]
    issues += [f"{n} coding(s) by {name} are on transcripts outside its coverage; ignored"
               for name, n in sorted(outside.items())]

    marked = mark_units(transcripts, kept, unit, min_overlap, speakers)
    issues += marked.issues
    n_units = len(marked.units)
    t_of_unit = np.repeat(np.arange(len(transcripts), dtype=np.int64), np.diff(np.asarray(marked.bounds)))
    tid_of = np.asarray([t.id for t in transcripts], dtype=object)
    has = np.zeros((n_units, len(coder_list)), dtype=bool)
    for j, name in enumerate(coder_list):
        covered = np.fromiter((t in cover[name] for t in tid_of), dtype=bool, count=len(transcripts))
        has[:, j] = covered[t_of_unit]
    x = np.zeros((n_units, len(coder_list), len(codes)), dtype=bool)
    if marked.hits:
        coder_index = {c: j for j, c in enumerate(coder_list)}
        u = np.fromiter((h[0] for h in marked.hits), dtype=np.int64, count=len(marked.hits))
        cj = np.fromiter((coder_index[h[1].coder] for h in marked.hits), dtype=np.int64, count=len(u))
        ck = np.fromiter((code_index[h[1].code_id] for h in marked.hits), dtype=np.int64, count=len(u))
        x[u, cj, ck] = True
    return _Prepared(transcripts, coder_list, machine, reviewed, codes, marked, t_of_unit, has, x, issues)


def _per_transcript(values: npt.NDArray[np.generic], t_of_unit: npt.NDArray[np.int64], n_t: int) -> FloatArray:
    """Sum ``values`` (units x codes) over the units of each transcript -> transcripts x codes.

    bincount sums non-negative terms, so a sum is exactly 0 only when every term is (needed for the
    exact "undefined" tests in :mod:`._binary`)."""
    n_codes = values.shape[1]
    idx = (t_of_unit[:, None] * n_codes + np.arange(n_codes)).ravel()
    flat = np.bincount(idx, weights=values.ravel().astype(np.float64), minlength=n_t * n_codes)
    return np.asarray(flat, dtype=np.float64).reshape(n_t, n_codes)


def _mean_defined(values: FloatArray, axis: int) -> FloatArray:
    ok = np.isfinite(values)
    count = ok.sum(axis=axis)
    total = np.where(ok, values, 0.0).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _num(value: float | np.floating | FloatArray) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None


def _interval(samples: FloatArray, level: float) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval over the replicates where the statistic is defined."""
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return None, None
    lo, hi = np.percentile(ok, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(lo), float(hi)


def _draw_weights(rng: np.random.Generator, n_boot: int, n: int) -> FloatArray:
    """Replicate x transcript multiplicities of ``n_boot`` resamples of ``n`` transcripts with replacement."""
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = (draws + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


@dataclass
class _Analysis:
    per_code: list[dict[str, Estimate]]
    micro: dict[str, Estimate]
    macro: dict[str, Estimate]


def _analyse(
    sums: dict[str, FloatArray],
    fn: Callable[..., dict[str, FloatArray]],
    names: Sequence[str],
    n_boot: int,
    rng: np.random.Generator,
    level: float,
) -> _Analysis:
    """Point estimates per code, micro (sums pooled over codes) and macro (mean over codes), with CIs.

    ``sums`` holds transcripts x codes arrays of additive quantities for the transcripts that count."""
    n_t, n_codes = next(iter(sums.values())).shape
    totals = {k: v.sum(axis=0) for k, v in sums.items()}
    point = fn(**totals)
    micro = fn(**{k: v.sum() for k, v in totals.items()})
    macro = {s: _mean_defined(point[s], axis=-1) for s in names}
    ci: dict[str, list[tuple[float | None, float | None]]] = {s: [(None, None)] * n_codes for s in names}
    ci_micro: dict[str, tuple[float | None, float | None]] = dict.fromkeys(names, (None, None))
    ci_macro = dict(ci_micro)
    if n_boot > 0 and n_t > 0:
        w = _draw_weights(rng, n_boot, n_t)
        boot_totals = {k: w @ v for k, v in sums.items()}  # replicates x codes
        boot = fn(**boot_totals)
        boot_micro = fn(**{k: v.sum(axis=1) for k, v in boot_totals.items()})
        for s in names:
            ci[s] = [_interval(boot[s][:, i], level) for i in range(n_codes)]
            ci_micro[s] = _interval(boot_micro[s], level)
            ci_macro[s] = _interval(_mean_defined(boot[s], axis=1), level)
    return _Analysis(
        per_code=[
            {s: Estimate(value=_num(point[s][i]), ci_low=ci[s][i][0], ci_high=ci[s][i][1]) for s in names}
            for i in range(n_codes)
        ],
        micro={s: Estimate(value=_num(micro[s]), ci_low=ci_micro[s][0], ci_high=ci_micro[s][1]) for s in names},
        macro={s: Estimate(value=_num(macro[s]), ci_low=ci_macro[s][0], ci_high=ci_macro[s][1]) for s in names},
    )


def _rng(seed: int, label: str) -> np.random.Generator:
    # One stream per comparison, keyed by its label: a pair's CIs do not change when coders are added.
    return np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])


def _pair_kind(a: str, b: str, machine: Collection[str], reviewed: Collection[str] = ()) -> PairKind:
    r = (a in reviewed) + (b in reviewed)
    if r:
        other = b if a in reviewed else a
        return "reviewed-reviewed" if r == 2 else "reviewed-machine" if other in machine else "reviewed-human"
    n = (a in machine) + (b in machine)
    return "human-human" if n == 0 else "machine-human" if n == 1 else "machine-machine"


def _rank(c: str, machine: Collection[str], reviewed: Collection[str]) -> int:
    return 2 if c in machine else 1 if c in reviewed else 0


def _orient(
    a: str, b: str, machine: Collection[str], reference: str | None, reviewed: Collection[str] = ()
) -> tuple[str, str]:
    """(reference, other): the named reference, else the more independent coder (human, then reviewed
    machine coding, then machine), else as listed."""
    if b == reference or (reference not in (a, b) and _rank(a, machine, reviewed) > _rank(b, machine, reviewed)):
        return b, a
    return a, b


def _pair_report(p: _Prepared, ia: int, ib: int, kind: PairKind, n_boot: int, seed: int,
                 level: float) -> PairReport:
    a, b = p.coders[ia], p.coders[ib]
    label = f"{a} vs {b}"
    n_t = len(p.transcripts)
    valid = p.has[:, ia] & p.has[:, ib]
    xa = p.x[:, ia, :] & valid[:, None]
    xb = p.x[:, ib, :] & valid[:, None]
    n_codes = len(p.codes)
    n_per_t = np.asarray(np.bincount(p.t_of_unit, weights=valid.astype(np.float64), minlength=n_t),
                         dtype=np.float64)
    sums: dict[str, FloatArray] = {
        "n11": _per_transcript(xa & xb, p.t_of_unit, n_t),
        "n10": _per_transcript(xa & ~xb, p.t_of_unit, n_t),
        "n01": _per_transcript(~xa & xb, p.t_of_unit, n_t),
        "n": np.repeat(n_per_t[:, None], n_codes, axis=1),
    }
    clusters = n_per_t > 0  # resample only transcripts both coders coded
    sums = {k: v[clusters] for k, v in sums.items()}
    res = _analyse(sums, pair_stats, PAIR_STATS, n_boot, _rng(seed, label), level)
    n_units = int(valid.sum())
    marked_a = xa.sum(axis=0)
    marked_b = xb.sum(axis=0)

    def row(code: str, est: dict[str, Estimate], ma: int | None, mb: int | None) -> PairCodeStats:
        return PairCodeStats(code=code, n_units=n_units, marked_a=ma, marked_b=mb, **est)

    return PairReport(
        pair=label,
        coder_a=a,
        coder_b=b,
        kind=kind,
        n_transcripts=int(clusters.sum()),
        n_units=n_units,
        codes=[row(c, res.per_code[i], int(marked_a[i]), int(marked_b[i])) for i, c in enumerate(p.codes)],
        micro=row(POOLED_MICRO, res.micro, int(marked_a.sum()), int(marked_b.sum())),
        macro=row(POOLED_MACRO, res.macro, None, None),
    )


def _group_report(p: _Prepared, n_boot: int, seed: int, level: float) -> GroupReport:
    n_t = len(p.transcripts)
    m = p.has.sum(axis=1).astype(np.float64)[:, None]  # values per unit
    k = (p.x & p.has[:, :, None]).sum(axis=1).astype(np.float64)  # "present" values per unit x code
    pairable = (m >= 2).astype(np.float64)
    rated = (m >= 1).astype(np.float64)
    mm = np.maximum(m, 2.0)  # avoid 0-division; non-pairable units are zeroed by ``pairable``
    m1 = np.maximum(m, 1.0)
    # Chance terms average over every rated unit (Gwet's irrCAC), agreement over pairable ones.
    share1 = k * rated / m1
    share0 = (m - k) * rated / m1
    k = k * pairable
    rest = (m - k) * pairable
    per_unit = {
        "n": np.repeat(pairable, len(p.codes), axis=1),
        "n_rated": np.repeat(rated, len(p.codes), axis=1),
        "pu": (k * (k - 1) + rest * (rest - 1)) / (mm * (mm - 1)),
        "share1": share1,
        "share0": share0,
        "o01": k * rest / (mm - 1),
        "v1": k,
        "v0": rest,
    }
    sums: dict[str, FloatArray] = {name: _per_transcript(v, p.t_of_unit, n_t) for name, v in per_unit.items()}
    with_pairs = sums["n"][:, 0] > 0 if p.codes else np.zeros(n_t, dtype=bool)
    # Resample every transcript with a rated unit: single-rated ones count in the chance terms.
    clusters = sums["n_rated"][:, 0] > 0 if p.codes else np.zeros(n_t, dtype=bool)
    sums = {name: v[clusters] for name, v in sums.items()}
    res = _analyse(sums, group_stats, GROUP_STATS, n_boot, _rng(seed, "all coders"), level)
    n_units = int(pairable.sum())
    return GroupReport(
        coders=list(p.coders),
        n_transcripts=int(with_pairs.sum()),
        n_units=n_units,
        codes=[GroupCodeStats(code=c, n_units=n_units, **res.per_code[i]) for i, c in enumerate(p.codes)],
        micro=GroupCodeStats(code=POOLED_MICRO, n_units=n_units, **res.micro),
        macro=GroupCodeStats(code=POOLED_MACRO, n_units=n_units, **res.macro),
    )


def _conf(c: Coding) -> float:
    return -1.0 if c.confidence is None else c.confidence


def _disagreements(p: _Prepared) -> list[Disagreement]:
    present = (p.x & p.has[:, :, None]).sum(axis=1)
    valid = p.has.sum(axis=1)[:, None]
    mask = (present > 0) & (present < valid)
    units_idx, codes_idx = np.nonzero(mask)
    if units_idx.size == 0:
        return []
    code_index = {c: i for i, c in enumerate(p.codes)}
    best: dict[tuple[int, int], Coding] = {}
    for u, c in p.marked.hits:
        if c.coder not in p.machine:  # the machine's own quote and rationale, not a reviewer's copy
            continue
        key = (u, code_index[c.code_id])
        if not mask[key]:
            continue
        old = best.get(key)
        if old is None or _conf(c) > _conf(old):
            best[key] = c
    rows: list[tuple[tuple[int, float, str, int], Disagreement]] = []
    # Votes of all rows at once (numpy scalar indexing per cell would dominate the run time).
    marks = p.x[units_idx, :, codes_idx].tolist()
    coded = p.has[units_idx].tolist()
    for r, (u, k) in enumerate(zip(units_idx.tolist(), codes_idx.tolist(), strict=True)):
        unit = p.marked.units[u]
        m = best.get((u, k))
        votes = {name: (marks[r][j] if coded[r][j] else None) for j, name in enumerate(p.coders)}
        text = unit.text if len(unit.text) <= 300 or unit.unit_id != "transcript" else unit.text[:297] + "..."
        conf = m.confidence if m is not None else None
        # model_construct: every field is built here from validated values; validating 10^5 rows
        # again would cost more than all the statistics.
        row = Disagreement.model_construct(
            transcript_id=unit.transcript_id, unit_id=unit.unit_id, turn_index=unit.turn_index,
            start=unit.start, end=unit.end, unit_text=text, code_id=p.codes[k], votes=votes,
            machine_coder=m.coder if m else None, machine_quote=m.quote if m else None,
            machine_rationale=m.rationale if m else None, machine_confidence=conf,
        )
        # Most consequential first: by code, then confident machine calls, then text order.
        rows.append(((k, -conf if conf is not None else 1.0, unit.transcript_id, unit.start), row))
    rows.sort(key=lambda r: r[0])
    return [r for _, r in rows]


def _check_options(unit: str, n_boot: int, seed: int, level: float) -> None:
    if unit not in ("turn", "sentence", "transcript"):
        raise ConfigError(f"unit must be turn, sentence or transcript, not {unit!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ConfigError(f"n_boot must be an integer >= 0, not {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, not {seed!r}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence_level must be between 0 and 1, not {level!r}")


def _notes(p: _Prepared, unit: UnitKind, min_overlap: int, n_boot: int, level: float) -> list[str]:
    unit_text = {
        "turn": "one unit per coded turn (non-interviewer turns unless speakers were given)",
        "sentence": "one unit per sentence of each coded turn (regex split at . ! ? … and blank lines)",
        "transcript": "one unit per transcript (is the code present anywhere in it?)",
    }[unit]
    notes = [
        f"Units: {unit_text}; {len(p.marked.units)} units in {len(p.transcripts)} transcripts.",
        f"A coding marks a unit when its span overlaps the unit by at least min(min_overlap={min_overlap}, "
        "span length) characters; codings without a span are placed by their quote (exact, then "
        "case/whitespace-insensitive search) or, for turn units, by their turn index.",
        "Every statistic is on binary presence/absence of one code in one unit; units that nobody "
        "marked with a code count as agreement on 'absent' for that code.",
        "A coder counts as having coded a transcript when it applied at least one code there (unless "
        "coverage was given); units of transcripts a coder did not code are missing for that coder.",
        "Pooled micro: all unit x code decisions pooled into one table. Pooled macro: mean over codes "
        "of the per-code statistic, ignoring codes where it is undefined.",
        "Pairs: coder_a is the reference for precision/recall (the human in machine-human pairs); "
        "a coder is a machine when its name starts with 'quallm' or it was listed as a machine coder.",
        "A reviewed machine coding (coder 'quallm reviewed by NAME', from quallm review) is a reviewer's "
        "acceptances, recodes and additions on the machine's proposals: anchored on the machine, so its "
        "pairs are reviewed-human, reviewed-machine or reviewed-reviewed and never human-human.",
        "All-coders rows (more than two coders): kappa is Fleiss' kappa; percent is the mean share of "
        "agreeing coder pairs per unit; AC1 is Gwet's multi-rater AC1; observed agreement is over "
        "units with at least two coders, the chance agreement of Fleiss' kappa and AC1 over every unit "
        "with at least one coder (as Gwet's irrCAC computes them).",
        "Undefined statistics (e.g. kappa when one category was used throughout) are null in JSON, "
        "empty in CSV and 'undefined' in printed output.",
    ]
    if n_boot > 0:
        notes.append(f"{level:.0%} confidence intervals: percentile bootstrap over transcripts "
                     f"({n_boot} resamples with replacement of the transcripts both/all coders coded; "
                     "replicates where a statistic is undefined are left out of its interval).")
    else:
        notes.append("No confidence intervals (n_boot=0).")
    return notes


def reconcile(
    transcripts: Sequence[Transcript],
    codings: Sequence[Coding],
    codebook_codes: Sequence[str] | None = None,
    unit: UnitKind = "turn",
    coders: Sequence[str] | None = None,
    reference: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_overlap: int = 1,
    *,
    machine_coders: Collection[str] = (),
    speakers: frozenset[str] | None = None,
    coverage: Mapping[str, Collection[str]] | None = None,
    confidence_level: float = 0.95,
    reviewed_coders: Collection[str] = (),
) -> AgreementReport:
    """Agreement between the coders of ``codings`` on ``transcripts``.

    ``codebook_codes`` lists the codes to compare (codings of other codes are reported as issues);
    ``None`` takes every code used. ``coders`` picks and orders the coders (default: every coder,
    humans first). ``reference`` is the reference coder for precision/recall in the pairs it is in.
    ``coverage`` maps a coder to the transcript ids it coded (default: those where it applied a code).
    ``reviewed_coders`` (and coders named ``quallm reviewed by ...``) are reviewed machine codings: their
    pairs are ``reviewed-human``, ``reviewed-machine`` or ``reviewed-reviewed``, never ``human-human``.
    Bootstrap CIs use ``n_boot`` resamples of transcripts from a generator seeded with ``seed``.
    """
    _check_options(unit, n_boot, seed, confidence_level)
    p = _prepare(transcripts, codings, codebook_codes, unit, coders, min_overlap, machine_coders,
                 speakers, coverage, reviewed_coders)
    if reference is not None and reference not in p.coders:
        raise ConfigError(f"reference coder {reference!r} is not among the coders {p.coders}")
    pairs: list[PairReport] = []
    index = {c: j for j, c in enumerate(p.coders)}
    for i in range(len(p.coders)):
        for j in range(i + 1, len(p.coders)):
            a, b = _orient(p.coders[i], p.coders[j], p.machine, reference, p.reviewed)
            rep = _pair_report(p, index[a], index[b], _pair_kind(a, b, p.machine, p.reviewed), n_boot, seed,
                               confidence_level)
            if rep.n_units == 0:
                p.issues.append(f"{rep.pair}: no transcript coded by both; the pair's statistics are undefined")
            pairs.append(rep)
    group = _group_report(p, n_boot, seed, confidence_level) if len(p.coders) > 2 else None
    return AgreementReport(
        unit=unit,
        min_overlap=min_overlap,
        n_boot=n_boot,
        seed=seed,
        confidence_level=confidence_level,
        coders=p.coders,
        machine_coders=[c for c in p.coders if c in p.machine],
        reference=reference,
        reviewed_coders=[c for c in p.coders if c in p.reviewed],
        codes=p.codes,
        n_transcripts=len(p.transcripts),
        n_units=len(p.marked.units),
        pairs=pairs,
        group=group,
        disagreements=_disagreements(p),
        issues=p.issues,
        notes=_notes(p, unit, min_overlap, n_boot, confidence_level),
    )


def disagreements(
    transcripts: Sequence[Transcript],
    codings: Sequence[Coding],
    codebook_codes: Sequence[str] | None = None,
    unit: UnitKind = "turn",
    coders: Sequence[str] | None = None,
    min_overlap: int = 1,
    *,
    machine_coders: Collection[str] = (),
    speakers: frozenset[str] | None = None,
    coverage: Mapping[str, Collection[str]] | None = None,
) -> list[Disagreement]:
    """Units and codes on which the coders disagree, most consequential first.

    Sorted by code (codebook order), then machine confidence descending (rows without a machine mark
    last), then transcript id and position. Each row carries every coder's vote and, where a machine
    coder marked the unit, its quote, rationale and confidence (its most confident coding there).
    The same rows are in :attr:`AgreementReport.disagreements`.
    """
    _check_options(unit, 0, 0, 0.5)
    p = _prepare(transcripts, codings, codebook_codes, unit, coders, min_overlap, machine_coders,
                 speakers, coverage)
    return _disagreements(p)
