"""The quallm command line: parses options, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="quallm",
    help="Code interview transcripts with a language model, grounded in verbatim quotes, "
    "and check the coding against human coders.",
    no_args_is_help=True,
    add_completion=False,
)

# --- extract command ---

# --- reconcile command (agreement) ---

# --- model commands (local model) ---


if __name__ == "__main__":  # pragma: no cover
    app()
