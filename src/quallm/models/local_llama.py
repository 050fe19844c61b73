"""The embedded local backend: a GGUF model run in process by llama.cpp (llama-cpp-python).

``llama_cpp`` is imported lazily so this module imports without the ``[local]`` extra. One loaded
model serves every call of a process: the KV cache is never reset between calls, so llama.cpp reuses
the longest common token prefix of the previous call (our system prompt) and only evaluates the new
tail. Structured output is a GBNF grammar built from the request's JSON schema.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from quallm.core.errors import ModelError, ModelNotAvailableError
from quallm.models.base import ChatRequest, Completion, OutputMode, TokenLogprob, Usage

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'quallm[local]' (or 'quallm[local-small]')"
DEFAULT_N_CTX = 4096

# llama.cpp contexts are not thread-safe, and one call already keeps every core busy: calls into
# any local model of this process run one at a time.
_INFERENCE_LOCK = threading.Lock()
# Loading may briefly swap a llama_cpp module function (see _load_llama); one load at a time.
_LOAD_LOCK = threading.Lock()


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, not the machine's core count)."""
    affinity = getattr(os, "sched_getaffinity", None)  # missing on macOS and Windows
    if affinity is not None:
        return max(1, len(affinity(0)))
    return os.cpu_count() or 1


def import_llama_cpp() -> ModuleType:
    """``llama_cpp``, or :class:`ModelNotAvailableError` with the install command."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelNotAvailableError(f"the local model needs llama-cpp-python: {INSTALL_HINT}") from exc
    return llama_cpp


def cpu_has_amx(llama_cpp: ModuleType) -> bool:
    """True when llama.cpp's CPU backend would put weights into AMX buffers."""
    info = llama_cpp.llama_print_system_info()
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    return "AMX_INT8 = 1" in text


def _load_llama(path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int, extra_buffers: bool) -> Any:
    """Create the ``llama_cpp.Llama`` (quiet, all our cores, the GGUF's own chat template)."""
    llama_cpp = import_llama_cpp()
    import llama_cpp.llama_cpp as low

    kwargs: dict[str, Any] = {
        "model_path": str(path),
        "n_ctx": n_ctx,
        "n_threads": n_threads,
        "n_threads_batch": n_threads,
        "n_gpu_layers": n_gpu_layers,
        "verbose": False,
        # chat_format stays None: Llama then uses the tokenizer.chat_template stored in the GGUF.
    }
    with _LOAD_LOCK:
        original = low.llama_model_default_params
        if not extra_buffers:
            # Llama() does not expose use_extra_bufts; it reads llama_model_default_params(), so
            # hand it params with extra (AMX/repack) weight buffers switched off for this one load.
            def params_without_extra_buffers() -> Any:
                params = original()
                params.use_extra_bufts = False
                return params

            low.llama_model_default_params = params_without_extra_buffers
        try:
            return llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelNotAvailableError(f"{path}: llama.cpp could not load this GGUF file: {exc}") from exc
        finally:
            low.llama_model_default_params = original


# --- JSON schema -> GBNF ---
#
# llama-cpp-python's converter (llama_grammar.SchemaConverter) is an old port of llama.cpp's: it
# spells maxLength/maxItems N as N nested optional groups, which llama.cpp's parser refuses from a
# few hundred up ("number of rules ... exceeds sane defaults"; our maxLength 1200 narrative fails),
# and it ignores integer minimum/maximum. We override those two cases the way current llama.cpp
# does (GBNF ``x{m,n}``) and bound integers by digit ranges; everything else is the stock converter.


def _gbnf_repetition(item: str, min_items: int, max_items: int | None, separator: str | None = None) -> str:
    """``item`` repeated min..max times (max None: unbounded), as llama.cpp's build_repetition."""
    if max_items == 0:
        return ""
    if min_items == 0 and max_items == 1:
        return f"{item}?"
    if not separator:
        if max_items is None:
            return (
                f"{item}+" if min_items == 1 else f"{item}*" if min_items == 0 else f"{item}{{{min_items},}}"
            )
        return f"{item}{{{min_items},{max_items}}}"
    rest = _gbnf_repetition(
        f"({separator} {item})", max(min_items - 1, 0), None if max_items is None else max_items - 1
    )
    result = f"{item} {rest}".rstrip()
    return f"({result})?" if min_items == 0 else result


