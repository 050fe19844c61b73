"""Speed of the local backend against llama-cpp-python called directly, and the prefix-cache gain.

One fixed prompt (a ~300-token system prompt and a short excerpt), temperature 0, max_tokens 128,
JSON-schema constrained, is run through ``LocalLlamaModel.complete`` and through
``Llama.create_chat_completion(response_format=...)`` on the same loaded ``Llama``, interleaved so
machine load hits both alike. Generation speed is completion tokens / wall seconds; the prompt is
identical every time, so after the warm-up llama.cpp re-evaluates only its last token and the time
is decoding. Then the prefix cache: time to first token with an empty KV cache versus after a call
that shared the system prompt.

    python benchmarks/bench_local_speed.py --model local:small
    python benchmarks/bench_local_speed.py --model local
    python benchmarks/bench_local_speed.py --model path/to/model.gguf
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quallm.models.base import ChatRequest, Message
from quallm.models.local_llama import LocalLlamaModel
from quallm.models.resolve import build_local_model, resolve_model

SYSTEM = """You are a careful qualitative researcher coding interview transcripts from a study of \
children's social care services in English local authorities. You read one excerpt at a time and \
apply codes from the codebook below. Apply a code only when the excerpt gives clear evidence for it; \
prefer fewer, well-grounded codes over many weak ones. Every code you apply must be supported by a \
quote copied verbatim from the excerpt: do not paraphrase, correct spelling, or join separate \
sentences. If no code applies, answer with the code "none" and an empty quote.

Codebook:
- C01 Funding pressure: budgets are cut, frozen or overspent; money decides what can be offered.
- C02 Workforce churn: social workers leave, agency staff fill posts, caseloads grow as teams shrink.
- C03 Demand growth: more referrals, more complex needs, more children entering care.
- C04 Placement shortage: no suitable foster or residential places, children placed far from home.
- E01 Early help: family support offered before crisis keeps children safely at home.
- E02 Partnership working: health, schools, police and housing share information and plan together.
- E03 Stable leadership: a settled senior team with a clear practice model staff believe in.
- E04 Practice model: a shared, relationship-based way of working that guides daily decisions.

Answer with one JSON object with the fields "codes" (at most two code ids, or ["none"]) and \
"quote" (the verbatim supporting words, at most 200 characters). Output nothing else."""

USER = (
    "Excerpt: We lost three experienced social workers in six months and the agency staff who replaced "
    "them don't stay, so families keep getting a new face. Honestly the early help team is what keeps us "
    "going."
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "codes": {
            "type": "array",
            "items": {
                "type": "string",
                "enum": ["C01", "C02", "C03", "C04", "E01", "E02", "E03", "E04", "none"],
            },
            "maxItems": 2,
        },
        "quote": {"type": "string", "maxLength": 200},
    },
    "required": ["codes", "quote"],
    "additionalProperties": False,
}


def _load(arg: str, n_ctx: int) -> LocalLlamaModel:
    if arg.startswith("local") or arg.startswith("hf:"):
        choice = resolve_model(arg)
    else:
        choice = resolve_model(None, model_path=Path(arg))
    return build_local_model(choice, n_ctx=n_ctx)


def _timed(call: Callable[[], tuple[int, str]]) -> tuple[float, int, str]:
    start = time.perf_counter()
    tokens, finish = call()
    return time.perf_counter() - start, tokens, finish


def _perf(llm: Any) -> tuple[int, float]:
    """(prompt tokens evaluated, their ms) since the last reset, from llama.cpp's own counters."""
    import llama_cpp

    data = llama_cpp.llama_perf_context(llm.ctx)
    return int(data.n_p_eval), float(data.t_p_eval_ms)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="local:small", help="local | local:small | PATH.gguf")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args(argv)

    import llama_cpp

    t0 = time.perf_counter()
    model = _load(args.model, args.n_ctx)
    llm = model.llama
    print(
        f"model {model.name} ({model.endpoint}), n_threads={model.n_threads}, n_ctx={model.n_ctx}, "
        f"load {time.perf_counter() - t0:.1f}s, loadavg {os.getloadavg()[0]:.2f}"
    )
    print(
        f"system prompt {model.count_tokens(SYSTEM)} tokens, user message {model.count_tokens(USER)} tokens"
    )

    messages = (Message(role="system", content=SYSTEM), Message(role="user", content=USER))
    request = ChatRequest(
        model=model.name,
        endpoint=model.endpoint,
        messages=messages,
        json_schema=SCHEMA,
        temperature=0.0,
        max_tokens=args.max_tokens,
        seed=0,
    )

    def ours() -> tuple[int, str]:
        c = model.complete(request)
        return c.usage.completion_tokens, c.finish_reason

    def direct() -> tuple[int, str]:
        r = llm.create_chat_completion(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            response_format={"type": "json_object", "schema": SCHEMA},
            temperature=0.0,
            max_tokens=args.max_tokens,
            seed=0,
        )
        return int(r["usage"]["completion_tokens"]), str(r["choices"][0]["finish_reason"])

    # Warm-up: loads the prompt into the KV cache and builds our grammar once.
    print("warm-up answer:", model.complete(request).content)
    results: dict[str, list[float]] = {"quallm": [], "direct": []}
    for rep in range(args.reps):
        for label, call in (
            (("quallm", ours), ("direct", direct))
            if rep % 2 == 0
            else (
                ("direct", direct),
                ("quallm", ours),
            )
        ):
            seconds, tokens, finish = _timed(call)
            results[label].append(tokens / seconds)
            print(
                f"  rep {rep + 1} {label:6s}: {tokens} tokens in {seconds:.2f}s = "
                f"{tokens / seconds:.1f} tok/s ({finish})"
            )
    ours_tps = statistics.median(results["quallm"])
    direct_tps = statistics.median(results["direct"])
    print(
        f"generation tok/s (median of {args.reps}): quallm {ours_tps:.1f}, direct {direct_tps:.1f}, "
        f"ratio {ours_tps / direct_tps:.3f}"
    )

    # Prefix cache: first token after an empty cache vs after a call with the same system prompt.
    other = request.with_messages(
        (messages[0], Message(role="user", content="Excerpt: Budgets were cut again."))
    )
    one_token = {"max_tokens": 1}
    cold_times, warm_times = [], []
    for _ in range(args.reps):
        llm.reset()  # forget the KV cache: the whole prompt is evaluated again
        llama_cpp.llama_perf_context_reset(llm.ctx)
        start = time.perf_counter()
        model.complete(other.model_copy(update=one_token))
        cold_times.append(time.perf_counter() - start)
        cold_eval = _perf(llm)
        model.complete(request.model_copy(update=one_token))  # different user message, same prefix
        llama_cpp.llama_perf_context_reset(llm.ctx)
        start = time.perf_counter()
        model.complete(other.model_copy(update=one_token))
        warm_times.append(time.perf_counter() - start)
        warm_eval = _perf(llm)
    cold, warm = statistics.median(cold_times), statistics.median(warm_times)
    print(
        f"prefix cache: first token {cold:.2f}s cold ({cold_eval[0]} prompt tokens evaluated) vs "
        f"{warm:.2f}s with the system prompt cached ({warm_eval[0]} evaluated): saves {cold - warm:.2f}s "
        f"({100 * (cold - warm) / cold:.0f}%) per call"
    )
    print(f"loadavg at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
