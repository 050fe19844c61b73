"""Coding time of two quallm trees side by side: one transcript at a time, alternating, cold cache.

Run: ``python benchmarks/bench_coding_ab.py BASE_TREE [--new NEW_TREE] [--set fixtures/demo]``.

``BASE_TREE`` is a checkout of an earlier commit (``git worktree add --detach /tmp/base COMMIT``).
Each transcript of the set is coded by ``quallm extract`` from both trees (its own ``src/``, the same
Python environment), with summaries, exactly as ``demo.sh`` does, from an empty response cache
(``$QUALLM_CACHE`` pointed at a fresh file), so every answer is generated. The order alternates per
transcript (base first, then new first, ...), so slow drifts in the machine's load hit both trees
alike; each side's own ``fixtures/`` copy of the set is used, i.e. what that commit coded. Prints per
transcript the wall seconds of each side (model load included, the same for both), the requests and
generated tokens from each run's manifest, and the totals with their ratio new / base.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUFFIXES = {".txt", ".md", ".vtt", ".srt", ".docx", ".json"}


def run_one(tree: Path, transcript: Path, codebook: Path, work: Path) -> tuple[float, dict[str, object]]:
    """Wall seconds of one ``quallm extract`` of one transcript from ``tree``, and its manifest counts."""
    out = work / "run"
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), QUALLM_CACHE=str(work / "cache.sqlite3"))
    cmd = [sys.executable, "-c", "from quallm.cli import app; app()", "extract", str(transcript),
           "--codebook", str(codebook), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: extract {transcript.name} failed:\n{proc.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return wall, dict(manifest.get("counts") or {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="checkout of the earlier commit")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1], help="this tree by default")
    ap.add_argument("--set", default="fixtures/demo", help="set folder, relative to each tree")
    ap.add_argument("--codebook", default="codebook.yaml", help="codebook file inside the set")
    args = ap.parse_args()
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    names = sorted(p.name for p in (trees["new"] / args.set).iterdir() if p.suffix in SUFFIXES and p.is_file())
    names = [n for n in names if not n.startswith(("metadata", "human", "gold"))]
    totals = {"base": 0.0, "new": 0.0}
    print(f"{'transcript':28} {'base s':>8} {'new s':>8}  base calls/gen tokens  new calls/gen tokens")
    for i, name in enumerate(names):
        order = ("base", "new") if i % 2 == 0 else ("new", "base")
        row: dict[str, tuple[float, dict[str, object]]] = {}
        for side in order:
            tree = trees[side]
            with tempfile.TemporaryDirectory(prefix=f"ab-{side}-") as tmp:
                row[side] = run_one(tree, tree / args.set / name, tree / args.set / args.codebook, Path(tmp))
            totals[side] += row[side][0]

        def counts(side: str, row: dict[str, tuple[float, dict[str, object]]] = row) -> str:
            c = row[side][1]
            return f"{c.get('model_calls', '?')}/{c.get('completion_tokens', '?')}"

        print(f"{name:28} {row['base'][0]:8.1f} {row['new'][0]:8.1f}  {counts('base'):>20}  {counts('new'):>20}",
              flush=True)
    ratio = totals["new"] / totals["base"]
    print(f"{'total':28} {totals['base']:8.1f} {totals['new']:8.1f}  ratio new/base {ratio:.2f}")


if __name__ == "__main__":
    main()
