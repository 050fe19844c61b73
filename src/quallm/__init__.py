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
    "QuallmError": "quallm.core.errors",
    "Coding": "quallm.core.codings",
    "TranscriptResult": "quallm.core.results",
    "sentence_spans": "quallm.core.spans",
    "align_quote": "quallm.core.spans",
    # ingest
    "Transcript": "quallm.core.transcript",
    "load_transcript": "quallm.ingest.transcripts",
    "load_transcripts": "quallm.ingest.transcripts",
    "Codebook": "quallm.core.codebook",
    "load_codebook": "quallm.ingest.codebooks",
    # models
    "ModelSettings": "quallm.models.build",
    "build_model": "quallm.models.build",
    "ModelProfile": "quallm.models.profile",
    "profile_of": "quallm.models.profile",
    # coding and the run
    "ExtractOptions": "quallm.coding.extract",
    "run_extraction": "quallm.run.runner",
    "Manifest": "quallm.run.manifest",
    "open_run": "quallm.run.opening",
    "DiscoverOptions": "quallm.coding.discovery",
    "run_discovery": "quallm.run.discovery",
    # analysis
    "reconcile": "quallm.analysis.agreement",
    "reconcile_run": "quallm.analysis.reconciling",
    "reconcile_files": "quallm.analysis.reconciling",
    "synthesise": "quallm.analysis.synthesis",
    # outputs
    "study_summary": "quallm.outputs.study_summary",
    "render_report": "quallm.outputs.report",
    "export_run": "quallm.outputs.qdpx",
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
    "load_codebook",
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
    from quallm.analysis.agreement import reconcile
    from quallm.analysis.reconciling import reconcile_files, reconcile_run
    from quallm.analysis.synthesis import synthesise
    from quallm.coding.discovery import DiscoverOptions
    from quallm.coding.extract import ExtractOptions
    from quallm.core.codebook import Codebook
    from quallm.core.codings import Coding
    from quallm.core.errors import QuallmError
    from quallm.core.results import TranscriptResult
    from quallm.core.spans import align_quote, sentence_spans
    from quallm.core.transcript import Transcript
    from quallm.ingest.codebooks import load_codebook
    from quallm.ingest.transcripts import load_transcript, load_transcripts
    from quallm.models.build import ModelSettings, build_model
    from quallm.models.profile import ModelProfile, profile_of
    from quallm.outputs.qdpx import export_run
    from quallm.outputs.report import render_report
    from quallm.outputs.study_summary import study_summary
    from quallm.run.discovery import run_discovery
    from quallm.run.manifest import Manifest
    from quallm.run.opening import open_run
    from quallm.run.runner import run_extraction


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
