"""Peak memory of ``run_extraction`` over N short synthetic transcripts: is it flat in N?

Run: ``python benchmarks/bench_memory.py`` (``--n 100 1000``). Each N runs in a fresh subprocess (so
``ru_maxrss``, the process's peak RSS, is that run's alone) with an in-process model that answers at
once and keeps nothing (FakeModel keeps every request, which would itself grow with N). Prints wall
time, tracemalloc's peak of Python allocations during the run, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from quallm.coding.extract import ExtractOptions
from quallm.core.codebook import Codebook
from quallm.models.base import ChatRequest, Completion, OutputMode, Usage
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


class InstantModel:
    """Answers every request at once with a valid answer; remembers nothing."""

    name = "instant"
    endpoint = "bench"
    output_mode = OutputMode.JSON_SCHEMA

    def count_tokens(self, text: str) -> int:
        """Words, as FakeModel counts them."""
        return len(text.split())

    def complete(self, request: ChatRequest) -> Completion:
        """One code on sentence 1 for a unit; a one-point summary for a summary."""
        if request.schema_name == "summary":
            point = {"code_id": "C_money", "summary": "s", "quote_ids": [1]}
            content = json.dumps({"narrative": "They spoke of money.", "points": [point]})
        else:
            content = json.dumps({"codes": [{"code_id": "C_money", "sentence": 1}]})
        return Completion(content=content, usage=Usage(prompt_tokens=100, completion_tokens=10), model=self.name)


def write_transcripts(folder: Path, n: int) -> None:
    """``n`` short transcripts of 3 question-answer pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        turns = []
        for j in range(3):
            turns += [f"Interviewer: Question {j}?", f"Respondent: The budget is short at site {i}. Answer {j}."]
        (folder / f"t{i:05d}.txt").write_text("\n\n".join(turns) + "\n", encoding="utf-8")


def measure(n: int) -> dict[str, float]:
    """One run of ``n`` transcripts in this process."""
    tmp = Path(tempfile.mkdtemp(prefix="quallm-bench-mem-"))
    write_transcripts(tmp / "in", n)
    opts = ExtractOptions(strategy="turn", concurrency=1)
    tracemalloc.start()
    t0 = time.perf_counter()
    report = run_extraction([tmp / "in"], CODEBOOK, InstantModel(), tmp / "run", options=opts)
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.ok and len(report.done) == n
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    return {"n": n, "wall_s": wall, "tracemalloc_peak_mb": peak / 1e6, "ru_maxrss_mb": rss_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: measure one N
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one)))
        return
    print(f"{'N':>6} {'wall s':>8} {'tracemalloc peak MB':>20} {'peak RSS MB':>12}")
    for n in args.n:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:>6} {m['wall_s']:>8.1f} {m['tracemalloc_peak_mb']:>20.1f} {m['ru_maxrss_mb']:>12.1f}")


if __name__ == "__main__":
    main()
