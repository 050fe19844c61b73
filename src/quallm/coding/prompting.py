"""Prompt templates: versioned files in ``prompts/``, rendered with ``string.Template``, hashed.

The hash of a template's files goes into every request and the run manifest, so a changed prompt
never hits an old cache entry and a run says exactly which prompt it used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any

from quallm.core.codebook import DEFAULT_KINDS, Code, Codebook, Kind
from quallm.core.errors import ConfigError
from quallm.models.base import ChatModel, ChatRequest, Message


@dataclass(frozen=True)
class PromptTemplate:
    """A system and a user template with an id and a content hash."""

    id: str
    system: str
    user: str

    @property
    def hash(self) -> str:
        """sha256 of both template files (first 16 hex digits), category placeholders at their defaults.

        Filling the defaults first keeps the hash of a template whose category words (``challenge or
        enabler``) became placeholders what it was, so caches and recordings made before stay valid;
        the rendered messages, which do change with the categories, are part of every request's key.
        """
        system = Template(self.system).safe_substitute(_KIND_DEFAULTS)
        user = Template(self.user).safe_substitute(_KIND_DEFAULTS)
        return hashlib.sha256((system + "\x00" + user).encode()).hexdigest()[:16]

    def request(
        self,
        model: ChatModel,
        schema: dict[str, Any],
        schema_name: str,
        *,
        temperature: float,
        max_tokens: int,
        seed: int | None,
        **values: str,
    ) -> ChatRequest:
        """The rendered prompt as a frozen request for ``model``, carrying this template's id and hash."""
        system, user = self.render(**values)
        return ChatRequest(
            model=model.name,
            endpoint=model.endpoint,
            messages=(Message(role="system", content=system), Message(role="user", content=user)),
            json_schema=schema,
            schema_name=schema_name,
            output_mode=model.output_mode,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            prompt_id=self.id,
            prompt_hash=self.hash,
        )

    def render(self, **values: str) -> tuple[str, str]:
        """(system, user) with ``$names`` filled; a missing value is a programming error."""
        try:
            return Template(self.system).substitute(values), Template(self.user).substitute(values)
        except KeyError as exc:
            raise ConfigError(f"prompt {self.id}: no value for ${exc.args[0]}") from exc


@lru_cache(maxsize=16)
def load_prompt(name: str) -> PromptTemplate:
    """Load ``prompts/<name>.system.txt`` and ``prompts/<name>.user.txt`` shipped with the package."""
    base = resources.files("quallm").joinpath("prompts")
    try:
        system = base.joinpath(f"{name}.system.txt").read_text(encoding="utf-8")
        user = base.joinpath(f"{name}.user.txt").read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"no prompt template named {name!r}") from exc
    return PromptTemplate(name, system.strip() + "\n", user.strip() + "\n")


def _article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _series(items: list[str], conj: str = "or") -> str:
    """``a``; ``a or b``; ``a, b or c``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def kind_values(kinds: tuple[Kind, ...] | list[Kind]) -> dict[str, str]:
    """Values of the category placeholders in the prompts, for these categories (none: no category words).

    ``$kind_or`` ("challenge or enabler"), ``$kind_aside`` (" (a challenge or an enabler)"),
    ``$kind_order`` (", challenges first, then enablers"), ``$kind_narrative_order`` ("first the main
    challenges, then the main enablers, "), and for discovery ``$kind_choices`` (the list of categories
    with their descriptions), ``$kind_names`` ('"challenge" or "enabler"') and ``$kind_first``.
    """
    names = [k.name for k in kinds]
    plurals = [k.plural_name for k in kinds]
    several = len(kinds) > 1
    if len(kinds) == 2:
        head = "Each theme is either"
    elif several:
        head = "Each theme is one of"
    else:
        head = "Each theme is"
    lines = []
    for i, k in enumerate(kinds):
        end = "." if i == len(kinds) - 1 else ("; or" if i == len(kinds) - 2 else ";")
        lines.append(f"- {_article(k.name)}" + (f": {k.description.strip()}" if k.description.strip() else "") + end)
    return {
        "kind_or": _series(names) if kinds else "topic",
        "kind_aside": f" ({_series([_article(n) for n in names])})" if kinds else "",
        "kind_order": (", " + plurals[0] + " first, " + ", ".join(f"then {p}" for p in plurals[1:])) if several else "",
        "kind_narrative_order": (
            "first the main " + plurals[0] + ", " + "".join(f"then the main {p}, " for p in plurals[1:])
            if several
            else ""
        ),
        "kind_choices": "\n".join([head, *lines]) if kinds else "",
        "kind_names": _series([f'"{n}"' for n in names]),
        "kind_first": names[0] if names else "",
    }


_KIND_DEFAULTS = kind_values(DEFAULT_KINDS)


def codebook_values(codebook: Codebook) -> dict[str, str]:
    """The codebook's category placeholder values (see :func:`kind_values`)."""
    return kind_values(codebook.categories)


def kind_label(code: Code) -> str:
    """``C02 (challenge)`` or, for a code with no category, ``C02``."""
    return f"{code.id} ({code.kind})" if code.kind else code.id


def render_code(code: Code, indent: str = "") -> str:
    """One code as the prompt shows it."""
    definition = code.definition.strip()
    lines = [f"{indent}- {kind_label(code)}: {code.label}." + (f" {definition}" if definition else "")]
    if code.include:
        lines.append(f"{indent}  Use when: " + "; ".join(code.include))
    if code.exclude:
        lines.append(f"{indent}  Not when: " + "; ".join(code.exclude))
    return "\n".join(lines)


def ordered_codes(codebook: Codebook) -> list[Code]:
    """Codable codes grouped by category in the codebook's category order (codebook order within one).

    This is the order of the prompt (with no hierarchy), of summaries and of reports.
    """
    codable = [c for c in codebook.codes if c.codable]
    if not codebook.categories:
        return codable
    return [c for k in codebook.categories for c in codable if c.kind == k.name]


def render_tree(codebook: Codebook) -> str:
    """The codebook as an indented tree in codebook order; headings (``codable: false``) shown as such."""
    out = ["Codes are nested: a code under another is a narrower case of it; apply the most specific that fits."]

    def walk(parent: str | None, depth: int) -> None:
        for c in codebook.children(parent):
            indent = "  " * depth
            if c.codable:
                out.append(render_code(c, indent))
            else:
                out.append(f"{indent}- {c.label} (a heading, not a code: apply the codes under it)")
            walk(c.id, depth + 1)

    walk(None, 0)
    return "\n".join(out)


def render_codebook(codebook: Codebook) -> str:
    """The whole codebook in a stable order (part of the identical prefix).

    With no hierarchy: by category (challenges first, for the default codebook). With parents: the tree.
    """
    if codebook.has_hierarchy:
        return render_tree(codebook)
    return "\n".join(render_code(c) for c in ordered_codes(codebook))
