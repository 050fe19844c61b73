"""How close ``--concurrency`` gets to the ideal against a server with fixed latency.

Run: ``python benchmarks/bench_concurrency.py`` (``--help`` for sizes). The test server answers every
request after ``--latency`` seconds; 48 units (turn strategy, summaries off) are coded in two layouts:
one transcript of 48 units, and 12 transcripts of 4 units. For each concurrency it prints wall time
and the fraction of the ideal, ``sum of latencies / concurrency / wall``.

``run_extraction`` codes transcripts concurrently and the units of each transcript concurrently, with
one cap on requests in flight (``models.limits.LimitedModel``). The last rows run the same 12 transcripts
through the standalone prototype that preceded it, for comparison.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from quallm.coding.extract import ExtractOptions, Extractor
from quallm.core.codebook import Codebook
from quallm.ingest.transcripts import load_transcript
from quallm.models.base import ChatRequest, Completion
from quallm.models.fake_server import Faults, OpenAITestServer
from quallm.models.openai_compat import OpenAICompatModel
from quallm.run.runner import run_extraction

CODEBOOK = Codebook.model_validate(
    {
        "name": "Bench",
        "codes": [
            {"id": "C_money", "kind": "challenge", "label": "Funding", "definition": "Money is short."},
            {"id": "E_help", "kind": "enabler", "label": "Early help", "definition": "Early help works."},
        ],
    }
)


def answer(_body: dict[str, Any]) -> str:
    """A valid per-turn answer (the content does not matter here, only the round trips)."""
    return json.dumps({"codes": [{"code_id": "C_money", "sentence": 1}]})


def write_transcripts(folder: Path, n_transcripts: int, units_each: int) -> list[Path]:
    """``n_transcripts`` files, each with ``units_each`` short respondent turns to code."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_transcripts):
        turns = []
        for j in range(units_each):
            turns += [f"Interviewer: Question {j}?", f"Respondent: Answer {j} of site {i}. The budget is tight."]
        p = folder / f"t{i:03d}.txt"
        p.write_text("\n\n".join(turns) + "\n", encoding="utf-8")
        paths.append(p)
    return paths


def run_sequential_transcripts(paths: list[Path], model: OpenAICompatModel, concurrency: int, out: Path) -> float:
    """``run_extraction`` as it is: transcripts in turn, units of each in a pool of ``concurrency``."""
    opts = ExtractOptions(strategy="turn", summary=False, concurrency=concurrency)
    t0 = time.perf_counter()
    report = run_extraction(paths, CODEBOOK, model, out, options=opts)
    assert report.ok, report
    return time.perf_counter() - t0


class LimitedModel:
    """Caps requests in flight across every thread (so pooled transcripts x pooled units stay <= the limit)."""

    def __init__(self, inner: OpenAICompatModel, limit: int) -> None:
        self.inner = inner
        self._slots = threading.BoundedSemaphore(max(1, limit))
        self.name, self.endpoint, self.output_mode = inner.name, inner.endpoint, inner.output_mode

    def count_tokens(self, text: str) -> int:
        """The wrapped model's count."""
        return self.inner.count_tokens(text)

    def complete(self, request: ChatRequest) -> Completion:
        """One request, when a slot is free."""
        with self._slots:
            return self.inner.complete(request)


def run_concurrent_transcripts(paths: list[Path], model: OpenAICompatModel, concurrency: int) -> float:
    """Prototype: transcripts in a pool too, with one global cap of ``concurrency`` requests in flight."""
    opts = ExtractOptions(strategy="turn", summary=False, concurrency=concurrency)
    extractor = Extractor(LimitedModel(model, concurrency), CODEBOOK, opts)
    transcripts = [load_transcript(p) for p in paths]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(extractor.extract, transcripts))
    assert all(r.complete for r in results)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each answer")
    ap.add_argument("--units", type=int, default=48)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quallm-bench-conc-"))
    layouts = {
        f"1 x {args.units} units": write_transcripts(tmp / "one", 1, args.units),
        f"{args.units // 4} x 4 units": write_transcripts(tmp / "many", args.units // 4, 4),
    }
    ideal_total = args.units * args.latency
    print(f"{args.units} units, {args.latency:.2f} s latency each; ideal wall = {ideal_total:.1f} s / concurrency")
    print(f"{'layout':<38} {'conc':>4} {'wall s':>8} {'ideal s':>8} {'fraction':>8}")
    with OpenAITestServer(answer, Faults(latency=args.latency)) as srv:
        model = OpenAICompatModel("test-model", base_url=srv.base_url, timeout=30)
        for name, paths in layouts.items():
            for c in args.concurrency:
                wall = run_sequential_transcripts(paths, model, c, tmp / f"run-{len(paths)}-{c}")
                ideal = ideal_total / c
                print(f"{name + ' (runner as is)':<38} {c:>4} {wall:>8.2f} {ideal:>8.2f} {ideal / wall:>8.2f}")
        many = layouts[f"{args.units // 4} x 4 units"]
        for c in args.concurrency:
            wall = run_concurrent_transcripts(many, model, c)
            ideal = ideal_total / c
            label = f"{args.units // 4} x 4 (transcripts pooled, capped)"
            print(f"{label:<38} {c:>4} {wall:>8.2f} {ideal:>8.2f} {ideal / wall:>8.2f}")
        print(f"requests served: {len(srv.chat_requests)}")


if __name__ == "__main__":
    main()
