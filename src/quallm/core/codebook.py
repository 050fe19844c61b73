"""The codebook: codes with id, kind (one of the codebook's categories), label, definition, include/exclude
rules, and an optional hierarchy (``parent``, ``codable``).

Categories: a codebook may declare its own (``kinds:``, a list of ``{name, description}``). One that
declares none and whose codes use ``challenge`` / ``enabler`` gets those two (:data:`DEFAULT_KINDS`),
which is the behaviour quallm had before categories were configurable; one whose codes have no kind at
all has no categories. A code with a ``parent`` and no kind of its own takes its parent's.

Formats: YAML or JSON (this module), CSV, REFI-QDA ``.qdc`` and the codebook inside a ``.qdpx`` /
``.qde`` (``quallm.ingest.codebooks``); ``load_codebook`` there picks by extension.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quallm.core.errors import CodebookError, InputError

DEFAULT_KIND_NAMES = ("challenge", "enabler")
# Codebook formats other than YAML/JSON, read by ``load_codebook`` in ingest.
OTHER_FORMATS = (".csv", ".qdc", ".qdpx", ".qde")
# Fields added after codebooks were hashed in run manifests: left out of the hash while at their
# defaults, so a codebook that uses none of them keeps its hash (and finished runs still resume).
_NEW_CODE_DEFAULTS: dict[str, Any] = {"parent": None, "codable": True, "guid": None, "color": None}


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


class Kind(BaseModel):
    """One category codes are sorted into (``challenge``, ``barrier``, ``positive change``, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[^\s:()][^:()\n]{0,39}$")
    description: str = ""
    plural: str | None = Field(default=None, description="how headings name several; default: naive English plural")

    @property
    def plural_name(self) -> str:
        """``challenges``, ``barriers``, ``positive changes``."""
        return self.plural or _plural(self.name)

    @property
    def title(self) -> str:
        """Heading for this category's codes: ``Challenges``."""
        p = self.plural_name
        return p[:1].upper() + p[1:]


DEFAULT_KINDS = (
    Kind(name="challenge", description="something that makes the work harder or pushes towards worse outcomes"),
    Kind(name="enabler", description="something that helps, works well, or pushes towards better outcomes"),
)


class Code(BaseModel):
    """One code of the codebook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    kind: str | None = None
    label: str = Field(min_length=1)
    definition: str = ""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    parent: str | None = Field(default=None, description="id of the enclosing code")
    codable: bool = Field(default=True, description="false: a heading only, never applied")
    guid: str | None = Field(default=None, description="REFI-QDA GUID kept from an imported codebook")
    color: str | None = Field(default=None, pattern=r"^#[0-9A-F]{6}$")

    @field_validator("include", "exclude", "examples", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if v is None:
            return ()
        return (v,) if isinstance(v, str) else v

    @field_validator("definition", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("color", mode="before")
    @classmethod
    def _color(cls, v: Any) -> Any:
        # REFI-QDA allows #RGB; quallm keeps #RRGGBB, upper case.
        if isinstance(v, str):
            v = v.strip().upper()
            if len(v) == 4 and v.startswith("#"):
                v = "#" + "".join(ch * 2 for ch in v[1:])
        return v


class Codebook(BaseModel):
    """A validated codebook; ``hash`` identifies its content in run manifests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "codebook"
    version: str = "1"
    description: str | None = None
    kinds: tuple[Kind, ...] | None = Field(default=None, description="declared categories (None: not declared)")
    codes: tuple[Code, ...] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v

    @model_validator(mode="after")
    def _check(self) -> Codebook:
        seen: set[str] = set()
        for i, c in enumerate(self.codes):
            if c.id in seen:
                raise ValueError(f"codes[{i}]: duplicate id {c.id!r}")
            seen.add(c.id)
        if self.kinds is not None:
            names = [k.name for k in self.kinds]
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup is not None:
                raise ValueError(f"kinds: {dup!r} is declared twice")
        by_id = {c.id: c for c in self.codes}
        for i, c in enumerate(self.codes):
            if c.parent is not None and c.parent not in by_id:
                raise ValueError(f"codes[{i}] (id {c.id!r}): parent {c.parent!r} is not a code of this codebook")
        for c in self.codes:
            path = [c.id]
            p = c.parent
            while p is not None:
                if p in path:
                    cycle = " -> ".join([*path[path.index(p) :], p])
                    raise ValueError(f"code {c.id!r}: its parents form a cycle ({cycle})")
                path.append(p)
                p = by_id[p].parent
        # A child with no kind of its own takes its nearest ancestor's.
        inherited = [
            c if c.kind or not c.parent else c.model_copy(update={"kind": self._ancestor_kind(c, by_id)})
            for c in self.codes
        ]
        if inherited != list(self.codes):
            object.__setattr__(self, "codes", tuple(inherited))
        declared = [k.name for k in self.kinds] if self.kinds is not None else None
        for i, c in enumerate(self.codes):
            where = f"codes[{i}] (id {c.id!r})"
            if c.kind is None:
                continue
            if declared is None and c.kind not in DEFAULT_KIND_NAMES:
                raise ValueError(
                    f"{where}: kind {c.kind!r} is not declared (declare the codebook's categories under "
                    "'kinds:'; with none declared the kinds are challenge and enabler)"
                )
            if declared is not None and c.kind not in declared:
                raise ValueError(f"{where}: kind {c.kind!r} is not declared in kinds ({', '.join(declared) or 'none'})")
        if self.categories:
            for i, c in enumerate(self.codes):
                if c.codable and c.kind is None:
                    shown = ", ".join(k.name for k in self.categories)
                    raise ValueError(f"codes[{i}] (id {c.id!r}): no kind (this codebook's kinds are {shown})")
        if not any(c.codable for c in self.codes):
            raise ValueError("codes: every code is 'codable: false'; at least one code must be codable")
        return self

    @staticmethod
    def _ancestor_kind(code: Code, by_id: dict[str, Code]) -> str | None:
        p = code.parent
        while p is not None:
            if by_id[p].kind:
                return by_id[p].kind
            p = by_id[p].parent
        return None

    # --- categories and hierarchy ----------------------------------------------------------------

    @property
    def categories(self) -> tuple[Kind, ...]:
        """The categories in effect: the declared ones, challenge/enabler by default, or none."""
        if self.kinds is not None:
            return self.kinds
        return DEFAULT_KINDS if any(c.kind for c in self.codes) else ()

    @property
    def is_default_kinds(self) -> bool:
        """True for a codebook that declares no kinds and uses challenge/enabler (today's behaviour)."""
        return self.kinds is None and bool(self.categories)

    def kind(self, name: str | None) -> Kind | None:
        """The category called ``name``, if the codebook has it."""
        return next((k for k in self.categories if k.name == name), None)

    @property
    def has_hierarchy(self) -> bool:
        """True when some code has a parent."""
        return any(c.parent for c in self.codes)

    def children(self, code_id: str | None) -> list[Code]:
        """Codes directly under ``code_id`` (None: the top level), in codebook order."""
        return [c for c in self.codes if c.parent == code_id]

    def ancestors(self, code_id: str) -> list[str]:
        """Ids of the code's parent, grandparent, ... (nearest first)."""
        out: list[str] = []
        code = self.get(code_id)
        while code is not None and code.parent is not None:
            out.append(code.parent)
            code = self.get(code.parent)
        return out

    def depth(self, code_id: str) -> int:
        """0 for a top-level code."""
        return len(self.ancestors(code_id))

    @property
    def ids(self) -> list[str]:
        """Ids of the codes that can be applied (``codable``), in codebook order."""
        return [c.id for c in self.codes if c.codable]

    @property
    def all_ids(self) -> list[str]:
        """Ids of every code, headings included, in codebook order."""
        return [c.id for c in self.codes]

    def get(self, code_id: str) -> Code | None:
        """The code with this id, if any."""
        return next((c for c in self.codes if c.id == code_id), None)

    @property
    def hash(self) -> str:
        """sha256 of the codebook's canonical JSON (fields added since at their defaults left out)."""
        data = self.model_dump(mode="json")
        if data.get("kinds") is None:
            data.pop("kinds", None)
        for c in data["codes"]:
            for k, default in _NEW_CODE_DEFAULTS.items():
                if c.get(k) == default:
                    c.pop(k, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    # --- reading and writing ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        """Load and validate a YAML or JSON codebook (every format: ``load_codebook`` in ingest).

        Errors name the file and the bad entry.
        """
        from quallm.core.decode import read_text  # the one decoder: UTF-8/16 with BOM, cp1252

        p = Path(path)
        suffix = p.suffix.lower()
        if suffix in OTHER_FORMATS:
            # the readers of these live in ingest (they build Codebooks, so the core cannot call them)
            raise CodebookError(f"{p}: a {suffix} codebook is read by quallm.load_codebook, not Codebook.load")
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
            if c.get("codable") is True:
                del c["codable"]
        for k in data.get("kinds") or []:
            if not k.get("description"):
                k.pop("description", None)
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
        elif not loc and err["type"] == "value_error":
            # Our own whole-codebook checks already name the entry.
            msgs.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        else:
            where = ".".join(str(x) for x in loc) or "codebook"
        msgs.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(msgs) + (f"; and {more} more" if more > 0 else "")


class _HasKind(Protocol):
    @property
    def kind(self) -> str | None: ...


_T = TypeVar("_T", bound=_HasKind)


def kind_sections(items: Sequence[_T], kinds: Sequence[Kind] | None = None) -> list[tuple[str, list[_T]]]:
    """``items`` (anything with a ``kind``) under a heading per category, in the categories' order.

    With no ``kinds`` given, the categories are the items' own, in order of first appearance. Items of
    no category (or of one not listed) come last, under "Codes" (or "Other codes" after categories).
    Empty sections are left out: ``[("Challenges", [...]), ("Enablers", [...])]``.
    """
    if not kinds:
        kinds = [Kind(name=n) for n in dict.fromkeys(i.kind for i in items if i.kind)]
    names = {k.name for k in kinds}
    out = [(k.title, [i for i in items if i.kind == k.name]) for k in kinds]
    rest = [i for i in items if i.kind not in names]
    out.append(("Other codes" if kinds else "Codes", rest))
    return [(title, group) for title, group in out if group]


def parse_kinds(spec: str) -> tuple[Kind, ...]:
    """Categories from a command-line spec: ``challenge,enabler`` or ``barrier: what hinders; facilitator: what helps``.

    Items are separated by ``;`` when the spec has one, else by ``,``; each is ``name`` or
    ``name: description``. A default category named without a description keeps its default one.
    """
    items = [s.strip() for s in spec.split(";" if ";" in spec else ",") if s.strip()]
    defaults = {k.name: k for k in DEFAULT_KINDS}
    out: list[Kind] = []
    for item in items:
        name, _, description = item.partition(":")
        name, description = name.strip(), description.strip()
        try:
            out.append(
                defaults[name] if name in defaults and not description else Kind(name=name, description=description)
            )
        except ValidationError:
            raise CodebookError(f"--kinds: {name!r} is not a usable category name") from None
    if not out:
        raise CodebookError("--kinds: name at least one category")
    if len({k.name for k in out}) < len(out):
        raise CodebookError("--kinds: a category is named twice")
    return tuple(out)
