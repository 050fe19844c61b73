"""The run: its typed manifest and the one way to open a run directory again."""

from quallm.run.manifest import CodebookFacts, InputEntry, Manifest, ModelFacts
from quallm.run.opening import OpenRun, open_run, read_manifest

__all__ = ["CodebookFacts", "InputEntry", "Manifest", "ModelFacts", "OpenRun", "open_run", "read_manifest"]
