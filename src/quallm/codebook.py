"""The codebook: codes with id, kind (challenge | enabler), label, definition, include/exclude rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quallm.errors import CodebookError, InputError

Kind = Literal["challenge", "enabler"]


class Code(BaseModel):
    """One code of the codebook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    kind: Kind
    label: str = Field(min_length=1)
    definition: str = Field(min_length=1)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()

    @field_validator("include", "exclude", "examples", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if v is None:
            return ()
        return (v,) if isinstance(v, str) else v


class Codebook(BaseModel):
    """A validated codebook; ``hash`` identifies its content in run manifests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "codebook"
    version: str = "1"
    description: str | None = None
    codes: tuple[Code, ...] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v

    @model_validator(mode="after")
    def _unique_ids(self) -> Codebook:
        seen: set[str] = set()
        for i, c in enumerate(self.codes):
            if c.id in seen:
                raise ValueError(f"codes[{i}]: duplicate id {c.id!r}")
            seen.add(c.id)
        return self

    @property
    def ids(self) -> list[str]:
        """Code ids in codebook order."""
        return [c.id for c in self.codes]

    def get(self, code_id: str) -> Code | None:
        """The code with this id, if any."""
        return next((c for c in self.codes if c.id == code_id), None)

    @property
    def hash(self) -> str:
        """sha256 of the codebook's canonical JSON."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        """Load and validate a YAML (or JSON) codebook; errors name the file and the bad entry."""
        from quallm.transcripts.decode import read_text  # the one decoder: UTF-8/16 with BOM, cp1252

        p = Path(path)
        try:
            text, _ = read_text(p)
        except InputError as exc:
            raise CodebookError(f"{p}: cannot read codebook ({exc.problem})") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CodebookError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        except RecursionError as exc:
            raise CodebookError(f"{p}: not a codebook (YAML nested too deeply)") from exc
        return cls.from_data(data, source=str(p))

    @classmethod
    def from_data(cls, data: Any, source: str = "codebook") -> Codebook:
        """Validate already-parsed data (a mapping with ``codes``, or a bare list of codes)."""
        if isinstance(data, list):
            data = {"codes": data}
        if not isinstance(data, dict):
            raise CodebookError(f"{source}: expected a mapping with a 'codes' list")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CodebookError(f"{source}: {_describe(exc, data)}") from exc

    def to_yaml(self) -> str:
        """The codebook as YAML in the format :meth:`load` reads."""
        data = self.model_dump(mode="json", exclude_none=True)
        for c in data["codes"]:
            for k in ("include", "exclude", "examples"):
                if not c[k]:
                    del c[k]
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    msgs = []
    for err in exc.errors()[:5]:
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "codes" and isinstance(loc[1], int):
            codes = data.get("codes") or []
            entry = codes[loc[1]] if loc[1] < len(codes) else None
            cid = entry.get("id") if isinstance(entry, dict) else None
            where = f"codes[{loc[1]}]" + (f" (id {cid!r})" if cid else "")
            rest = ".".join(str(x) for x in loc[2:])
            where += f".{rest}" if rest else ""
        else:
            where = ".".join(str(x) for x in loc) or "codebook"
        msgs.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(msgs) + (f"; and {more} more" if more > 0 else "")
