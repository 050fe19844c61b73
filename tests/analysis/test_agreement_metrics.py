"""Agreement coefficients against published worked examples, and their degenerate cases."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import krippendorff
import numpy as np
import pytest

from quallm.analysis.agreement.metrics import (
    AgreementInputError,
    Level,
    cohen_kappa,
    fleiss_kappa,
    gwet_ac1,
    krippendorff_alpha,
    percent_agreement,
    precision_recall_f1,
)
from quallm.core.errors import ConfigError, QuallmError


def counts_to_rows(counts: Sequence[Sequence[int]]) -> list[list[Hashable | None]]:
    """Subjects x categories counts (Fleiss form) -> one row of labels per subject (raters exchangeable)."""
    return [[k for k, c in enumerate(row) for _ in range(c)] for row in counts]


def contingency_to_rows(matrix: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Rater-A x rater-B contingency table -> one (a, b) row per subject."""
    return [(i, j) for i, row in enumerate(matrix) for j, c in enumerate(row) for _ in range(c)]


# --- Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12
# units with missing values. Printed: nominal 0.743, ordinal 0.815, interval 0.849, ratio 0.797.
# (Also the dataset cac.raw4raters of Gwet's irrCAC R package, README: alpha 0.74342.)
_KA = [  # observers (rows) x units (columns)
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
KRIPPENDORFF_2011 = [list(unit) for unit in zip(*_KA, strict=True)]  # units x coders


@pytest.mark.parametrize(
    ("level", "printed"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)]
)
def test_krippendorff_2011_example(level: Level, printed: float) -> None:
    value = krippendorff_alpha(KRIPPENDORFF_2011, level=level)
    assert value is not None
    assert round(value, 3) == printed
    # ... and our coincidence-matrix implementation equals the krippendorff package.
    data = np.array([[np.nan if v is None else v for v in row] for row in _KA], dtype=float)
    assert value == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement=level), abs=1e-12)


def test_irrcac_raw4raters_example() -> None:
    # Gwet, irrCAC R package README (github.com/kgwet/irrCAC), dataset cac.raw4raters (the same
    # 12 x 4 data as Krippendorff 2011, unit 12 rated once): pa.coeff.raw 0.8181818,
    # gwet.ac1.raw 0.77544 (pe 0.1903212), fleiss.kappa.raw 0.76117 (pe 0.2387153),
    # krippen.alpha.raw 0.74342. irrCAC averages category shares over every rated unit, and so do
    # quallm's defaults (chance_from="rated").
    assert percent_agreement(KRIPPENDORFF_2011) == pytest.approx(0.8181818, abs=5e-8)
    assert gwet_ac1(KRIPPENDORFF_2011) == pytest.approx(0.77544, abs=5e-6)
    assert fleiss_kappa(KRIPPENDORFF_2011) == pytest.approx(0.76117, abs=5e-6)
    assert gwet_ac1(KRIPPENDORFF_2011, chance_from="rated") == gwet_ac1(KRIPPENDORFF_2011)
    assert krippendorff_alpha(KRIPPENDORFF_2011) == pytest.approx(0.74342, abs=5e-6)
    # Chance from pairable units only (unit 12's single rating left out) differs slightly:
    # pa = 0.8181818; pi over 11 units -> pe(AC1) = 0.1913740, AC1 = (0.8181818 - 0.1913740) / 0.8086260.
    assert gwet_ac1(KRIPPENDORFF_2011, chance_from="pairable") == pytest.approx(0.7751517, abs=5e-7)
    assert fleiss_kappa(KRIPPENDORFF_2011, chance_from="pairable") == pytest.approx(0.76248, abs=5e-6)


def test_random_tables_match_krippendorff_package() -> None:
    rng = np.random.default_rng(7)
    for trial in range(40):
        n_coders, n_units = int(rng.integers(2, 6)), int(rng.integers(2, 30))
        data = rng.integers(1, 6, size=(n_coders, n_units)).astype(float)
        data[rng.random(data.shape) < 0.25] = np.nan
        table = [[None if math.isnan(v) else int(v) for v in col] for col in data.T]
        levels: tuple[Level, ...] = ("nominal", "ordinal", "interval", "ratio")
        for level in levels:
            ours = krippendorff_alpha(table, level=level)
            try:
                theirs = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
            except ValueError:  # the package refuses data with < 2 values or one value only
                theirs = float("nan")
            if ours is None:
                assert not np.isfinite(theirs), (trial, level)
            else:
                assert ours == pytest.approx(theirs, abs=1e-9), (trial, level)


