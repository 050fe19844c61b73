"""What discovery writes: a draft codebook ``extract`` reads, and a readable ``themes.md``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quallm.coding.discovery.consolidate import Theme
from quallm.core.codebook import DEFAULT_KINDS, Code, Codebook, Kind

_EXAMPLE_CHARS = 300


def in_codebook(theme: Theme, min_transcripts: int, n_transcripts: int) -> bool:
    """Whether a theme goes into the draft codebook (found in enough transcripts)."""
    return theme.prevalence >= min(min_transcripts, max(1, n_transcripts))


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _clip(text: str, limit: int = _EXAMPLE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rsplit(" ", 1)[0] + " ..."


def draft_codebook(
    themes: Sequence[Theme],
    *,
    focus: str,
    min_transcripts: int,
    n_transcripts: int,
    kinds: Sequence[Kind] = DEFAULT_KINDS,
) -> Codebook:
    """The draft codebook: one code per theme found in at least ``min_transcripts`` transcripts.

    Its ``include`` notes are the other wordings the model used for the theme (they show its scope),
    its examples the theme's best quotes. ``exclude`` notes are left to the researcher.
    """
    codes = []
    for t in themes:
        if not in_codebook(t, min_transcripts, n_transcripts):
            continue
        codes.append(
            Code(
                id=t.id,
                kind=t.kind,
                label=t.label,
                definition=t.description or t.label,
                include=tuple(t.labels[1:5]),
                examples=tuple(_clip(q.quote.text) for q in t.quotes[:2]),
            )
        )
    if not codes:
        # A codebook needs at least one code; say so rather than write an invalid file.
        raise ValueError("no theme was found in enough transcripts for a draft codebook")
    return Codebook(
        name=f"Draft: {focus}" if focus else "Draft codebook (quallm discover)",
        version="draft-1",
        description=(
            f"Drafted by quallm discover from {n_transcripts} transcripts: {_n(len(codes), 'theme')} found in at "
            f"least {_n(min(min_transcripts, n_transcripts), 'transcript')}. Review every code, write "
            "'not when' (exclude) notes, merge or split, then run quallm extract with it."
        ),
        kinds=None if tuple(kinds) == DEFAULT_KINDS else tuple(kinds),
        codes=tuple(codes),
    )


def draft_yaml(codebook: Codebook) -> str:
    """The draft codebook as YAML, with a header saying it is a draft."""
    return (
        "# Draft codebook written by `quallm discover`: edit it before coding with it.\n"
        "# Run: quallm extract TRANSCRIPTS --codebook codebook.draft.yaml --out RUN\n" + codebook.to_yaml()
    )


def render_themes_md(themes: Sequence[Theme], info: dict[str, Any], kinds: Sequence[Kind] = DEFAULT_KINDS) -> str:
    """``themes.md``: every theme, challenges then enablers, with prevalence, stability and quotes."""
    n_tr = int(info["transcripts"])
    repeats = int(info["repeats"])
    min_tr = int(info["min_transcripts"])
    lines = [
        "# Discovered themes",
        "",
        f"Focus: {info.get('focus') or '(not stated)'}  ",
        f"Model: {info['model']} · {n_tr} transcripts · {repeats} run{'s' if repeats != 1 else ''} · "
        f"{info['candidates']} candidate themes merged by {info['merge']} "
        f"(cosine similarity ≥ {info['similarity']}, {info['embedder']})",
        "",
        "Prevalence is the number of transcripts in which a theme was found. "
        + (
            f"Stability is the number of the {repeats} runs in which it appeared; themes found in fewer than "
            "all runs are marked *unstable*. "
            if repeats > 1
            else "Run with `--repeats N` to see which themes are stable. "
        )
        + f"Themes found in fewer than {min(min_tr, n_tr)} transcripts are listed but left out of "
        "`codebook.draft.yaml`. Every quote is the interviewee's own words, copied from the transcript, "
        "with its character offsets.",
        "",
    ]
    if info.get("incomplete"):
        lines += [
            f"**Incomplete:** {len(info['incomplete'])} transcript run(s) had failed chunks "
            f"({', '.join(info['incomplete'])}); see results in `candidates/`.",
            "",
        ]
    for kind, title in ((k.name, k.title) for k in kinds):
        group = [t for t in themes if t.kind == kind]
        lines += [f"## {title} ({len(group)})", ""]
        if not group:
            lines += ["None found.", ""]
        for t in group:
            flags = []
            if repeats > 1:
                flags.append(f"{t.runs}/{repeats} runs" + ("" if t.runs == repeats else ", *unstable*"))
            if not in_codebook(t, min_tr, n_tr):
                flags.append("not in the draft codebook")
            lines.append(
                f"### `{t.id}` {t.label} — {t.prevalence}/{n_tr} transcripts"
                + (f" ({'; '.join(flags)})" if flags else "")
            )
            lines.append("")
            if t.description:
                lines += [t.description, ""]
            if len(t.labels) > 1:
                lines += ["Also worded as: " + "; ".join(t.labels[1:6]), ""]
            mixed = ""
            if sum(1 for n in t.kind_votes.values() if n > 0) > 1:
                v = t.kind_votes
                mixed = " · mixed kind (" + ", ".join(f"{v.get(k.name, 0)} as {k.name}" for k in kinds) + ")"
            lines += [
                f"Sources: {', '.join(t.transcripts)} · {t.members} candidates · cohesion {t.cohesion:.2f}{mixed}",
                "",
            ]
            for q in t.quotes:
                lines.append(f"> {' '.join(q.quote.text.split())}  ")
                lines.append(f"> — {q.transcript_id}, characters {q.quote.start}–{q.quote.end}")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"
