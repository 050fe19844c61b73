"""The quallm command line: parses options, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from quallm.errors import QuallmError

app = typer.Typer(
    name="quallm",
    help="Code interview transcripts with a language model, grounded in verbatim quotes, "
    "and check the coding against human coders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out_console = Console()


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
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


class _RichProgress:
    def __init__(self, progress: Progress) -> None:
        self.p = progress
        self.files = progress.add_task("transcripts", total=None)
        self.units: Any = None

    def start(self, total_transcripts: int) -> None:
        self.p.update(self.files, total=total_transcripts)

    def transcript_started(self, transcript_id: str, units: int) -> None:
        if self.units is not None:
            self.p.remove_task(self.units)
        self.units = self.p.add_task(f"  {transcript_id}", total=units)

    def unit_done(self) -> None:
        if self.units is not None:
            self.p.advance(self.units)

    def transcript_done(self, result: Any, skipped: bool = False) -> None:
        self.p.advance(self.files)
        if skipped and result is not None:
            self.p.console.print(f"  {result.transcript_id}: already done, skipped")


def build_model(
    model: str | None,
    model_path: Path | None,
    base_url: str | None,
    api_key_env: str,
    record: Path | None,
    replay: Path | None,
    azure_api_version: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The chat model the options ask for, wrapped for record/replay; plus facts for the manifest."""
    from quallm.models.factory import build_chat_model
    from quallm.models.resolve import resolve_model
    from quallm.recording import RecordingModel, ReplayModel

    if replay is not None:
        rm = ReplayModel(replay)
        return rm, {"backend": "replay", "recordings": str(replay)}
    choice = resolve_model(
        model, model_path=str(model_path) if model_path else None, base_url=base_url, api_key_env=api_key_env
    )
    chat, info = build_chat_model(choice, api_key_env=api_key_env, azure_api_version=azure_api_version)
    if record is not None:
        chat = RecordingModel(chat, record)
        info["recorded_to"] = str(record)
    return chat, info


@app.command()
def extract(
    transcripts: Annotated[
        list[Path], typer.Argument(help="Transcript files (.txt .md .vtt .srt .docx .json) or folders of them.")
    ],
    codebook: Annotated[
        Path, typer.Option("--codebook", "-c", help="Codebook YAML (codes with id, kind, label, definition...).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write (re-running resumes it).")],
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    model_path: ModelPathOpt = None,
    azure_api_version: Annotated[
        str | None, typer.Option("--azure-api-version", help="Use Azure OpenAI at --base-url with this API version.")
    ] = None,
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
        int, typer.Option("--chunk-tokens", help="Token budget of a chunk (chunk strategy).")
    ] = 3000,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Requests in flight (local models run one at a time).")
    ] = 4,
    summary: Annotated[bool, typer.Option("--summary/--no-summary", help="Write a per-transcript summary.")] = True,
    record: Annotated[
        Path | None, typer.Option("--record", help="Save every model exchange as JSON in this folder.")
    ] = None,
    replay: Annotated[
        Path | None, typer.Option("--replay", help="Answer only from recordings in this folder (no model is run).")
    ] = None,
) -> None:
    """Code transcripts against a codebook: challenges and enablers with grounded quotes, and summaries.

    Writes RUN_DIR/manifest.json, results/<transcript_id>.json, codings.csv, summaries.md and log.jsonl.
    """
    from quallm.codebook import Codebook
    from quallm.extract import ExtractOptions
    from quallm.runner import run_extraction

    if strategy not in ("auto", "turn", "chunk"):
        _fail(f"--strategy must be auto, turn or chunk, not {strategy!r}")
    try:
        cb = Codebook.load(codebook)
        chat, info = build_model(model, model_path, base_url, api_key_env, record, replay, azure_api_version)
        local = chat.endpoint.startswith("local:")
        options = ExtractOptions(
            strategy=strategy,  # type: ignore[arg-type]
            chunk_tokens=chunk_tokens,
            coded_speakers=tuple(s.strip() for s in speakers.split(",") if s.strip()) if speakers else (),
            summary=summary,
            concurrency=1 if local else max(1, concurrency),
        )
    except QuallmError as exc:
        _fail(str(exc))
        return
    stop = {"flag": False}

    def on_sigint(_sig: int, _frame: Any) -> None:
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        console.print("[yellow]Stopping after the current transcript (Ctrl-C again to stop now)...[/yellow]")

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            report = run_extraction(
                transcripts,
                cb,
                chat,
                out,
                options=options,
                metadata_path=metadata,
                codebook_path=codebook,
                model_info=info,
                progress=_RichProgress(progress),
                should_stop=lambda: stop["flag"],
            )
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/yellow] Finished transcripts are saved; run the same command to resume.")
        raise typer.Exit(130) from None
    except QuallmError as exc:
        _fail(str(exc))
        return
    finally:
        signal.signal(signal.SIGINT, old)
    for line in report.errors:
        console.print(f"[red]error:[/red] {line}", highlight=False)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
    for tid in report.incomplete:
        console.print(f"[red]incomplete:[/red] {tid} (see {out / 'results' / (tid + '.json')})", highlight=False)
    out_console.print(
        f"{len(report.done)} coded, {len(report.skipped)} already done, {len(report.incomplete)} incomplete, "
        f"{len(report.errors)} unreadable; {report.codings} codings, {report.ungrounded} ungrounded quotes dropped."
    )
    out_console.print(f"Results: {out}/codings.csv, {out}/summaries.md, {out}/results/ (manifest: {out}/manifest.json)")
    if stop["flag"]:
        console.print("Stopped early; run the same command again to resume.")
    if not report.ok or stop["flag"]:
        raise typer.Exit(1)


# --- reconcile command (agreement) ---

# --- model commands (local model) ---


def main() -> None:  # pragma: no cover
    """Entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
