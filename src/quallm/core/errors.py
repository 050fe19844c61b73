"""The one root exception of quallm and its subclasses.

Every error a user can cause or meet is a :class:`QuallmError`; the CLI prints its message on one
line and moves on to the next file where it can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class QuallmError(Exception):
    """Root of every error quallm raises on purpose."""


class ConfigError(QuallmError):
    """Bad configuration: options, a codebook, a model spec, a missing extra."""


class InputError(QuallmError):
    """A bad input file. The message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class RunLockedError(QuallmError):
    """Another quallm process is writing the same run directory."""


class CodebookError(ConfigError):
    """A codebook that does not validate; the message points at the bad entry."""


class ModelError(QuallmError):
    """The model could not give a usable answer."""


class TransportError(ModelError):
    """The endpoint failed (429, 5xx, timeout, dropped connection) after transport retries."""


class OutputValidationError(ModelError):
    """The model's output stayed invalid after the bounded re-asks.

    Carries the last raw output and the validation errors so the failure can be reported.
    """

    def __init__(self, message: str, *, raw: str | None = None, errors: list[str] | None = None) -> None:
        self.raw = raw
        self.errors = errors or []
        super().__init__(message)


class TruncatedOutputError(ModelError):
    """The model stopped because it hit the token limit (``finish_reason == "length"``)."""

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        self.raw = raw
        super().__init__(message)


class ReplayMissError(ModelError):
    """Replay mode met a request that no recording answers."""


class NetworkDisabledError(ModelError):
    """A remote request was attempted while remote requests are switched off (tests)."""


class ModelNotAvailableError(ConfigError):
    """A model file or model package is missing, or its hash does not match."""


def describe(exc: BaseException) -> dict[str, Any]:
    """A JSON-safe description of an exception, for failure logs, with secrets redacted
    (:func:`quallm.core.redact.redact`: a server may echo the API key in an error body)."""
    from quallm.core.redact import redact

    out: dict[str, Any] = {"type": type(exc).__name__, "message": redact(str(exc))}
    raw = getattr(exc, "raw", None)
    if raw is not None:
        out["raw"] = redact(str(raw))
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        out["errors"] = [redact(str(e)) for e in errors]
    return out
