"""Turn-level agreement of quallm's coding with a set's human coding, its confidence and its speed.

A *set* is a folder with ``codebook.yaml``, a human coding file (``human_coding.csv`` or
``gold_coding.csv``), ``metadata.csv`` (optional) and the transcripts (in ``transcripts/`` or the folder
itself). Runs extraction with the library's own pipeline and prints pooled turn-level Cohen's kappa with
its bootstrap CI, precision and recall against the reference coder, per-code figures, the human ceiling
where the set has two human coders, seconds per 1,000 transcript tokens, the AUC of the coding
probability between right and wrong proposals, a threshold sweep, and (with ``--summary``) the share of
summary points with model prose and the share of prose sentences closest (MiniLM) to their own code.

    python benchmarks/bench_local_quality.py fixtures/demo                     # the 1.5B default
    python benchmarks/bench_local_quality.py ../shared/eval/dev-la --summary
    python benchmarks/bench_local_quality.py fixtures/demo --max-codes 2 --no-verify   # the old pipeline

Answers come from the response cache when present (``--no-cache`` to time cold): a second run with
another ``--min-confidence`` makes no model call. ``--dump FILE`` writes every proposal with its
probability and whether the reference coder has that code on that turn. ``--also-yesno`` asks the yes/no
check of every proposal as well and compares, on the same proposals, the AUC and threshold sweep of the
token probability, of P(yes) and of their product (``--scoring both``); the dump then holds ``p_yes``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quallm.analysis.agreement import read_human_csv, reconcile
from quallm.coding.extract import ExtractOptions, Extractor
from quallm.core.codebook import Codebook
from quallm.core.codings import Coding
from quallm.core.results import TranscriptResult
from quallm.core.transcript import Transcript
from quallm.ingest.transcripts import expand_paths, load_metadata, load_transcript
from quallm.models.factory import build_chat_model
from quallm.models.resolve import resolve_model


def _set_files(root: Path) -> tuple[Path, Path, Path | None, list[Path]]:
    human = next((root / n for n in ("human_coding.csv", "gold_coding.csv") if (root / n).is_file()), None)
    if human is None:
        raise SystemExit(f"{root}: no human_coding.csv or gold_coding.csv")
    meta = root / "metadata.csv"
    folder = root / "transcripts" if (root / "transcripts").is_dir() else root
    paths = [p for p in expand_paths([folder]) if p.suffix != ".json" and p.suffix != ".csv"]
    return root / "codebook.yaml", human, meta if meta.is_file() else None, paths


def auc(scores_right: list[float], scores_wrong: list[float]) -> float | None:
    """Probability that a right proposal outscores a wrong one (ties count half); None if a side is empty."""
    if not scores_right or not scores_wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in scores_right for w in scores_wrong)
    return wins / (len(scores_right) * len(scores_wrong))


def _f(x: float | None) -> str:
    return "undef" if x is None else f"{x:.2f}"


def _score(
    transcripts: list[Transcript], machine: list[Coding], human: list[Coding], codes: list[str], coder: str,
    reference: str, n_boot: int,
) -> Any:
    ids = {t.id for t in transcripts}
    humans = sorted({c.coder for c in human})
    coverage = {coder: ids, **{h: ids for h in humans}}
    return reconcile(
        transcripts, machine + human, codes, unit="turn", n_boot=n_boot, machine_coders=[coder],
        coverage=coverage, reference=reference,
    )


_STOP = frozenset({
    "and", "the", "for", "with", "from", "into", "over", "that", "this", "their", "them", "they", "than",
    "then", "what", "when", "where", "which", "while", "about", "other", "more", "most", "less", "very",
    "such", "only", "also", "some", "work", "working",
})


def _stems(text: str) -> set[str]:
    # Five-letter prefixes: "budgets"/"budget", "fostering"/"foster" match; a crude but honest stemmer.
    return {w[:5] for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in _STOP}


def keyword_baseline(transcripts: list[Transcript], codebook: Codebook) -> list[Coding]:
    """The baseline the issue names: a code on every answer that contains its label's words.

    A code applies to a respondent turn when at least half of its label's content words (4+ letters,
    not stop words, compared on 5-letter prefixes) occur in the turn. No model, no definitions.
    """
    out = []
    labels = {c.id: _stems(c.label) for c in codebook.codes if c.codable}
    for t in transcripts:
        for turn in t.coded_turns():
            words = _stems(turn.text)
            for cid, lab in labels.items():
                if lab and 2 * len(lab & words) >= len(lab):
                    out.append(Coding(transcript_id=t.id, coder="keywords", code_id=cid, start=turn.start,
                                      end=turn.end, turn_index=turn.index, alignment="exact"))
    return out


def _prose_shares(results: list[TranscriptResult], codebook: Codebook) -> tuple[float, float, int, int]:
    """(share of points with model prose, share of prose sentences closest to their own code, points, sentences)."""
    from quallm.models.embeddings import MiniLMEmbedder

    points = [p for r in results if r.summary for p in (*r.summary.challenges, *r.summary.enablers)]
    prose = [p for p in points if p.summary and not p.summary.startswith("(")]
    sentences = [(p.code_id, s) for p in prose for s in re.split(r"(?<=[.!?])\s+", p.summary.strip()) if s.strip()]
    if not sentences:
        return len(prose) / max(1, len(points)), 0.0, len(points), 0
    emb = MiniLMEmbedder()
    defs = emb.embed([f"{c.label}: {c.definition}" for c in codebook.codes])
    sent = emb.embed([s for _, s in sentences])
    sims = sent @ defs.T
    ids = list(codebook.ids)
    own = sum(ids[int(row.argmax())] == cid for row, (cid, _) in zip(sims, sentences, strict=True))
    return len(prose) / max(1, len(points)), own / len(sentences), len(points), len(sentences)


def _yes_probabilities(
    extractor: Extractor, model: Any, transcripts: list[Transcript], proposals: list[Coding]
) -> dict[int, float]:
    """P(yes) of the yes/no check (``verify_turn``) for every proposal, keyed by ``id(coding)``."""
    by_id = {t.id: t for t in transcripts}
    out: dict[int, float] = {}
    for c in proposals:
        t = by_id[c.transcript_id]
        segs = [s for ch in extractor._chunk(t, extractor.options.unit_tokens) for s in ch.coded_segments]
        seg = next(s for s in segs if s.turn_index == c.turn_index and s.start <= c.start < s.start + len(s.text))
        done = model.complete(extractor.verify_request(t, seg, c.code_id))
        p = (done.choice_probs or {}).get("yes")
        if p is not None:
            out[id(c)] = float(p)
    return out


def _sweep(
    transcripts: list[Transcript], proposals: list[Coding], score: Callable[[Coding], float | None],
    thresholds: Sequence[float], human: list[Coding], codes: list[str], coder: str, reference: str, indent: str,
) -> None:
    """Print pooled kappa, P, R and the number of codings kept at each threshold of ``score`` (a proposal
    without a score is always kept)."""
    for th in thresholds:
        kept = [c for c in proposals if (p := score(c)) is None or p >= th]
        rep = _score(transcripts, kept, human, codes, coder, reference, 0) if kept else None
        pair = next((x for x in rep.pairs if {coder, reference} == {x.coder_a, x.coder_b}), None) if rep else None
        if pair is None:
            print(f"{indent}{th:.1f} (no codings)")
            continue
        m = pair.micro
        print(f"{indent}{th:.1f} {_f(m.kappa.value)} {_f(m.precision.value)} {_f(m.recall.value)} {len(kept)}")


def _compare_scorings(
    transcripts: list[Transcript], proposals: list[Coding], p_yes: dict[int, float],
    right: list[tuple[Coding, bool]], human: list[Coding], codes: list[str], coder: str, reference: str,
) -> None:
    """AUC and threshold sweep of the token probability, P(yes), and their product, on the same proposals."""
    scorings = {
        "tokens": lambda c: c.probability,
        "yes/no": lambda c: p_yes.get(id(c)),
        "product": lambda c: None if c.probability is None or id(c) not in p_yes else c.probability * p_yes[id(c)],
    }
    print("\nscorings compared on the same proposals:  threshold kappa P R codings")
    for name, score in scorings.items():
        scored = [(score(c), ok) for c, ok in right if score(c) is not None]
        a = auc([p for p, ok in scored if ok], [p for p, ok in scored if not ok])
        print(f"  {name}: AUC {_f(a)}")
        ths = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
        _sweep(transcripts, proposals, score, ths, human, codes, coder, reference, "    ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", type=Path, help="the evaluation set's folder")
    ap.add_argument("--model", default="local")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--strategy", default="turn", choices=["turn", "chunk"])
    ap.add_argument("--min-words", type=int, default=None, help="answers of fewer words are not coded")
    ap.add_argument("--none-code", action=argparse.BooleanOptionalAction, default=None,
                    help="offer an explicit 'none' choice (default: the library's)")
    ap.add_argument("--max-codes", default=None, help="codes an answer may get: N or auto (default: the library's)")
    ap.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                    help="yes/no verification of each proposal (default: the library's)")
    ap.add_argument("--scoring", choices=["tokens", "yesno", "both"], default=None, help="how probabilities are read")
    ap.add_argument("--min-confidence", type=float, default=None, help="probability threshold (default: library's)")
    ap.add_argument("--summary", action="store_true", help="also write summaries and score their prose")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the library's, 0)")
    ap.add_argument("--seed", type=int, default=None, help="sampling seed (several seeds and --dump: a vote)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N transcripts")
    ap.add_argument("--no-cache", action="store_true", help="answer every request afresh (to time it)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--replay", type=Path, default=None, help="answer from these recordings (no model)")
    ap.add_argument("--dump", type=Path, default=None, help="write every proposal as JSON here")
    ap.add_argument("--also-yesno", action="store_true",
                    help="also ask the yes/no check of every proposal and compare the two probabilities and "
                         "their product (one scoring request per proposal)")
    args = ap.parse_args()

    codebook_path, human_path, meta_path, paths = _set_files(args.set)
    choice = resolve_model(args.model, model_path=args.model_path)
    model: Any
    if args.replay:
        from quallm.models.recording import ReplayModel

        model, info = ReplayModel(args.replay), {"file": f"replay of {args.replay}"}
    else:
        model, info = build_chat_model(choice)
    if not args.no_cache and not args.replay:
        from quallm.models.cache import CachedModel, ResponseCache

        model = CachedModel(model, ResponseCache())
    codebook = Codebook.load(codebook_path)
    meta = load_metadata(meta_path) if meta_path else {}
    transcripts = [load_transcript(p, meta.get(p.stem)) for p in paths]
    if args.limit:
        transcripts = transcripts[: args.limit]
    fields = ExtractOptions.model_fields
    opts: dict[str, Any] = {"strategy": args.strategy, "summary": args.summary}
    if args.max_codes is not None:
        opts["max_codes_per_unit"] = args.max_codes if args.max_codes == "auto" else int(args.max_codes)
    if args.none_code is not None:
        opts["none_code"] = args.none_code
    if args.min_words is not None:
        opts["min_unit_words"] = args.min_words
    if args.verify is not None and "verify" in fields:
        opts["verify"] = args.verify
    if args.scoring is not None:
        opts["scoring"] = args.scoring
    if args.temperature is not None:
        opts["temperature"] = args.temperature
    if args.seed is not None:
        opts["seed"] = args.seed
    if args.min_confidence is not None and "min_confidence" in fields:
        opts["min_confidence"] = args.min_confidence
    options = ExtractOptions(**opts)
    extractor = Extractor(model, codebook, options)

    t0 = time.perf_counter()
    results = [extractor.extract(t) for t in transcripts]
    seconds = time.perf_counter() - t0
    tokens = sum(model.count_tokens(t.text) for t in transcripts)
    machine = [c for r in results for c in r.codings]
    proposals = machine + [c for r in results for c in getattr(r, "candidates", [])]

    human, problems = read_human_csv(human_path, transcripts, codebook.ids)
    ids = {t.id for t in transcripts}
    problems = [p for p in problems if not any(f"'{i}'" in p for i in ids) or "unknown transcript" not in p]
    if problems and not args.limit:
        print("human coding problems:", *problems, sep="\n  ")
    humans = sorted({c.coder for c in human})
    reference = "coder_a" if "coder_a" in humans else humans[0]
    codes = list(codebook.ids)
    report = _score(transcripts, machine, human, codes, extractor.coder, reference, args.bootstrap)

    gold = {(c.transcript_id, c.turn_index, c.code_id) for c in human if c.coder == reference}
    right = [(c, (c.transcript_id, c.turn_index, c.code_id) in gold) for c in proposals]
    probs = [(c.probability, ok) for c, ok in right if c.probability is not None]
    a = auc([p for p, ok in probs if ok], [p for p, ok in probs if not ok])

    t1 = time.perf_counter()
    p_yes = _yes_probabilities(extractor, model, transcripts, proposals) if args.also_yesno else {}
    yes_seconds = time.perf_counter() - t1
    if args.dump:
        args.dump.write_text(json.dumps({
            "proposals": [
                {**c.model_dump(mode="json"), "right": ok, "reported": c in machine, "p_yes": p_yes.get(id(c))}
                for c, ok in right
            ],
            "gold": sorted([list(g) for g in gold]),
            "turns": sum(r.n_coded_units for r in results),
        }, indent=1))
    print(f"set: {args.set}  model: {info.get('file') or choice.model}  strategy: {extractor.strategy}")
    print(f"options: {options.model_dump(exclude={'concurrency'})}")
    print(f"transcripts: {len(transcripts)}  respondent turns coded: {sum(r.n_coded_units for r in results)}")
    print(
        f"codings reported: {len(machine)}  proposals (with candidates): {len(proposals)}  "
        f"failed units: {sum(len(r.failures) for r in results)}  calls: {sum(r.calls for r in results)}  "
        f"completion tokens: {sum(r.usage.completion_tokens for r in results)}"
    )
    print(f"time: {seconds:.1f} s for {tokens} transcript tokens = {1000 * seconds / max(1, tokens):.1f} s per 1,000"
          + (" (answers from the cache count as free: use --no-cache to time)" if not args.no_cache else ""))
    print(f"probability AUC (right vs wrong proposals): {_f(a)}  "
          f"({sum(ok for _, ok in probs)} right, {sum(not ok for _, ok in probs)} wrong with a probability)")
    for p in report.pairs:
        print(f"\n{p.pair} ({p.kind}), {p.n_units} turns")
        print(f"  {'code':24} {'kappa':>6} {'CI':>13} {'P':>6} {'R':>6} {'F1':>6} {'n_ref':>5}")
        for s in (p.micro, p.macro, *p.codes):
            ci = f"[{_f(s.kappa.ci_low)},{_f(s.kappa.ci_high)}]"
            print(f"  {s.code:24} {_f(s.kappa.value):>6} {ci:>13} {_f(s.precision.value):>6} "
                  f"{_f(s.recall.value):>6} {_f(s.f1.value):>6} {s.marked_a if s.marked_a is not None else '':>5}")

    kw = _score(transcripts, keyword_baseline(transcripts, codebook), human, codes, "keywords", reference, 0)
    kw_pair = next((x for x in kw.pairs if {"keywords", reference} == {x.coder_a, x.coder_b}), None)
    if kw_pair is not None:
        m = kw_pair.micro
        print(f"\nkeyword baseline (label words in the answer): kappa {_f(m.kappa.value)} "
              f"P {_f(m.precision.value)} R {_f(m.recall.value)}")

    if probs:
        print("\nthreshold sweep (pooled, machine vs reference):  threshold kappa P R codings")
        _sweep(transcripts, proposals, lambda c: c.probability, (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
               human, codes, extractor.coder, reference, "  ")

    if p_yes:
        # Asked after all the coding, a check cannot reuse its answer's KV prefix as --scoring yesno/both
        # does inline: time those with --no-cache --scoring both instead.
        print(f"\nyes/no checks: {len(p_yes)} in {yes_seconds:.1f} s (after the coding, without its KV prefix; "
              "answers from the cache count as free)")
        _compare_scorings(transcripts, proposals, p_yes, right, human, codes, extractor.coder, reference)

    if args.summary:
        share, own, n_points, n_sent = _prose_shares(results, codebook)
        print(f"\nsummaries: {share:.2f} of {n_points} points carry model prose; "
              f"{own:.2f} of {n_sent} prose sentences are closest to their own code's definition")


if __name__ == "__main__":
    main()
