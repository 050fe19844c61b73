"""The typed manifest of a run directory (``manifest.json``): what ran, on what, with which result.

One model for extraction and discovery runs alike. Unknown fields are kept (``extra="allow"``), so a
manifest written by a newer quallm reads back whole; fields not set are not written, so the file keeps
the shape it always had (discovery's has no codebook, extraction's no embedder).
"""

from __future__ import annotations

import platform
import sys
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import Required, TypedDict  # pydantic needs this TypedDict before Python 3.12

from quallm import __version__
from quallm.run.rundir import now_iso


class _Model(Protocol):
    """What the manifest records of a chat model (its name and endpoint identity; its output mode)."""

    @property
    def name(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def output_mode(self) -> Any: ...


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputEntry(TypedDict, total=False):
    """One input file: the transcript it gave and its hash, or why it was refused.

    A typed dict, not a model: a run keeps one per input until it ends, and a dict is a fifth of the size.
    """

    file: Required[str]
    transcript_id: str
    sha256: str
    error: str


class ModelFacts(_Open):
    """The model a run used (name, endpoint identity) and the facts its builder recorded (backend, cache...)."""

    name: str = ""
    endpoint: str = ""
    output_mode: str | None = None


class CodebookFacts(_Open):
    """The codebook a run used, with the path as given (see :meth:`quallm.run.OpenRun.locate`)."""

    name: str | None = None
    version: str | None = None
    hash: str | None = None
    path: str | None = None
    codes: int | None = None


class Manifest(_Open):
    """``manifest.json``. Every field has a default, so a partial or older manifest still reads."""

    command: str | None = None
    quallm_version: str | None = None
    python: str | None = None
    platform: str | None = None
    status: str | None = None
    started: str | None = None
    finished: str | None = None
    model: ModelFacts = Field(default_factory=ModelFacts)
    strategy: str | None = None
    embedder: str | None = None
    prompts: dict[str, str] = Field(default_factory=dict)
    codebook: CodebookFacts | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    examples: dict[str, Any] | None = None  # extract --examples-from: the file, its sha256, k, units
    metadata_file: str | None = None
    inputs: list[InputEntry] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)

    @classmethod
    def begin(
        cls,
        model: _Model,
        model_info: dict[str, Any] | None = None,
        *,
        output_mode: bool = True,
        **fields: Any,
    ) -> Manifest:
        """The header every run writes before its first request: versions, start time, the model."""
        facts: dict[str, Any] = {"name": model.name, "endpoint": model.endpoint}
        if output_mode:
            facts["output_mode"] = model.output_mode.value
        return cls.model_validate(
            {
                "quallm_version": __version__,
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "status": "running",
                "started": now_iso(),
                "finished": None,
                "model": {**facts, **(model_info or {})},
                **fields,
                "inputs": [],
            }
        )

    def finish(self, ok: bool, inputs: list[InputEntry], counts: dict[str, int], errors: list[str]) -> None:
        """Record the end of the run: status, time, the inputs as read, the counts and the error lines."""
        self.status = "finished" if ok else "finished with problems"
        self.finished = now_iso()
        self.inputs = inputs
        self.counts = counts
        self.errors = errors

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``manifest.json`` (fields never set are left out)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def dumps(self) -> str:
        """``manifest.json``'s text: as ``json.dumps(to_json(), indent=2, ensure_ascii=False)``, written by
        pydantic's serializer straight to text, so a run of many inputs is not copied into Python objects."""
        return self.model_dump_json(exclude_unset=True, indent=2) + "\n"

    def input_for(self, transcript_id: str) -> InputEntry | None:
        """The input entry of ``transcript_id``, if the run read one."""
        return next((i for i in self.inputs if i.get("transcript_id") == transcript_id), None)
