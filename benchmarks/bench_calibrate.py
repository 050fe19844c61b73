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

No model call is made for these: everything is re-scored from the stored probabilities. ``--json``
writes the rows.

**Worked examples** (``--examples SET_DIR``, real model calls: run it under ``flock /work/model.lock``):
for each k, ``--examples-draws`` draws (1 by default: each costs a coding of the held-out transcripts)
of k transcripts play the coded sample; the held-out transcripts are coded again with worked examples
from it (``extract --examples-from``: the library call, so the sample's transcripts are the examples'
inputs without being re-coded), generously, into ``--examples-out``. Reported on the same draw: held-out
pooled kappa of the default pipeline, of the calibration, and of the worked examples at the default
threshold, and the mean per-code interval width of the calibration. ``SET_DIR`` holds ``codebook.yaml``
and the transcripts (in ``SET_DIR/transcripts`` or ``SET_DIR`` itself).

``--figure SVG --from A.json B.json`` draws the learning curve of one or more sets from their ``--json``.
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
from xml.sax.saxutils import escape

import numpy as np

from quallm.analysis.calibration import maths
from quallm.analysis.calibration.labels import label_table
from quallm.analysis.calibration.model import Calibration
from quallm.analysis.reconciling import RunInputs, load_coding_file, load_run
from quallm.coding.extract import ExtractOptions
from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.ingest.transcripts import expand_paths
from quallm.models.build import ModelSettings, build_model
from quallm.outputs.calibrate import DEFAULT_THRESHOLD, calibrate_run, suggest_transcripts
from quallm.outputs.examples_from import load_example_bank
from quallm.run.runner import run_extraction


def _subset_csv(human: Path, ids: set[str], out: Path, coder: str | None = None) -> Path:
    """The rows of ``human`` for transcripts ``ids`` (and ``coder``), cells copied as they are (already safe)."""
    with human.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    with out.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(rows[0])
        col = rows[0].index("transcript_id")
        who = rows[0].index("coder")
        w.writerows(r for r in rows[1:] if r and r[col] in ids and (coder is None or r[who] == coder))
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


def _load(run: Path, human: Path, coder: str | None) -> tuple[RunInputs, list[Coding], list[str]]:
    """The run, the human codings (of ``coder`` when given) and the coded transcripts that are in the run."""
    inputs = load_run(run)
    codings, _ = load_coding_file(human, inputs.transcripts, inputs.codebook)
    if coder is not None:
        codings = [c for c in codings if c.coder == coder]
    return inputs, codings, sorted({c.transcript_id for c in codings} & {t.id for t in inputs.transcripts})


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
    inputs, codings, coded = _load(run, human, coder)
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


def _set_files(set_dir: Path) -> tuple[Path, list[Path]]:
    """A set's codebook and transcript files."""
    folder = set_dir / "transcripts" if (set_dir / "transcripts").is_dir() else set_dir
    return set_dir / "codebook.yaml", expand_paths([folder])


def code_with_examples(
    set_dir: Path, sample_csv: Path, test_ids: set[str], out: Path, coder: str | None
) -> RunInputs:
    """Code the ``test_ids`` transcripts of the set generously with worked examples from ``sample_csv``
    (the default local model, its response cache: a rerun makes no model call)."""
    cb_path, files = _set_files(set_dir)
    codebook = Codebook.load(cb_path)
    built = build_model(ModelSettings())
    assert built.profile is not None
    opts = ExtractOptions(chunk_tokens=built.profile.chunk_tokens, concurrency=built.profile.concurrency(4),
                          summary=False, min_confidence=0.0)
    loaded = load_example_bank(sample_csv, files, codebook, coder=coder, k=opts.examples_k)
    opts = opts.model_copy(update={"examples_sha256": loaded.sha256, "examples_coder": coder})
    held_out = [f for f in files if f.stem in test_ids]
    report = run_extraction(held_out, codebook, built.chat, out, options=opts, codebook_path=cb_path,
                            model_info=built.info, examples=loaded)
    if not report.ok:
        raise SystemExit(f"{out}: the run with examples did not finish: {report.errors or report.incomplete}")
    return load_run(out)


