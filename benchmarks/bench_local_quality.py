"""Agreement of the local model's coding with the demo fixtures' human coding, and its speed.

Runs the per-unit strategy over the demo transcripts and prints, per code and pooled, turn-level
Cohen's kappa, precision and recall against each human coder (and human vs human for the ceiling),
the share of codings grounded, and seconds per 1,000 transcript tokens.

    python benchmarks/bench_local_quality.py --model local          # the 1.5B default
    python benchmarks/bench_local_quality.py --model local:small    # the 0.5B model
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from quallm.agreement import read_human_csv, reconcile
from quallm.codebook import Codebook
from quallm.extract import ExtractOptions, Extractor
from quallm.models.factory import build_chat_model
from quallm.models.resolve import resolve_model
from quallm.transcripts import expand_paths, load_metadata, load_transcript

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="local")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--strategy", default="turn", choices=["turn", "chunk"])
    ap.add_argument("--limit", type=int, default=0, help="only the first N transcripts")
    args = ap.parse_args()

    choice = resolve_model(args.model, model_path=args.model_path)
    model, info = build_chat_model(choice)
    codebook = Codebook.load(DEMO / "codebook.yaml")
    meta = load_metadata(DEMO / "metadata.csv")
    paths = [p for p in expand_paths([DEMO]) if p.suffix != ".json"]
    transcripts = [load_transcript(p, meta.get(p.stem)) for p in paths]
    if args.limit:
        transcripts = transcripts[: args.limit]
    extractor = Extractor(model, codebook, ExtractOptions(strategy=args.strategy, summary=False))

    t0 = time.perf_counter()
    machine, ungrounded, failures, calls = [], 0, 0, 0
    for t in transcripts:
        r = extractor.extract(t)
        machine.extend(r.codings)
        ungrounded += len(r.ungrounded)
        failures += len(r.failures)
        calls += r.calls
    seconds = time.perf_counter() - t0
    tokens = sum(model.count_tokens(t.text) for t in transcripts)

    human, problems = read_human_csv(DEMO / "human_coding.csv", transcripts, codebook.ids)
    assert not problems, problems
    ids = {t.id for t in transcripts}
    human = [c for c in human if c.transcript_id in ids]
    report = reconcile(
        transcripts,
        machine + human,
        codebook.ids,
        unit="turn",
        n_boot=0,
        machine_coders=[extractor.coder],
        coverage={extractor.coder: ids, "coder_a": ids, "coder_b": ids},
    )

    def f(x: float | None) -> str:
        return "undef" if x is None else f"{x:.2f}"

    print(f"model: {info.get('file') or choice.model}  strategy: {extractor.strategy}  transcripts: {len(transcripts)}")
    print(
        f"codings: {len(machine)}  ungrounded dropped: {ungrounded}  grounded share: "
        f"{len(machine) / max(1, len(machine) + ungrounded):.2f}  failed units: {failures}  calls: {calls}"
    )
    print(
        f"time: {seconds:.1f} s for {tokens} transcript tokens = "
        f"{1000 * seconds / max(1, tokens):.1f} s per 1,000 tokens"
    )
    for p in report.pairs:
        print(f"\n{p.pair} ({p.kind}), {p.n_units} turns")
        print(f"  {'code':22} {'kappa':>6} {'P':>6} {'R':>6} {'F1':>6}  (a = reference)")
        for s in (p.micro, p.macro, *p.codes):
            print(
                f"  {s.code:22} {f(s.kappa.value):>6} {f(s.precision.value):>6} {f(s.recall.value):>6} "
                f"{f(s.f1.value):>6}"
            )


if __name__ == "__main__":
    main()