# --- Fleiss (1971), Table 1: 30 patients x 6 psychiatrists x 5 diagnoses; printed kappa = .430.
# Raw ratings as the `diagnoses` dataset of the R package irr (kappam.fleiss: 0.4302445), copied
# from statsmodels' test_inter_rater.py. Column totals 26, 26, 30, 55, 43 check the transcription.
FLEISS_1971 = [
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5], [2, 2, 2, 4, 4, 4],
    [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4], [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5],
    [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4], [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5],
    [3, 3, 3, 3, 3, 5], [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4], [1, 4, 4, 4, 4, 5],
    [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4], [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5],
]


def test_fleiss_1971_example() -> None:
    totals = [sum(row.count(c) for row in FLEISS_1971) for c in range(1, 6)]
    assert totals == [26, 26, 30, 55, 43]
    value = fleiss_kappa(FLEISS_1971)
    assert value is not None
    assert round(value, 3) == 0.430
    assert value == pytest.approx(0.4302445, abs=5e-8)


def test_fleiss_wikipedia_example() -> None:
    # Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories.
    # Printed: P_i per subject, P-bar = 0.378, P_e-bar = 0.213, kappa = 0.210.
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    printed_pi = [1.000, 0.253, 0.308, 0.440, 0.330, 0.462, 0.242, 0.176, 0.286, 0.286]
    rows = counts_to_rows(counts)
    assert [round(percent_agreement([r]) or 0.0, 3) for r in rows] == printed_pi
    assert round(percent_agreement(rows) or 0.0, 3) == 0.378
    kappa = fleiss_kappa(rows)
    assert kappa is not None and round(kappa, 3) == 0.210
    # P_e-bar = sum p_j^2 with p_j = column total / 140: recover it from kappa and P-bar.
    p_bar = percent_agreement(rows) or 0.0
    assert round((p_bar - kappa) / (1 - kappa), 3) == 0.213


def test_irrcac_distrib_6raters_example() -> None:
    # irrCAC README, dataset distrib.6raters (15 patients x 6 raters, subjects 1-15 of Fleiss 1971's
    # design): gwet.ac1.dist 0.4448007 (pa 0.5511111, pe 0.1914815), fleiss.kappa.dist 0.4139265
    # (pe 0.2340741), krippen.alpha.dist 0.4204384.
    counts = [[0, 0, 0, 6, 0], [0, 3, 0, 0, 3], [0, 1, 4, 0, 1], [0, 0, 0, 0, 6], [0, 3, 0, 3, 0],
              [2, 0, 4, 0, 0], [0, 0, 4, 0, 2], [2, 0, 3, 1, 0], [2, 0, 0, 4, 0], [0, 0, 0, 0, 6],
              [1, 0, 0, 5, 0], [1, 1, 0, 4, 0], [0, 3, 3, 0, 0], [1, 0, 0, 5, 0], [0, 2, 0, 3, 1]]
    rows = counts_to_rows(counts)
    assert percent_agreement(rows) == pytest.approx(0.5511111, abs=5e-8)
    assert gwet_ac1(rows) == pytest.approx(0.4448007, abs=5e-8)
    assert fleiss_kappa(rows) == pytest.approx(0.4139265, abs=5e-8)
    assert krippendorff_alpha(rows) == pytest.approx(0.4204384, abs=5e-8)


def test_cohen_kappa_wikipedia_example() -> None:
    # Wikipedia, "Cohen's kappa", simple example: 50 grant proposals, Yes/Yes 20, Yes/No 5,
    # No/Yes 10, No/No 15. p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.40.
    rows = [("Yes", "Yes")] * 20 + [("Yes", "No")] * 5 + [("No", "Yes")] * 10 + [("No", "No")] * 15
    assert cohen_kappa(rows) == pytest.approx(0.40, abs=1e-12)
    assert percent_agreement(rows) == pytest.approx(0.70, abs=1e-12)