def simulate_examples(
    run: Path,
    human: Path,
    set_dir: Path,
    sizes: Sequence[int],
    out_root: Path,
    draws: int = 1,
    coder: str | None = None,
    seed: int = 0,
    n_boot: int = 200,
) -> list[dict[str, Any]]:
    """Per k and draw: held-out kappa of default, calibrated and worked examples on the same held-out set."""
    inputs, codings, coded = _load(run, human, coder)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for k in sizes:
            if k >= len(coded):
                continue
            for draw in range(draws):
                rng = random.Random(f"{seed}-{k}-{draw}")  # a draw per (k, draw), whatever the other sizes
                sample = set(rng.sample(coded, k))
                test = set(coded) - sample
                cal = _calibrate(run, human, sample, coder, tmp, n_boot)
                sample_csv = _subset_csv(human, sample, out_root / f"sample-k{k}-d{draw}.csv", coder)
                ex = code_with_examples(set_dir, sample_csv, test, out_root / f"examples-k{k}-d{draw}", coder)
                ex_kappa = held_out_kappa(ex, codings, test, {}, DEFAULT_THRESHOLD)
                rows.append({
                    "set": run.name,
                    "k": k,
                    "draw": draw,
                    "sample": sorted(sample),
                    "kappa_default": held_out_kappa(inputs, codings, test, {}, DEFAULT_THRESHOLD),
                    "kappa_calibrated": held_out_kappa(inputs, codings, test, cal.thresholds(), DEFAULT_THRESHOLD),
                    "kappa_examples": ex_kappa,
                    "interval_width": mean_width(cal),
                })
    return rows