def _digit_span(lo: str, hi: str) -> str:
    """GBNF for the numbers lo..hi written with the same number of digits (lo <= hi)."""
    if lo == hi:
        return f'"{lo}"'
    if len(lo) == 1:
        return f"[{lo}-{hi}]"
    tail = len(lo) - 1
    if lo[0] == hi[0]:
        return f'"{lo[0]}" ({_digit_span(lo[1:], hi[1:])})'
    if lo[1:] == "0" * tail and hi[1:] == "9" * tail:
        return f"[{lo[0]}-{hi[0]}]" + " [0-9]" * tail
    alternatives = [f'"{lo[0]}" ({_digit_span(lo[1:], "9" * tail)})']
    if int(hi[0]) - int(lo[0]) > 1:
        alternatives.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + " [0-9]" * tail)
    alternatives.append(f'"{hi[0]}" ({_digit_span("0" * tail, hi[1:])})')
    return " | ".join(alternatives)


def int_range_gbnf(lo: int, hi: int) -> str:
    """GBNF matching exactly the decimal integers lo..hi (0 <= lo <= hi), without leading zeros."""
    spans = []
    for digits in range(len(str(lo)), len(str(hi)) + 1):
        start = max(lo, 10 ** (digits - 1) if digits > 1 else 0)
        end = min(hi, 10**digits - 1)
        if start <= end:
            spans.append(f"({_digit_span(str(start), str(end))})")
    return " | ".join(spans)


def _bounded_int(schema: dict[str, Any]) -> tuple[int, int] | None:
    """(lo, hi) of an integer schema with a non-negative inclusive range, else None."""
    lo = schema.get("minimum", 0 if "exclusiveMinimum" not in schema else None)
    hi = schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int):
        lo = schema["exclusiveMinimum"] + 1
    if isinstance(schema.get("exclusiveMaximum"), int):
        hi = schema["exclusiveMaximum"] - 1
    if isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, int) or not isinstance(hi, int):
        return None
    return (lo, hi) if 0 <= lo <= hi else None


_SHAPE_KEYS = {"$ref", "oneOf", "anyOf", "allOf", "const", "enum", "properties", "pattern", "format"}


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """A llama.cpp GBNF grammar that accepts exactly the JSON documents of ``schema`` (as far as
    GBNF can: see the notes above); raises on a schema the converter does not understand."""
    from llama_cpp import llama_grammar as lg

    class Converter(lg.SchemaConverter):
        def visit(self, node: dict[str, Any], name: str) -> str:
            rule_name = name + "-" if name in lg.RESERVED_NAMES else name or "root"
            kind = node.get("type")
            if not (_SHAPE_KEYS & node.keys()):
                if kind == "string" and ("minLength" in node or "maxLength" in node):
                    char = self._add_primitive("char", lg.PRIMITIVE_RULES["char"])
                    body = _gbnf_repetition(char, int(node.get("minLength", 0)), node.get("maxLength"))
                    return str(self._add_rule(rule_name, rf'"\"" {body} "\"" space'))
                if (
                    kind in (None, "array")
                    and isinstance(node.get("items"), dict)
                    and "prefixItems" not in node
                ):
                    item = self.visit(node["items"], f"{name}{'-' if name else ''}item")
                    body = _gbnf_repetition(
                        item, int(node.get("minItems", 0)), node.get("maxItems"), separator='"," space'
                    )
                    return str(self._add_rule(rule_name, f'"[" space {body} "]" space'))
                bounds = _bounded_int(node) if kind == "integer" else None
                if bounds is not None:
                    return str(self._add_rule(rule_name, f"({int_range_gbnf(*bounds)}) space"))
            return str(super().visit(node, name))

    converter = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "stdin")  # it edits in place
    converter.visit(resolved, "")
    return str(converter.format_grammar())


