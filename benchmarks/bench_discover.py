"""How much of the reference codebook inductive discovery recovers from the demo transcripts.

Run: ``python benchmarks/bench_discover.py [--model local] [--replay fixtures/recordings/discover]``
(or ``--from DIR`` to score an existing ``quallm discover`` output). Runs discovery on
``fixtures/demo/`` (the response cache makes a repeat free), then matches every reference code of
``fixtures/demo/codebook.yaml`` ("label: definition") to the discovered themes ("label: description")
with the same embedding model discovery uses (all-MiniLM-L6-v2), same kind only. A reference code is
*recovered* when its best theme scores at least the stated threshold (0.5; the table shows 0.4 and 0.6
too). A theme that matches no reference code at the threshold is *unmatched*: a new theme, a
near-duplicate the merge missed, or noise; read themes.md to tell which.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from quallm.coding.discovery import DiscoverOptions
from quallm.core.codebook import Codebook
from quallm.models.embeddings import MiniLMEmbedder
from quallm.run.discovery import run_discovery

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
THRESHOLD = 0.5
FOCUS = "Safely reducing the need for children to enter care"


def _themes(folder: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    data = json.loads((folder / "themes.json").read_text(encoding="utf-8"))
    return data["themes"], data["info"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="from_dir", type=Path, help="score this discover output instead of running")
    ap.add_argument("--model", default="local")
    ap.add_argument("--replay", type=Path, help="answer from recordings (no model is run)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--merge", default="embedding", choices=["embedding", "embedding+model"])
    ap.add_argument("--similarity", type=float, default=DiscoverOptions().similarity)
    ap.add_argument("--out", type=Path, default=Path("/tmp/quallm-bench-discover"))
    args = ap.parse_args()
    embedder = MiniLMEmbedder()
    folder = args.from_dir
    if folder is None:
        from quallm.models.cache import CachedModel, ResponseCache
        from quallm.models.factory import build_chat_model
        from quallm.models.recording import ReplayModel
        from quallm.models.resolve import resolve_model

        if args.replay:
            model = ReplayModel(args.replay)
        else:
            bare, _ = build_chat_model(resolve_model(args.model))
            model = CachedModel(bare, ResponseCache())
        opts = DiscoverOptions(focus=FOCUS, repeats=args.repeats, merge=args.merge, similarity=args.similarity)
        t0 = time.perf_counter()
        report = run_discovery([DEMO], model, args.out, embedder, options=opts)
        print(f"discovery: {time.perf_counter() - t0:.1f} s, {report.candidates} candidates, "
              f"{len(report.themes)} themes, {report.in_codebook} in the draft codebook, ok={report.ok}")  # fmt: skip
        folder = args.out
    themes, info = _themes(folder)
    print(f"themes from {folder}: model {info['model']}, merge {info['merge']} at {info['similarity']}, "
          f"{info['repeats']} run(s), {info['candidates']} candidates -> {len(themes)} themes")  # fmt: skip
    reference = Codebook.load(DEMO / "codebook.yaml")
    ref_vecs = embedder.embed([f"{c.label}: {c.definition}" for c in reference.codes])
    th_vecs = embedder.embed([f"{t['label']}: {t['description']}" for t in themes])
    same_kind = np.array([[c.kind == t["kind"] for t in themes] for c in reference.codes], dtype=bool)
    sims = np.where(same_kind, ref_vecs @ th_vecs.T, -1.0) if len(themes) else np.zeros((len(reference.codes), 0))
    print(f"\n{'reference code':<22} {'best theme':<46} {'cos':>5} {'transcripts':>11}")
    for i, code in enumerate(reference.codes):
        if sims.shape[1] == 0:
            print(f"{code.id:<22} (no themes)")
            continue
        j = int(np.argmax(sims[i]))
        mark = "" if sims[i, j] >= THRESHOLD else "  (not recovered)"
        label = f"{themes[j]['id']} {themes[j]['label']}"[:46]
        print(f"{code.id:<22} {label:<46} {sims[i, j]:>5.2f} {themes[j]['prevalence']:>11}{mark}")
    min_tr = min(int(str(info["min_transcripts"])), int(str(info["transcripts"])))
    in_draft = np.array([int(str(t["prevalence"])) >= min_tr for t in themes], dtype=bool)
    n_ref = len(reference.codes)
    print(f"\n{'':>9} {'all themes':^28} {'draft codebook (>= ' + str(min_tr) + ' transcripts)':^36}")
    print(f"{'threshold':>9} {'recovered':>12} {'unmatched':>14}   {'recovered':>14} {'unmatched':>18}")
    for thr in (0.4, THRESHOLD, 0.6):
        best_ref = sims.max(axis=1) if sims.shape[1] else np.full(n_ref, -1.0)
        unmatched = (sims.max(axis=0) < thr) if sims.shape[1] else np.zeros(0, dtype=bool)
        draft_sims = sims[:, in_draft] if sims.shape[1] else sims
        draft_rec = int((draft_sims.max(axis=1) >= thr).sum()) if draft_sims.shape[1] else 0
        star = "  <- stated threshold" if thr == THRESHOLD else ""
        rec, unm, draft_unm = int((best_ref >= thr).sum()), int(unmatched.sum()), int((unmatched & in_draft).sum())
        print(f"{thr:>9.2f} {rec:>7}/{n_ref:<4} {unm:>9}/{len(themes):<4}   "
              f"{draft_rec:>9}/{n_ref:<4} {draft_unm:>13}/{int(in_draft.sum()):<4}{star}")  # fmt: skip


if __name__ == "__main__":
    main()
