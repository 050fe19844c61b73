"""CSV and JSON exports of a run's codings and summaries (the .qdpx export lives in ``qdpx``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from quallm.core.csvsafe import SafeWriter
from quallm.run.rundir import RunDir, atomic_write_text


def export_tables(run_dir: str | Path, out_dir: str | Path, fmt: str) -> list[Path]:
    """Write ``codings.<fmt>`` and ``summaries.<fmt>`` (fmt ``csv`` or ``json``) for a run."""
    run = RunDir(run_dir)
    results = run.results()
    out = Path(out_dir)
    if fmt == "json":
        codings = [c.model_dump(mode="json") for r in results for c in r.codings]
        summaries = [
            {
                "transcript_id": r.transcript_id,
                "metadata": r.metadata,
                "complete": r.complete,
                "summary": r.summary.model_dump(mode="json") if r.summary else None,
            }
            for r in results
        ]
        paths = [out / "codings.json", out / "summaries.json"]
        atomic_write_text(paths[0], json.dumps(codings, indent=1, ensure_ascii=False) + "\n")
        atomic_write_text(paths[1], json.dumps(summaries, indent=1, ensure_ascii=False) + "\n")
        return paths
    run.write_outputs(results)  # codings.csv (and summaries.md) in the run itself
    buf = io.StringIO()
    w = SafeWriter(buf)  # text cells neutralised against formula injection
    w.writerow(["transcript_id", "section", "code_id", "label", "text", "quote", "start", "end"])
    for r in results:
        if r.summary is None:
            continue
        w.writerow([r.transcript_id, "narrative", "", "", r.summary.narrative, "", "", ""])
        for p in r.summary.points:
            if not p.quotes:
                w.writerow([r.transcript_id, p.kind, p.code_id, p.label, p.summary, "", "", ""])
            for q in p.quotes:
                w.writerow([r.transcript_id, p.kind, p.code_id, p.label, p.summary, q.text, q.start, q.end])
    paths = [out / "codings.csv", out / "summaries.csv"]
    if out.resolve() != run.path.resolve():
        atomic_write_text(paths[0], (run.path / "codings.csv").read_text(encoding="utf-8"))
    atomic_write_text(paths[1], buf.getvalue())
    return paths
