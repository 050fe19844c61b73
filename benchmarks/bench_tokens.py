"""Prompt tokens sent per transcript token, per strategy, and whether the instructions form a cacheable prefix.

Run: ``python benchmarks/bench_tokens.py`` (``--chunk-tokens N``, ``--encoding``, ``--joined`` to code
the five demo interviews joined as one interview of typical length). Builds the exact
unit requests the Extractor sends for the demo transcripts and codebook (``fixtures/demo/``), counts
them with tiktoken (o200k by default; chat framing included, response schema counted as compact JSON),
and checks whether the system message (instructions + codebook) is byte-identical across requests, so
that providers' prefix caches and llama.cpp's KV reuse can serve it. No model is called.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from quallm.coding.extract import ExtractOptions, Extractor
from quallm.core.codebook import Codebook
from quallm.core.transcript import Transcript
from quallm.ingest.tokenizers import TiktokenTokenizer
from quallm.ingest.transcripts import load_transcripts
from quallm.models.base import OutputMode
from quallm.models.profile import REMOTE_CHUNK_TOKENS
from quallm.run.batch_api import chat_body, job_requests
from quallm.run.estimate import _TokenizerOnly, estimate, prompt_tokens

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"


def _common_prefix(texts: list[str]) -> str:
    """The longest string every text starts with."""
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _joined(transcripts: list[Transcript], folder: Path) -> list[Transcript]:
    """The demo interviews joined into one, as long as a typical hour-long interview (about 8,500 tokens)."""
    path = folder / "joined_interview.txt"
    path.write_text("\n\n".join(t.text for t in transcripts), encoding="utf-8")
    return [t for t in load_transcripts([path]) if isinstance(t, Transcript)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk-tokens", type=int, default=REMOTE_CHUNK_TOKENS)
    ap.add_argument("--no-pack", action="store_true", help="one transcript per request (no packing)")
    ap.add_argument("--encoding", default="o200k_base")
    ap.add_argument(
        "--joined", action="store_true", help="code the five demo interviews joined as one hour-long interview"
    )
    args = ap.parse_args()
    tok = TiktokenTokenizer(args.encoding)
    codebook = Codebook.load(DEMO / "codebook.yaml")
    transcripts = [t for t in load_transcripts([DEMO]) if isinstance(t, Transcript)]
    if args.joined:
        import tempfile

        transcripts = _joined(transcripts, Path(tempfile.mkdtemp()))
    transcript_tokens = sum(tok.count(t.text) for t in transcripts)
    what = "joined demo transcript" if args.joined else "demo transcripts"
    print(f"{len(transcripts)} {what}, {transcript_tokens:,} transcript tokens ({args.encoding}); "
          f"codebook {codebook.name!r}, {len(codebook.codes)} codes")  # fmt: skip
    print(f"{'strategy':<22} {'requests':>8} {'prompt tok':>10} {'per tr. tok':>11} {'system tok':>10} "
          f"{'system share':>12} {'distinct systems':>16}")  # fmt: skip
    for strategy in ("chunk", "turn"):
        opts = ExtractOptions(strategy=strategy, chunk_tokens=args.chunk_tokens, pack=not args.no_pack)
        # A stand-in with gpt-4o's name (o200k); the endpoint is remote, as for a provider's prefix cache.
        extractor = Extractor(_TokenizerOnly("gpt-4o", "api.openai.com", tok), codebook, opts)
        requests = [r for _, r in job_requests(extractor, transcripts)]
        total = sum(prompt_tokens(r, tok) for r in requests)
        systems = {hashlib.sha256(r.messages[0].content.encode()).hexdigest() for r in requests}
        system_tokens = tok.count(requests[0].messages[0].content)
        packing = "" if args.no_pack else ", packed"
        label = strategy + (f" ({args.chunk_tokens}{packing})" if strategy == "chunk" else "")
        print(f"{label:<22} {len(requests):>8} {total:>10,} {total / transcript_tokens:>11.2f} {system_tokens:>10,} "
              f"{system_tokens * len(requests) / total:>12.0%} {len(systems):>16}")  # fmt: skip
        if len(systems) == 1:
            print(f"  {strategy}: the system message (instructions + codebook) is byte-identical in all "
                  f"{len(requests)} requests: one shared prefix of {system_tokens:,} tokens")  # fmt: skip
        else:
            print(f"  {strategy}: {len(systems)} different system messages: the prefix is NOT shared")
        # Servers without strict json_schema get the schema appended to the system message (json_object/plain).
        sent = [chat_body(r, OutputMode.JSON_OBJECT)["messages"][0]["content"] for r in requests]
        common = _common_prefix(sent)
        print(f"  {strategy}, json_object fallback: {len(set(sent))} distinct system messages as sent; common prefix "
              f"{tok.count(common):,} tokens (the per-request schema bounds follow it)")  # fmt: skip
        # The per-transcript summaries are separate requests (their evidence size is an estimate's assumption).
        est = estimate(transcripts, codebook, "gpt-4o", opts.model_copy(update={"summary": True}))
        no_reask = est.assumptions.reask_rate
        with_summaries = est.prompt_tokens / (1 + no_reask)
        print(f"  {strategy}, with the per-transcript summaries (estimated, --no-summary drops them): "
              f"{with_summaries / transcript_tokens:.2f} prompt tokens per transcript token")  # fmt: skip


if __name__ == "__main__":
    main()
