"""The quallm command line (its own package: the library never imports it)."""

from quallm.cli.app import app, main

__all__ = ["app", "main"]