def test_cohen_kappa_and_weighted_kappa_sas_example() -> None:
    # SAS PROC FREQ AGREE printout reproduced in statsmodels' test_inter_rater.py (table10):
    # simple kappa 0.4842, weighted kappa (Cicchetti-Allison = linear weights, scores 0,1,2) 0.4701.
    # By hand: n=19, p_o = 13/19; rows 5,8,6; cols 0,13,6 -> p_e = (0+104+36)/361 = 140/361;
    # kappa = (13/19 - 140/361) / (1 - 140/361) = (247-140)/(361-140) = 107/221 = 0.48416.
    table = contingency_to_rows([[0, 4, 1], [0, 8, 0], [0, 1, 5]])
    assert round(cohen_kappa(table) or 0.0, 4) == 0.4842
    assert round(cohen_kappa(table, weights="linear", categories=[0, 1, 2]) or 0.0, 4) == 0.4701


def test_weighted_kappa_irr_anxiety_example() -> None:
    # R package irr, dataset `anxiety`, raters 2 and 3 (values from irr::kappa2 printed in
    # statsmodels' test_inter_rater.py): unweighted -0.006289308, "equal" 0.1459075,
    # "squared" 0.2520325. irr ranks the observed levels (1,2,3,4,6), as we do by default.
    rater2 = [3, 6, 4, 6, 2, 4, 2, 4, 3, 3, 2, 3, 3, 3, 2, 2, 1, 3, 3, 4]
    rater3 = [2, 1, 4, 4, 3, 2, 1, 6, 1, 1, 1, 2, 3, 3, 1, 1, 3, 3, 2, 2]
    rows = list(zip(rater2, rater3, strict=True))
    assert cohen_kappa(rows) == pytest.approx(-0.006289308, abs=5e-10)
    assert cohen_kappa(rows, weights="linear") == pytest.approx(0.1459075, abs=5e-8)
    assert cohen_kappa(rows, weights="quadratic") == pytest.approx(0.2520325, abs=5e-8)
    # Declaring the unused level 5 changes the spacing, hence the weighted value.
    with_5 = cohen_kappa(rows, weights="linear", categories=[1, 2, 3, 4, 5, 6])
    assert with_5 is not None and with_5 != pytest.approx(0.1459075, abs=1e-4)


def test_irrcac_contingency_example_kappa_ac1_alpha() -> None:
    # irrCAC README, dataset cont3x3abstractors (2 abstractors, 100 cases, Ectopic/AIU/NIU):
    # kappa2.table 0.7964094, gwet.ac1.table 0.8493305, krippen2.table 0.7972585, pa2.table 0.89.
    # Gwet's AC1 by hand (Gwet 2008, eq. for two raters): p_a = (13+20+56)/100 = 0.89;
    # row totals 13, 27, 60, column totals 13, 24, 63 -> pi_k = (row+col)/200 = 0.13, 0.255, 0.615;
    # p_e = sum pi_k (1 - pi_k) / (q - 1) = (0.1131 + 0.189975 + 0.236775) / 2 = 0.269925;
    # AC1 = (0.89 - 0.269925) / (1 - 0.269925) = 0.620075 / 0.730075 = 0.8493305.
    rows = contingency_to_rows([[13, 0, 0], [0, 20, 7], [0, 4, 56]])
    assert cohen_kappa(rows) == pytest.approx(0.7964094, abs=5e-8)
    assert gwet_ac1(rows) == pytest.approx(0.8493305, abs=5e-8)
    assert krippendorff_alpha(rows) == pytest.approx(0.7972585, abs=5e-8)
    assert percent_agreement(rows) == pytest.approx(0.89, abs=1e-12)


def test_gwet_ac1_high_agreement_paradox_by_hand() -> None:
    # The "kappa paradox" Gwet (2008) and Wongpakaran et al. (2013) discuss: high agreement, skewed
    # prevalence. Two raters, 125 subjects: +/+ 118, +/- 5, -/+ 2, -/- 0. By hand:
    # p_a = 118/125 = 0.944; rater A "+" 123/125 = 0.984, rater B "+" 120/125 = 0.96.
    # kappa: p_e = 0.984*0.96 + 0.016*0.04 = 0.94528 -> (0.944 - 0.94528)/(1 - 0.94528) = -0.02339.
    # AC1: pi_+ = (0.984 + 0.96)/2 = 0.972; p_e = 2 * 0.972 * 0.028 = 0.054432
    #      -> (0.944 - 0.054432)/(1 - 0.054432) = 0.889568/0.945568 = 0.94078.
    rows = contingency_to_rows([[118, 5], [2, 0]])
    assert round(cohen_kappa(rows) or 0.0, 5) == -0.02339
    assert round(gwet_ac1(rows) or 0.0, 5) == 0.94078