class LocalLlamaModel:
    """A :class:`~quallm.models.base.ChatModel` on ``llama_cpp.Llama``, loaded once and kept.

    ``extra_buffers=None`` (auto) switches llama.cpp's extra weight buffers off on CPUs with AMX:
    its AMX matmul segfaults on Q4_K models (ggml-org/llama.cpp#20824, unfixed), which would kill
    the whole process. Pass ``llama`` to wrap an existing ``Llama`` (benchmarks, tests).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        sha256: str,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        extra_buffers: bool | None = None,
        llama: Any | None = None,
    ) -> None:
        self._path = Path(model_path)
        self._sha256 = sha256.lower()
        self._n_ctx = n_ctx
        self._n_threads = n_threads or available_cpus()
        self._grammars: dict[str, Any] = {}
        self._formatter: Any | None = None
        self._pieces: dict[int, str] = {}
        if llama is None:
            if not self._path.is_file():
                raise ModelNotAvailableError(f"model file not found: {self._path}")
            llama_cpp = import_llama_cpp()
            if extra_buffers is None:
                extra_buffers = not cpu_has_amx(llama_cpp)
            llama = _load_llama(
                self._path,
                n_ctx=n_ctx,
                n_threads=self._n_threads,
                n_gpu_layers=n_gpu_layers,
                extra_buffers=extra_buffers,
            )
        self._llm = llama

    @property
    def name(self) -> str:
        """The GGUF file name."""
        return self._path.name

    @property
    def endpoint(self) -> str:
        """``local:<first 16 hex of the file's sha256>``: another file never shares cache entries."""
        return f"local:{self._sha256[:16]}"

    @property
    def output_mode(self) -> OutputMode:
        """Grammar-constrained decoding follows a JSON schema exactly."""
        return OutputMode.JSON_SCHEMA

    @property
    def n_ctx(self) -> int:
        """The context window the model was loaded with (prompt plus answer)."""
        return self._n_ctx

    @property
    def n_threads(self) -> int:
        """Threads llama.cpp uses."""
        return self._n_threads

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama``."""
        return self._llm

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's own tokenizer (no BOS, special tokens as plain text)."""
        # Tokenizing reads only the vocabulary, so it needs no inference lock.
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def chat_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """The ``create_chat_completion`` arguments for ``request`` (the benchmark reuses them)."""
        kwargs: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "stream": False,
        }
        if request.seed is not None:
            kwargs["seed"] = request.seed
        grammar = self._grammar_for(request)
        if grammar is not None:
            kwargs["grammar"] = grammar
        return kwargs

    def complete(self, request: ChatRequest) -> Completion:
        """Run one chat completion; the answer follows ``request.json_schema`` when one is set.

        A scoring request (``request.choices``) generates nothing: see :meth:`score_choices`.
        """
        if request.choices:
            return self.score_choices(request)
        with _INFERENCE_LOCK:
            kwargs = self.chat_kwargs(request)
            steps: list[tuple[Any, Any, Any]] = []
            if request.logprobs:
                kwargs["logits_processor"] = [self._recorder(steps)]
            try:
                response = self._llm.create_chat_completion(**kwargs)
            except ValueError as exc:
                # llama-cpp-python raises ValueError when the prompt does not fit the context.
                hint = (
                    "; load the model with a larger n_ctx or use smaller chunks"
                    if "context" in str(exc)
                    else ""
                )
                raise ModelError(f"{self.name}: {exc}{hint}") from exc
            except Exception as exc:
                raise ModelError(f"{self.name}: llama.cpp failed: {type(exc).__name__}: {exc}") from exc
        try:
            choice = response["choices"][0]
            content = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason") or "stop"
            usage = response.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ModelError(f"{self.name}: unexpected llama.cpp response: {response!r:.200}") from exc
        tokens = self._token_logprobs(steps, int(usage.get("prompt_tokens", 0))) if request.logprobs else None
        return Completion(
            tokens=tokens,
            content=content,
            finish_reason=finish_reason,  # "stop" or "length", as the OpenAI API reports it
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            ),
            model=self.name,
        )

    _TOP = 10  # alternatives kept per generated token: enough for the code decisions, small in the cache

    def _recorder(self, steps: list[tuple[Any, Any, Any]]) -> Any:
        """A logits processor that keeps, at every step, the top alternatives' log-softmax (pre-grammar).

        llama.cpp runs it first in the sampler chain, on the raw logits of all tokens (in id order), so
        no ``logits_all`` is needed; it returns the logits unchanged.
        """
        import numpy as np

        def record(_input_ids: Any, logits: Any) -> Any:
            x = np.asarray(logits, dtype=np.float64)
            top = np.argpartition(x, -self._TOP)[-self._TOP :]
            m = x.max()
            log_z = m + np.log(np.exp(x - m).sum())
            steps.append((top, x[top] - log_z, x - log_z))
            return logits

        return record

    def _token_logprobs(self, steps: list[tuple[Any, Any, Any]], n_prompt: int) -> tuple[TokenLogprob, ...] | None:
        """The generated tokens (read back from the context) with their log probabilities and alternatives."""
        ids = [int(t) for t in self._llm._input_ids[n_prompt:]] if n_prompt else []
        if not ids or not steps:
            return None
        out = []
        for token_id, (top, top_lp, full) in zip(ids, steps, strict=False):
            alts: dict[str, float] = {}
            for t, lp in zip(top, top_lp, strict=True):
                piece = self._piece(int(t))  # two ids may share a text: their shares add up
                alts[piece] = float(math.log(math.exp(alts[piece]) + math.exp(lp))) if piece in alts else float(lp)
            out.append(TokenLogprob(token=self._piece(token_id), logprob=float(full[token_id]), top=alts))
        return tuple(out)

    def _piece(self, token_id: int) -> str:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._llm.detokenize([token_id]).decode("utf-8", errors="replace")
            self._pieces[token_id] = piece
        return piece

    def score_choices(self, request: ChatRequest) -> Completion:
        """The probability of each of ``request.choices`` as the first answer token, without generating.

        The prompt is evaluated (reusing the KV prefix of the previous call, as generation does) and
        the logits at its last position, which the context holds without ``logits_all``, are turned
        into a softmax; each choice's mass is the sum over its first tokens ("yes", "Yes", " yes" ...),
        renormalised over the choices, as a grammar allowing only the choices would. Measured with
        the 1.5B model on 2 cores: about 0.5 s for a 100-token tail after a shared prefix.
        """
        import numpy as np

        llm = self._llm
        with _INFERENCE_LOCK:
            try:
                tokens = self._prompt_tokens(request)
                if len(tokens) >= self._n_ctx:
                    raise ModelError(f"{self.name}: the prompt ({len(tokens)} tokens) does not fit the context")
                prefix = 0
                for a, b in zip(llm._input_ids, tokens, strict=False):
                    if a != b:
                        break
                    prefix += 1
                # At least one token is evaluated so the logits belong to this prompt's last position.
                llm.n_tokens = min(prefix, len(tokens) - 1)
                llm.eval(tokens[llm.n_tokens :])
                n_vocab = llm.n_vocab()
                logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).astype(np.float64)
            except ModelError:
                raise
            except Exception as exc:
                raise ModelError(f"{self.name}: llama.cpp failed to score: {type(exc).__name__}: {exc}") from exc
        z = np.exp(logits - logits.max())
        z /= z.sum()
        mass = {c: float(sum(z[t] for t in self._first_tokens(c))) for c in request.choices}
        total = sum(mass.values())
        probs = {c: (v / total if total > 0 else 1.0 / len(mass)) for c, v in mass.items()}
        best = max(request.choices, key=lambda c: probs[c])
        return Completion(
            content=best,
            finish_reason="stop",
            usage=Usage(prompt_tokens=len(tokens), completion_tokens=0),
            model=self.name,
            choice_probs=probs,
        )

    def _first_tokens(self, word: str) -> set[int]:
        out = set()
        for variant in {word, word.capitalize(), word.upper(), " " + word, " " + word.capitalize()}:
            ids = self._llm.tokenize(variant.encode("utf-8"), add_bos=False, special=False)
            if ids:
                out.add(int(ids[0]))
        return out

    def _prompt_tokens(self, request: ChatRequest) -> list[int]:
        """The request's messages through the GGUF's chat template, ending where the answer starts."""
        if self._formatter is None:
            from llama_cpp import llama_chat_format

            template = self._llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise ModelError(f"{self.name}: the GGUF has no chat template, so answers cannot be scored")
            model = self._llm._model
            eos, bos = self._llm.token_eos(), self._llm.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
        messages: Any = [{"role": m.role, "content": m.content} for m in request.messages]
        result = self._formatter(messages=messages)
        ids = self._llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        return [int(t) for t in ids]

    def close(self) -> None:
        """Free the model and its context now instead of at garbage collection."""
        close = getattr(self._llm, "close", None)
        if callable(close):
            close()

    # --- grammars ---

    def _grammar_for(self, request: ChatRequest) -> Any | None:
        """The GBNF grammar for a request's output mode, built once per distinct schema."""
        if request.output_mode is OutputMode.PLAIN:
            return None
        if request.output_mode is OutputMode.JSON_OBJECT:
            return self._grammar("json-object", None)
        if request.json_schema is None:
            return None
        key = json.dumps(request.json_schema, sort_keys=True, separators=(",", ":"))
        return self._grammar(key, request.json_schema)

    def _grammar(self, key: str, schema: dict[str, Any] | None) -> Any:
        cached = self._grammars.get(key)
        if cached is not None:
            return cached
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        # We build the grammar ourselves instead of passing response_format: llama-cpp-python
        # rebuilds it on every call and silently falls back to "any JSON" when the schema does not
        # convert; here a failure is logged once and the fallback is explicit.
        gbnf = JSON_GBNF
        if schema is not None:
            try:
                converted = schema_to_gbnf(schema)
            except Exception as exc:
                log.warning(
                    "JSON schema not convertible to a llama.cpp grammar (%s); constraining to any JSON", exc
                )
            else:
                if self._grammar_parses(converted):
                    gbnf = converted
                else:
                    log.warning(
                        "llama.cpp rejected the grammar built from the JSON schema; constraining to any JSON"
                    )
        grammar = LlamaGrammar.from_string(gbnf, verbose=False)
        self._grammars[key] = grammar
        return grammar

    def _grammar_parses(self, gbnf: str) -> bool:
        """Check a grammar with llama.cpp's own parser before use.

        A grammar it rejects yields a NULL sampler that llama-cpp-python adds to its chain anyway,
        and the next sample call segfaults; checking here turns that into a fallback.
        """
        vocab = getattr(getattr(self._llm, "_model", None), "vocab", None)
        if vocab is None:
            return True  # not a real Llama (a stand-in): nothing to check against
        import llama_cpp.llama_cpp as low

        sampler = low.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            return False
        low.llama_sampler_free(sampler)
        return True
