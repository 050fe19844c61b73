"""Does calibrating on a coded sample help? A simulation of the ``quallm calibrate`` loop on a run.

Run: ``python benchmarks/bench_calibrate.py RUN_DIR HUMAN_CSV [--sizes 2,4,6] [--repeats 20] [--coder NAME]``.

``RUN_DIR`` is a run of the real model made generously (``quallm extract ... --min-confidence 0``), so
every proposal is a coding or a candidate with its probability; ``HUMAN_CSV`` codes all of its
transcripts. For each sample size k, ``--repeats`` random draws of k transcripts play the researcher's
coded sample: ``quallm calibrate`` chooses per-code thresholds on it (cross-validated within it), and
the other transcripts are scored as if uncoded. Reported per k (means over draws, with the 2.5-97.5%
range of the draws):

* out-of-sample pooled kappa on the held-out transcripts at the default threshold (``--min-confidence``
  default 0.5) and at the calibration's thresholds, and their difference;
* the mean width of the per-code out-of-fold kappa intervals inside the sample (how the intervals
  narrow as k grows);
* ``--suggest``: from each sample, 2 more transcripts chosen by ``--suggest`` or at random are added
  and the calibration redone; held-out kappa (on transcripts neither chose) and the interval width.

No model call is made: everything is re-scored from the stored probabilities. ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quallm.analysis.calibration import maths
from quallm.analysis.calibration.labels import label_table
from quallm.analysis.calibration.model import Calibration
from quallm.analysis.reconciling import RunInputs, load_coding_file, load_run
from quallm.core.codings import Coding
from quallm.outputs.calibrate import DEFAULT_THRESHOLD, calibrate_run, suggest_transcripts


def _subset_csv(human: Path, ids: set[str], out: Path) -> Path:
    """The rows of ``human`` for transcripts ``ids``, cells copied as they are (already safe)."""
    with human.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    with out.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(rows[0])
        col = rows[0].index("transcript_id")
        w.writerows(r for r in rows[1:] if r and r[col] in ids)
    return out


def held_out_kappa(
    inputs: RunInputs, human: Sequence[Coding], test_ids: set[str], thresholds: dict[str, float], default: float
) -> float | None:
    """Pooled kappa on ``test_ids`` with the given per-code thresholds (others at ``default``)."""
    assert inputs.codebook is not None
    codes = list(inputs.codebook.ids)
    transcripts = [t for t in inputs.transcripts if t.id in test_ids]
    proposals = [c for c in (*inputs.codings, *inputs.candidates) if c.transcript_id in test_ids]
    table, _ = label_table(transcripts, proposals, [c for c in human if c.transcript_id in test_ids], codes)
    thr = np.array([thresholds.get(c, default) for c in codes], dtype=np.float64)
    figs = maths.agreement_figures(table, maths.predict(table.s, thr), n_boot=0)
    return figs.pooled["kappa"].value


def mean_width(cal: Calibration) -> float:
    """Mean width of the per-code out-of-fold kappa intervals, over codes with enough positives."""
    ws = [maths.interval_width(c.kappa) for c in cal.codes if c.verdict != "insufficient"]
    return statistics.fmean(ws) if ws else float("nan")


def _calibrate(run: Path, human: Path, ids: set[str], coder: str | None, tmp: Path, n_boot: int) -> Calibration:
    sample = _subset_csv(human, ids, tmp / "sample.csv")
    return calibrate_run(run, [sample], coder=coder, n_boot=n_boot, out=tmp / "calibration.json").calibration


def simulate(
    run: Path,
    human: Path,
    sizes: Sequence[int],
    repeats: int = 20,
    coder: str | None = None,
    seed: int = 0,
    n_boot: int = 200,
    add: int = 2,
) -> list[dict[str, Any]]:
    """One row per sample size (see the module docstring)."""
    inputs = load_run(run)
    codings, _ = load_coding_file(human, inputs.transcripts, inputs.codebook)
    if coder is not None:
        codings = [c for c in codings if c.coder == coder]
    coded = sorted({c.transcript_id for c in codings} & {t.id for t in inputs.transcripts})
    rng = random.Random(seed)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for k in sizes:
            if k >= len(coded):
                continue
            base, cal_k, widths, s_k, r_k, s_w, r_w = [], [], [], [], [], [], []
            for _ in range(repeats):
                sample = set(rng.sample(coded, k))
                test = set(coded) - sample
                cal = _calibrate(run, human, sample, coder, tmp, n_boot)
                b = held_out_kappa(inputs, codings, test, {}, DEFAULT_THRESHOLD)
                c = held_out_kappa(inputs, codings, test, cal.thresholds(), DEFAULT_THRESHOLD)
                if b is None or c is None:
                    continue
                base.append(b)
                cal_k.append(c)
                widths.append(mean_width(cal))
                if len(test) > 2 * add:
                    picked = {p.transcript_id for p in suggest_transcripts(run, cal, add)}
                    random_pick = set(rng.sample(sorted(test), add))
                    common_test = test - picked - random_pick
                    for chosen, kappas, ws in ((picked, s_k, s_w), (random_pick, r_k, r_w)):
                        cal2 = _calibrate(run, human, sample | chosen, coder, tmp, n_boot)
                        kk = held_out_kappa(inputs, codings, common_test, cal2.thresholds(), DEFAULT_THRESHOLD)
                        if kk is not None:
                            kappas.append(kk)
                            ws.append(mean_width(cal2))
            rows.append({
                "set": run.name,
                "k": k,
                "draws": len(base),
                "kappa_default": _summary(base),
                "kappa_calibrated": _summary(cal_k),
                "gain": _summary([c - b for b, c in zip(base, cal_k, strict=True)]),
                "interval_width": _summary(widths),
                "suggest_kappa": _summary(s_k),
                "random_kappa": _summary(r_k),
                "suggest_width": _summary(s_w),
                "random_width": _summary(r_w),
            })
    return rows


def _summary(xs: Sequence[float]) -> dict[str, float | None]:
    ok = [x for x in xs if x == x]  # drop NaN
    if not ok:
        return {"mean": None, "lo": None, "hi": None}
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return {"mean": round(statistics.fmean(ok), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4)}


def _fmt(s: dict[str, float | None]) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"


def render(rows: Sequence[dict[str, Any]], add: int = 2) -> str:
    """A markdown table of the rows."""
    head = (f"| set | coded k | draws | held-out kappa, default | calibrated | gain | mean CI width | "
            f"+{add} by --suggest: kappa / width | +{add} at random: kappa / width |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['k']} | {r['draws']} | {_fmt(r['kappa_default'])} | {_fmt(r['kappa_calibrated'])} | "
            f"{_fmt(r['gain'])} | {_fmt(r['interval_width'])} | {_fmt(r['suggest_kappa'])} / "
            f"{_fmt(r['suggest_width'])} | {_fmt(r['random_kappa'])} / {_fmt(r['random_width'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("human_csv", type=Path)
    ap.add_argument("--sizes", default="2,4,6", help="sample sizes (transcripts human-coded)")
    ap.add_argument("--repeats", type=int, default=20, help="random draws per size")
    ap.add_argument("--coder", default=None, help="the human coder (when the CSV holds several)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args()
    rows = simulate(a.run_dir, a.human_csv, [int(x) for x in a.sizes.split(",")], a.repeats, a.coder, a.seed,
                    a.bootstrap)
    print(render(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
