"""quallm: code qualitative interview transcripts with a language model, grounded in verbatim quotes.

The public API, one name per step of the flow (see README, "Python API"). Names are imported when
first used (PEP 562), so ``import quallm`` stays cheap and the CLI starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # shared values and errors
    "QuallmError": "quallm.errors",
    "Coding": "quallm.codings",
    "TranscriptResult": "quallm.results",
    "sentence_spans": "quallm.core.spans",
    "align_quote": "quallm.core.spans",
    # ingest
    "Transcript": "quallm.transcripts.model",
    "load_transcript": "quallm.transcripts",
    "load_transcripts": "quallm.transcripts",
    "Codebook": "quallm.codebook",
    # models
    "ModelSettings": "quallm.models.build",
    "build_model": "quallm.models.build",
    "ModelProfile": "quallm.models.profile",
    "profile_of": "quallm.models.profile",
    # coding and the run
    "ExtractOptions": "quallm.extract",
    "run_extraction": "quallm.runner",
    "Manifest": "quallm.run.manifest",
    "open_run": "quallm.run.opening",
    "DiscoverOptions": "quallm.discovery",
    "run_discovery": "quallm.discovery",
    # analysis
    "reconcile": "quallm.agreement",
    "reconcile_run": "quallm.reconciling",
    "reconcile_files": "quallm.reconciling",
    "synthesise": "quallm.analysis.synthesis",
    # outputs
    "study_summary": "quallm.outputs.study_summary",
    "render_report": "quallm.report",
    "export_run": "quallm.exchange.qdpx",
}

__all__ = [
    "Codebook",
    "Coding",
    "DiscoverOptions",
    "ExtractOptions",
    "Manifest",
    "ModelProfile",
    "ModelSettings",
    "QuallmError",
    "Transcript",
    "TranscriptResult",
    "__version__",
    "align_quote",
    "build_model",
    "export_run",
    "load_transcript",
    "load_transcripts",
    "open_run",
    "profile_of",
    "reconcile",
    "reconcile_files",
    "reconcile_run",
    "render_report",
    "run_discovery",
    "run_extraction",
    "sentence_spans",
    "study_summary",
    "synthesise",
]

if TYPE_CHECKING:
    from quallm.agreement import reconcile
    from quallm.analysis.synthesis import synthesise
    from quallm.codebook import Codebook
    from quallm.codings import Coding
    from quallm.core.spans import align_quote, sentence_spans
    from quallm.discovery import DiscoverOptions, run_discovery
    from quallm.errors import QuallmError
    from quallm.exchange.qdpx import export_run
    from quallm.extract import ExtractOptions
    from quallm.models.build import ModelSettings, build_model
    from quallm.models.profile import ModelProfile, profile_of
    from quallm.outputs.study_summary import study_summary
    from quallm.reconciling import reconcile_files, reconcile_run
    from quallm.report import render_report
    from quallm.results import TranscriptResult
    from quallm.run.manifest import Manifest
    from quallm.run.opening import open_run
    from quallm.runner import run_extraction
    from quallm.transcripts import load_transcript, load_transcripts
    from quallm.transcripts.model import Transcript


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quallm' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