def render_examples(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the worked-examples rows."""
    lines = ["| set | coded k | draw | sample | held-out kappa, default | calibrated | worked examples | "
             "mean CI width |", "|" + "---|" * 8]
    for r in rows:
        vals = [("-" if r[f] is None else f"{r[f]:.2f}")
                for f in ("kappa_default", "kappa_calibrated", "kappa_examples", "interval_width")]
        lines.append(f"| {r['set']} | {r['k']} | {r['draw']} | {', '.join(r['sample'])} | {' | '.join(vals)} |")
    return "\n".join(lines)


_SERIES = (  # (label, row field, colour, dash)
    ("default threshold (mean of draws)", "kappa_default", "#555555", ""),
    ("calibrated (mean of draws)", "kappa_calibrated", "#1f77b4", ""),
    ("default, examples draw", "ex_default", "#555555", "4 3"),
    ("worked examples (same draw)", "kappa_examples", "#d62728", ""),
)


def _curves(data: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Points per series of one set's JSON (``rows``: the draws' means; ``examples``: the examples draws)."""
    out: dict[str, list[tuple[int, float]]] = {f: [] for _, f, _, _ in _SERIES}
    out["interval_width"] = []
    for r in data.get("rows", []):
        for f in ("kappa_default", "kappa_calibrated", "interval_width"):
            if r[f]["mean"] is not None:
                out[f].append((r["k"], r[f]["mean"]))
    by_k: dict[int, list[dict[str, Any]]] = {}
    for r in data.get("examples", []):
        by_k.setdefault(r["k"], []).append(r)
    for k, rs in sorted(by_k.items()):
        for src, dst in (("kappa_examples", "kappa_examples"), ("kappa_default", "ex_default")):
            vals = [r[src] for r in rs if r[src] is not None]
            if vals:
                out[dst].append((k, statistics.fmean(vals)))
    return out


def figure_svg(sets: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The learning curve: per set, held-out pooled kappa against k (top) and the mean per-code interval
    width of the calibration (bottom). Plain SVG, no plotting library."""
    pw, ph, ml, mt, gap = 300, 190, 52, 34, 40
    width = ml + len(sets) * (pw + gap) + 10
    height = mt + 2 * (ph + gap) + 20 + 18 * len(_SERIES)
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
          f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, (name, data) in enumerate(sets):
        curves = _curves(data)
        ks = sorted({k for pts in curves.values() for k, _ in pts}) or [1, 2]
        k0, k1 = min(ks) - 0.5, max(ks) + 0.5
        x0 = ml + i * (pw + gap)
        for row, (fields, lo, hi, label) in enumerate((
            ([f for _, f, _, _ in _SERIES], 0.4, 1.0, "held-out pooled kappa"),
            (["interval_width"], 0.0, 1.2, "mean per-code CI width"),
        )):
            y0 = mt + row * (ph + gap)

            def px(k: float, x0: float = x0, k0: float = k0, k1: float = k1) -> float:
                return x0 + (k - k0) / (k1 - k0) * pw

            def py(v: float, y0: float = y0, lo: float = lo, hi: float = hi) -> float:
                return y0 + ph - (min(max(v, lo), hi) - lo) / (hi - lo) * ph

            el.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
            if row == 0:
                el.append(f'<text x="{x0 + pw / 2}" y="{y0 - 10}" text-anchor="middle" font-weight="bold">'
                          f'{escape(name)}</text>')
            for t in np.linspace(lo, hi, 4 if row else 7):
                el.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>')
                el.append(f'<text x="{x0 - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
            for k in ks:
                el.append(f'<text x="{px(k):.1f}" y="{y0 + ph + 14}" text-anchor="middle">{k}</text>')
            el.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 28}" text-anchor="middle">'
                      f'human-coded transcripts (k)</text>')
            el.append(f'<text x="{x0 - 36}" y="{y0 + ph / 2}" text-anchor="middle" '
                      f'transform="rotate(-90 {x0 - 36} {y0 + ph / 2})">{label}</text>')
            styles = {f: (c, dash) for _, f, c, dash in _SERIES} | {"interval_width": ("#1f77b4", "")}
            for f in fields:
                pts = curves.get(f, [])
                colour, dash = styles[f]
                if len(pts) > 1:
                    path = " ".join(f"{px(k):.1f},{py(v):.1f}" for k, v in pts)
                    el.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                              + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
                for k, v in pts:
                    el.append(f'<circle cx="{px(k):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}">'
                              f'<title>{f} k={k}: {v:.3f}</title></circle>')
    ly = mt + 2 * (ph + gap) + 6
    drawn = {f for _, data in sets for f, pts in _curves(data).items() if pts}
    for n, (label, _, colour, dash) in enumerate(s for s in _SERIES if s[1] in drawn):  # only series with points
        y = ly + 18 * n
        el.append(f'<line x1="{ml}" x2="{ml + 28}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2"'
                  + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        el.append(f'<text x="{ml + 34}" y="{y + 4}">{escape(label)}</text>')
    el.append("</svg>")
    return "\n".join(el) + "\n"


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
    ap.add_argument("run_dir", type=Path, nargs="?")
    ap.add_argument("human_csv", type=Path, nargs="?")
    ap.add_argument("--sizes", default="2,4,6", help="sample sizes (transcripts human-coded)")
    ap.add_argument("--repeats", type=int, default=20, help="random draws per size")
    ap.add_argument("--coder", default=None, help="the human coder (when the CSV holds several)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--examples", type=Path, default=None, metavar="SET_DIR",
                    help="also re-code the held-out transcripts with worked examples (real model calls)")
    ap.add_argument("--examples-out", type=Path, default=Path("runs/bench-examples"),
                    help="where the runs with examples go (resumable; the response cache answers a rerun)")
    ap.add_argument("--examples-draws", type=int, default=1, help="draws per size for worked examples")
    ap.add_argument("--name", default=None, help="the set's name in the tables and the figure")
    ap.add_argument("--figure", type=Path, default=None, help="write the learning-curve SVG from --from JSONs")
    ap.add_argument("--from", dest="sources", type=Path, nargs="*", default=[], help="--json files to draw")
    a = ap.parse_args()
    if a.figure:
        sets = [(d.get("name", p.stem), d) for p in a.sources for d in [json.loads(p.read_text(encoding="utf-8"))]]
        a.figure.write_text(figure_svg(sets), encoding="utf-8")
        print(f"Written: {a.figure}")
        return
    if a.run_dir is None or a.human_csv is None:
        ap.error("give RUN_DIR and HUMAN_CSV (or --figure SVG --from JSON...)")
    sizes = [int(x) for x in a.sizes.split(",")]
    rows = simulate(a.run_dir, a.human_csv, sizes, a.repeats, a.coder, a.seed, a.bootstrap)
    print(render(rows))
    examples: list[dict[str, Any]] = []
    if a.examples:
        a.examples_out.mkdir(parents=True, exist_ok=True)
        examples = simulate_examples(a.run_dir, a.human_csv, a.examples, sizes, a.examples_out, a.examples_draws,
                                     a.coder, a.seed, a.bootstrap)
        print()
        print(render_examples(examples))
    if a.json:
        doc = {"name": a.name or a.run_dir.name, "rows": rows, "examples": examples}
        a.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
