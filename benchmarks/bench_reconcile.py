"""Benchmark reconcile() on synthetic data: 1,000 transcripts x 50 coded turns x 3 coders x 15 codes.

Run: ``python benchmarks/bench_reconcile.py`` (``--help`` for sizes). Prints the time to generate the
data, to reconcile without and with bootstrap CIs, and peak memory (tracemalloc peak of one
reconcile call, and the process's peak RSS).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np

from quallm.analysis.agreement import reconcile, write_agreement
from quallm.core.codings import Coding
from quallm.core.transcript import Transcript, Turn

WORDS = [
    "money", "work", "family", "kids", "health", "time", "school", "staff", "food", "rent",
    "job", "care", "help", "house", "bus", "doctor", "friend", "worry", "plan", "hope",
]


def make_data(
    n_transcripts: int, n_turns: int, n_codes: int, n_humans: int, seed: int
) -> tuple[list[Transcript], list[Coding], list[str]]:
    """Transcripts alternating interviewer and participant turns (``n_turns`` participant turns each),
    and codings of ``n_humans`` humans plus one machine coder, noisy copies of a hidden truth."""
    rng = np.random.default_rng(seed)
    codes = [f"code{k:02d}" for k in range(n_codes)]
    prevalence = rng.uniform(0.02, 0.15, size=n_codes)  # sparse codes, as in real codebooks
    coders = [f"human{i}" for i in range(n_humans)] + ["quallm-bench"]
    transcripts: list[Transcript] = []
    codings: list[Coding] = []
    for ti in range(n_transcripts):
        tid = f"T{ti:04d}"
        parts: list[str] = []
        turns: list[Turn] = []
        pos = 0
        for k in range(2 * n_turns):
            speaker = "Interviewer" if k % 2 == 0 else "Participant"
            words = rng.choice(WORDS, size=int(rng.integers(5, 25)))
            said = " ".join(words).capitalize() + "."
            prefix = f"{speaker}: "
            start = pos + len(prefix)
            turns.append(Turn(index=k, speaker=speaker, start=start, end=start + len(said), text=said,
                              is_interviewer=k % 2 == 0))
            parts.append(prefix + said)
            pos = start + len(said) + 1  # newline
        text = "\n".join(parts)
        transcripts.append(Transcript(id=tid, source=f"{tid}.txt", format="txt", text=text, turns=tuple(turns)))
        truth = rng.random((n_turns, n_codes)) < prevalence
        for coder in coders:
            machine = coder.startswith("quallm")
            miss, extra = (0.2, 0.02) if machine else (0.1, 0.01)
            marks = np.where(truth, rng.random(truth.shape) > miss, rng.random(truth.shape) < extra)
            for p, c in zip(*np.nonzero(marks), strict=True):
                turn = turns[2 * int(p) + 1]
                end = min(turn.end, turn.start + 30)  # a quote: the start of the turn
                codings.append(Coding(
                    transcript_id=tid, coder=coder, code_id=codes[int(c)], start=turn.start, end=end,
                    turn_index=turn.index, quote=text[turn.start:end],
                    alignment="exact" if machine else "human",
                    rationale="synthetic" if machine else None,
                    confidence=float(rng.uniform(0.5, 1.0)) if machine else None,
                ))
    return transcripts, codings, codes


def main(argv: list[str] | None = None) -> int:
    """Generate, reconcile (n_boot=0 and n_boot=--boot), print timings and memory."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--transcripts", type=int, default=1000)
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--codes", type=int, default=15)
    ap.add_argument("--humans", type=int, default=2, help="human coders (one machine coder is added)")
    ap.add_argument("--boot", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", help="also write the report files into this folder and time it")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    transcripts, codings, codes = make_data(args.transcripts, args.turns, args.codes, args.humans, args.seed)
    t_gen = time.perf_counter() - t0
    print(f"data: {len(transcripts)} transcripts x {args.turns} coded turns x {args.humans + 1} coders x "
          f"{len(codes)} codes; {len(codings)} codings; generated in {t_gen:.2f} s")

    for n_boot in [0, *args.boot]:
        t0 = time.perf_counter()
        report = reconcile(transcripts, codings, codes, unit="turn", n_boot=n_boot, seed=args.seed)
        dt = time.perf_counter() - t0
        micro = report.pairs[0].micro
        print(f"reconcile n_boot={n_boot:<5d} {dt:6.2f} s   ({report.n_units} units, {len(report.pairs)} pairs, "
              f"{len(report.disagreements)} disagreements; {report.pairs[0].pair} micro kappa "
              f"{micro.kappa.value:.4f} CI {micro.kappa.ci_low} - {micro.kappa.ci_high})")

    n_boot = args.boot[0]
    tracemalloc.start()
    reconcile(transcripts, codings, codes, unit="turn", n_boot=n_boot, seed=args.seed)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak memory allocated during one reconcile (n_boot={n_boot}, tracemalloc): {peak / 2**20:.1f} MiB")
    if args.write:
        t0 = time.perf_counter()
        write_agreement(report, args.write)
        print(f"write_agreement: {time.perf_counter() - t0:.2f} s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
    print(f"process peak RSS (includes the generated data): {rss_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