# --- Degenerate cases: None where undefined, never NaN, never a crash.

ALL = (percent_agreement, cohen_kappa, fleiss_kappa, krippendorff_alpha, gwet_ac1)


def _no_nan(value: float | None) -> None:
    assert value is None or math.isfinite(value)


def test_nobody_used_the_code() -> None:
    rows = [(False, False)] * 5
    assert percent_agreement(rows) == 1.0
    assert cohen_kappa(rows) is None
    assert fleiss_kappa(rows) is None
    assert krippendorff_alpha(rows) is None
    assert gwet_ac1(rows) == 1.0  # one category: chance term 0
    assert gwet_ac1(rows, categories=[False, True]) == 1.0  # q = 2, pi_present = 0 -> p_e = 0


def test_perfect_agreement_on_one_category_three_coders() -> None:
    rows = [("x", "x", "x")] * 4
    assert percent_agreement(rows) == 1.0
    assert fleiss_kappa(rows) is None
    assert krippendorff_alpha(rows) is None
    assert gwet_ac1(rows) == 1.0


def test_single_unit() -> None:
    assert cohen_kappa([("a", "b")]) == 0.0  # p_o = 0, p_e = 0
    assert krippendorff_alpha([("a", "b")]) == 0.0  # 1 - (2-1) * 1 / (1 * 1)
    assert percent_agreement([("a", "b")]) == 0.0
    assert cohen_kappa([("a", "a")]) is None
    assert krippendorff_alpha([("a", "a")]) is None
    assert gwet_ac1([("a", "a")]) == 1.0


@pytest.mark.parametrize("table", [[], [(None, None)] * 3, [(1, None), (None, 2)], [(float("nan"), 1)]])
def test_no_pairable_units_gives_none(table: list[tuple[Hashable | None, ...]]) -> None:
    for fn in ALL:
        assert fn(table) is None, fn.__name__


def test_random_degenerate_tables_never_nan() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n_units, n_coders = int(rng.integers(0, 4)), int(rng.integers(2, 4))
        table = [[None if rng.random() < 0.4 else int(rng.integers(0, 2)) for _ in range(n_coders)]
                 for _ in range(n_units)]
        for fn in (percent_agreement, fleiss_kappa, krippendorff_alpha, gwet_ac1):
            _no_nan(fn(table))
        if n_coders == 2:
            _no_nan(cohen_kappa(table))
            _no_nan(cohen_kappa(table, weights="quadratic"))


def test_bad_input_raises_quallm_errors() -> None:
    with pytest.raises(AgreementInputError):
        percent_agreement([(1, 2), (1,)])
    with pytest.raises(AgreementInputError):
        cohen_kappa([(1, 2, 3)])
    with pytest.raises(ConfigError):
        cohen_kappa([(1, 2)], weights="cubic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        krippendorff_alpha([(1, 2)], level="circular")  # type: ignore[arg-type]
    with pytest.raises(AgreementInputError):
        krippendorff_alpha([("a", "b")], level="interval")
    with pytest.raises(AgreementInputError):
        cohen_kappa([("a", "z")], categories=["a", "b"])
    with pytest.raises(QuallmError):
        percent_agreement(["ab", "cd"])  # a string is not a row


def test_precision_recall_f1() -> None:
    ref = [True, True, False, False, None, True]
    pred = [True, False, True, False, True, None]
    prf = precision_recall_f1(ref, pred)
    assert (prf.tp, prf.fp, prf.fn, prf.tn) == (1, 1, 1, 1)
    assert prf.precision == 0.5 and prf.recall == 0.5 and prf.f1 == 0.5
    none = precision_recall_f1([False, False], [False, False])
    assert none.precision is None and none.recall is None and none.f1 is None
    with pytest.raises(AgreementInputError):
        precision_recall_f1([True], [True, False])
