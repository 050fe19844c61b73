"""Calibration: thresholds by cross-validation over transcripts, out-of-fold figures, verdicts, the
calibration file, --suggest and its template, and the probability calibration in agreement.json."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from tests.calibration_run import human_subset, make_calibration_run

from quallm.analysis.agreement.probability import brier_score, expected_calibration_error, reliability_bins
from quallm.analysis.agreement.reconcile import Estimate
from quallm.analysis.calibration import maths
from quallm.analysis.calibration.model import read_calibration
from quallm.core.errors import ConfigError, InputError
from quallm.outputs.calibrate import calibrate_run, suggest_transcripts, write_template


def test_fit_threshold_maximises_kappa_between_probabilities() -> None:
    y = np.array([True, True, False, False, False])
    s = np.array([0.3, 0.25, 0.1, -np.inf, 0.05])
    t = maths.fit_threshold(y, s, 0.5, min_positives=1)
    # Any threshold in (0.1, 0.25] separates perfectly; 0.5 is outside it, so the interval's midpoint.
    assert t == pytest.approx(0.175)
    assert maths._kappa(y, s >= t) == pytest.approx(1.0)


def test_fit_threshold_keeps_default_when_it_is_already_best_or_nothing_to_learn() -> None:
    y = np.array([True, False])
    assert maths.fit_threshold(y, np.array([0.9, 0.2]), 0.5) == 0.5
    assert maths.fit_threshold(y, np.array([-np.inf, -np.inf]), 0.5) == 0.5
    # A proposal without a probability (+inf) cannot be removed: still counted at any threshold.
    assert maths.predict(np.array([[np.inf]]), np.array([0.99]))[0, 0]


def test_folds_are_leave_one_out_then_k_fold() -> None:
    assert maths.folds(3) == [[0], [1], [2]]
    twelve = maths.folds(12)
    assert len(twelve) == 10 and sorted(i for f in twelve for i in f) == list(range(12))
    assert maths.folds(1) == []


def test_fit_threshold_needs_positives_and_a_real_gain() -> None:
    y = np.array([True, True, False, False, False])
    s = np.array([0.3, 0.25, 0.1, -np.inf, 0.05])
    # Two human positives are too few by default: the default threshold stands.
    assert maths.fit_threshold(y, s, 0.5) == 0.5
    # With three, the perfect separation is a real gain over the default (which marks nothing).
    y3, s3 = np.append(y, True), np.append(s, 0.28)
    assert maths.fit_threshold(y3, s3, 0.5) == pytest.approx(0.175)
    # A gain smaller than min_gain keeps the default.
    assert maths.fit_threshold(y3, s3, 0.5, min_gain=2.0) == 0.5


def test_out_of_fold_thresholds_never_see_the_held_out_transcript(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maths, "MIN_FIT_POSITIVES", 1)
    monkeypatch.setattr(maths, "MIN_GAIN", 0.0)
    # Transcript 0 alone would want a threshold of 0.9; transcripts 1 and 2 want about 0.3.
    t_of_unit = np.array([0, 0, 1, 1, 2, 2])
    y = np.array([[True], [False], [True], [False], [True], [False]])
    s = np.array([[0.95], [0.85], [0.35], [0.1], [0.3], [0.12]])
    table = maths.LabelTable(["A"], ["t0", "t1", "t2"], t_of_unit, y, s)
    pred, chosen = maths.out_of_fold(table, 0.5)
    # Held out t0: chosen on t1, t2 (between 0.12 and 0.3), so t0's 0.85 negative is marked: an honest miss.
    assert 0.12 < chosen[0, 0] <= 0.3
    assert pred[1, 0]


def test_verdicts() -> None:
    assert maths.verdict(Estimate(value=0.9, ci_low=0.7, ci_high=1.0), 5) == "reliable"
    assert maths.verdict(Estimate(value=0.7, ci_low=0.4, ci_high=0.9), 5) == "review"
    assert maths.verdict(Estimate(value=0.5, ci_low=0.2, ci_high=0.8), 5) == "unreliable"
    assert maths.verdict(Estimate(value=1.0, ci_low=1.0, ci_high=1.0), 2) == "insufficient"
    assert maths.verdict(Estimate(value=0.7, ci_low=0.65), 3, min_kappa=0.6, min_positives=3) == "reliable"


def test_probability_calibration_measures() -> None:
    p, y = [0.05, 0.15, 0.95, 0.85], [False, False, True, True]
    assert brier_score(p, y) == pytest.approx((0.05**2 + 0.15**2 + 0.05**2 + 0.15**2) / 4)
    bins = reliability_bins(p, y)
    assert [b.n for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert expected_calibration_error(p, y) == pytest.approx(0.1)
    assert expected_calibration_error([], []) is None
    assert reliability_bins([1.0], [True])[-1].n == 1  # 1.0 belongs to the last bin


def test_calibrate_run_improves_out_of_sample_and_writes_the_file(tmp_path: Path) -> None:
    run, human = make_calibration_run(tmp_path, n_transcripts=6)
    out = calibrate_run(run, [human], n_boot=200)
    cal = out.calibration
    assert out.path == run / "calibration.json" and out.path.is_file()
    by = {c.code: c for c in cal.codes}
    # A's probabilities run low: the chosen threshold is below the default, and out of sample it beats it.
    assert by["A"].threshold < 0.5
    assert by["A"].kappa.value is not None and by["A"].default_kappa.value is not None
    assert by["A"].kappa.value > by["A"].default_kappa.value + 0.3
    assert cal.pooled["kappa"].value > cal.pooled_default["kappa"].value  # type: ignore[operator]
    assert len(by["A"].fold_thresholds) == 6 and cal.folds.startswith("leave-one-transcript-out")
    # C has no human positives: insufficient, named, and not applied.
    assert by["C"].verdict == "insufficient" and "C" in cal.not_calibrated
    assert "C" not in cal.thresholds() and any(p.startswith("C:") for p in out.problems)
    assert cal.validity.codebook_hash and cal.validity.prompts == {"code_turn": "p1", "code_chunk": "p2",
                                                                     "verify_turn": "p3"}
    again, digest = read_calibration(out.path)
    assert again == cal and len(digest) == 64
    ci = by["B"].kappa
    assert ci.ci_low is not None and ci.ci_high is not None and ci.ci_low <= ci.value <= ci.ci_high  # type: ignore[operator]


def test_bad_human_input_is_named_and_calibration_goes_on(tmp_path: Path) -> None:
    run, human = make_calibration_run(tmp_path, n_transcripts=4)
    bad = tmp_path / "bad.csv"
    bad.write_text(human.read_text(encoding="utf-8") + "t99,coder_a,A,1\nt00,coder_a,Z_unknown,1\n", encoding="utf-8")
    out = calibrate_run(run, [bad], n_boot=50)
    assert any("unknown transcript id 't99'" in p for p in out.problems)
    assert any("'Z_unknown' is not in the codebook" in p for p in out.problems)
    assert {c.code for c in out.calibration.codes} == {"A", "B", "C"}


def test_calibration_needs_two_transcripts_and_one_coder(tmp_path: Path) -> None:
    run, human = make_calibration_run(tmp_path, n_transcripts=3)
    one = human_subset(human, {"t00"}, tmp_path / "one.csv")
    with pytest.raises(ConfigError, match="at least 2"):
        calibrate_run(run, [one])
    two = tmp_path / "two.csv"
    rows = human.read_text(encoding="utf-8")
    two.write_text(rows + rows.splitlines()[1].replace("coder_a", "coder_b") + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="choose one with --coder"):
        calibrate_run(run, [two])
    assert calibrate_run(run, [two], coder="coder_a", n_boot=0).calibration.coder == "coder_a"
    broken = run / "broken.json"
    broken.write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match="not a quallm calibration file"):
        read_calibration(broken)


def test_suggest_prefers_transcripts_near_the_thresholds_and_writes_a_safe_template(tmp_path: Path) -> None:
    run, human = make_calibration_run(tmp_path, n_transcripts=8)
    sample = human_subset(human, {"t00", "t01", "t02"}, tmp_path / "sample.csv")
    cal = calibrate_run(run, [sample], n_boot=100).calibration
    picks = suggest_transcripts(run, cal, 3)
    assert len(picks) == 3 and len({p.transcript_id for p in picks}) == 3
    assert not {p.transcript_id for p in picks} & {"t00", "t01", "t02"}
    assert picks[0].score >= picks[1].score > 0
    # A transcript with a formula-looking turn: the template neutralises it.
    path = write_template(run, [p.transcript_id for p in picks], tmp_path / "template.csv")
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["transcript_id"] for r in rows} == {p.transcript_id for p in picks}
    assert all(r["code_id"] == "" and r["text"].startswith("Answer") for r in rows)


def test_greedy_picks_spread_over_codes() -> None:
    near = {"x": np.array([3.0, 0.0]), "y": np.array([2.9, 0.0]), "z": np.array([0.0, 1.0])}
    picks = maths.greedy_picks(near, np.array([1.0, 1.0]), 2)
    assert [p[0] for p in picks] == ["x", "z"]  # after x, code 0 weighs a quarter: z's code 1 wins



def test_template_rows_left_uncoded_are_skipped_when_read_back(tmp_path: Path) -> None:
    from quallm.analysis.agreement import read_human_csv
    from quallm.analysis.reconciling import load_run

    run, _ = make_calibration_run(tmp_path, n_transcripts=2)
    path = write_template(run, ["t00"], tmp_path / "template.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    first = lines[1].rsplit(",", 2)[0] + ",ann,A"
    path.write_text("\n".join([lines[0], first, *lines[2:]]) + "\n", encoding="utf-8")
    codings, problems = read_human_csv(path, load_run(run).transcripts, ["A", "B", "C"])
    assert problems == [] and [(c.code_id, c.coder, c.turn_index) for c in codings] == [("A", "ann", 1)]


def test_benchmark_simulation_on_a_synthetic_run(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_calibrate", Path(__file__).parents[2] / "benchmarks" / "bench_calibrate.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run, human = make_calibration_run(tmp_path, n_transcripts=8)
    rows = bench.simulate(run, human, [2, 4], repeats=3, n_boot=50)
    assert [r["k"] for r in rows] == [2, 4] and all(r["draws"] == 3 for r in rows)
    # The synthetic A is under-confident: calibrating on the sample must help on the held-out transcripts.
    assert all(r["gain"]["mean"] > 0.1 for r in rows)
    assert rows[0]["suggest_kappa"]["mean"] is not None and rows[0]["random_kappa"]["mean"] is not None
    table = bench.render(rows)
    assert table.count("\n") == 3 and "| run | 2 | 3 |" in table
