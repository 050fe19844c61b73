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

from quallm.codebook import Code, Codebook
from quallm.errors import ConfigError
from quallm.models.base import ChatModel, ChatRequest, Message


@dataclass(frozen=True)
class PromptTemplate:
    """A system and a user template with an id and a content hash."""

    id: str
    system: str
    user: str

    @property
    def hash(self) -> str:
        """sha256 of both template files (first 16 hex digits)."""
        return hashlib.sha256((self.system + "\x00" + self.user).encode()).hexdigest()[:16]

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


def render_code(code: Code) -> str:
    """One code as the prompt shows it."""
    lines = [f"- {code.id} ({code.kind}): {code.label}. {code.definition.strip()}"]
    if code.include:
        lines.append("  Use when: " + "; ".join(code.include))
    if code.exclude:
        lines.append("  Not when: " + "; ".join(code.exclude))
    return "\n".join(lines)


def render_codebook(codebook: Codebook) -> str:
    """The whole codebook, challenges first, in a stable order (part of the identical prefix)."""
    ordered = [c for c in codebook.codes if c.kind == "challenge"] + [c for c in codebook.codes if c.kind == "enabler"]
    return "\n".join(render_code(c) for c in ordered)
