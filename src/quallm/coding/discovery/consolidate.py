"""Consolidation: candidate themes from every chunk, transcript and run merged into themes.

Step 1 (always): candidates are clustered on the cosine similarity of their
embeddings ("label: description"), average linkage, cut at ``similarity`` (scipy's hierarchical
clustering). Step 2 (``merge="embedding+model"``): the model sees the clusters' labels, numbered, and
groups the ones that mean the same; groups are merged. The model only ever answers with numbers, so it
cannot invent a theme or a quote; it can only join clusters.

A theme's label and description are those of its medoid (the member closest on average to the
others), its prevalence is the number of transcripts among its members, its stability the number of
runs in which it appeared, and its best quotes come from the members closest to the theme's centre,
one per transcript first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from quallm.coding.discovery.candidates import Candidate, KindName
from quallm.core.results import Quote
from quallm.models.embeddings import Embedder


class ThemeQuote(BaseModel):
    """A grounded quote of a theme, with the transcript it comes from."""

    model_config = ConfigDict(frozen=True)

    transcript_id: str
    quote: Quote


class Theme(BaseModel):
    """A consolidated theme: what the draft codebook's code and themes.md are written from."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: KindName
    kind_votes: dict[str, int]  # how many members the model called a challenge, an enabler
    label: str
    description: str
    prevalence: int  # transcripts in which it was found (in any run)
    runs: int  # runs in which it was found
    transcripts: tuple[str, ...]
    labels: tuple[str, ...]  # the members' distinct labels, most central first
    quotes: tuple[ThemeQuote, ...]
    members: int  # candidates merged into it
    cohesion: float  # mean cosine similarity of the members to the theme's centre


def cluster(vectors: np.ndarray, similarity: float) -> list[list[int]]:
    """Average-linkage clusters of unit ``vectors`` whose members are, on average, at least ``similarity`` alike."""
    n = len(vectors)
    if n == 0:
        return []
    if n == 1:
        return [[0]]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    dist = np.clip(pdist(vectors, metric="cosine"), 0.0, 2.0)
    labels = fcluster(linkage(dist, method="average"), t=1.0 - similarity, criterion="distance")
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(i)
    return list(groups.values())


def _slug(label: str, used: set[str], prefix: str) -> str:
    words = [w for w in re.findall(r"[a-z0-9]+", label.lower()) if w not in _STOP][:3]
    base = f"{prefix}_{'_'.join(words) or 'theme'}"[:48]
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}_{k}", k + 1
    used.add(slug)
    return slug


_STOP = {"a", "an", "and", "the", "of", "to", "in", "for", "on", "with", "by", "or", "at", "from", "lack"}


GroupFn = Callable[[list[str]], list[list[int]]]


def consolidate(
    candidates: Sequence[Candidate],
    embedder: Embedder,
    *,
    similarity: float = 0.6,
    group_with_model: GroupFn | None = None,
    model_merge_margin: float = 0.25,
    max_quotes: int = 3,
    kinds: Sequence[str] = ("challenge", "enabler"),
) -> list[Theme]:
    """Merge ``candidates`` into themes, challenges then enablers, each by prevalence (most first).

    Candidates are clustered whatever kind the model gave them, and a theme's kind is its members'
    majority (the medoid's on a tie): a small model often calls the same topic a challenge in one
    excerpt and an enabler in the next, and splitting on kind first kept those apart.
    """
    if not candidates:
        return []
    vecs = embedder.embed([c.text for c in candidates])
    groups = cluster(vecs, similarity)
    if group_with_model is not None and len(groups) > 1:
        groups = _merge_groups(groups, candidates, vecs, group_with_model, similarity - model_merge_margin)
    built = _distinct_labels([_theme(candidates, vecs, g, max_quotes, kinds) for g in groups])
    themes: list[Theme] = []
    used: set[str] = set()
    for kind, prefix in _id_prefixes(kinds):
        of_kind = sorted(
            (t for t in built if t.kind == kind), key=lambda t: (-t.prevalence, -t.runs, -t.members, t.label.lower())
        )
        for n, theme in enumerate(of_kind, start=1):
            themes.append(theme.model_copy(update={"id": _slug(theme.label, used, f"{prefix}{n:02d}")}))
    return themes


def _distinct_labels(themes: list[Theme]) -> list[Theme]:
    """Give themes that share a label (a small model reuses one for unlike passages) distinct names.

    The larger theme keeps the label; another takes the first of its members' wordings not yet in use,
    or a number when it has none.
    """
    used: set[str] = set()
    out: list[Theme] = []
    for t in sorted(themes, key=lambda t: (-t.members, -t.prevalence)):
        label = t.label
        if label.lower() in used:
            label = next((w for w in t.labels if w.lower() not in used), "")
            n = 2
            while not label or label.lower() in used:
                label, n = f"{t.label} ({n})", n + 1
        used.add(label.lower())
        out.append(t if label == t.label else t.model_copy(update={"label": label}))
    return out


def _medoid(vecs: np.ndarray) -> int:
    sims = vecs @ vecs.T
    return int(np.argmax(sims.mean(axis=1)))


def _merge_groups(
    groups: list[list[int]],
    members: Sequence[Candidate],
    vecs: np.ndarray,
    group_fn: GroupFn,
    floor: float,
) -> list[list[int]]:
    """Let the model join clusters that mean the same; every cluster stays in exactly one group."""
    labels = []
    for g in groups:
        m = g[_medoid(vecs[g])]
        labels.append(members[m].text)
    medoids = np.stack([vecs[g][_medoid(vecs[g])] for g in groups])
    answer = group_fn(labels)
    seen: set[int] = set()
    merged: list[list[int]] = []
    for grp in answer:
        idx = [i - 1 for i in grp if 1 <= i <= len(groups) and (i - 1) not in seen]
        if not idx:
            continue
        # A small model sometimes lumps unrelated themes together; a cluster joins only if its medoid
        # is at least ``floor`` alike to the group's first one (the embedding vetoes absurd merges).
        head, rest = idx[0], idx[1:]
        joined = [head] + [i for i in rest if float(medoids[i] @ medoids[head]) >= floor]
        seen.update(joined)
        merged.append([m for i in joined for m in groups[i]])
    merged.extend(groups[i] for i in range(len(groups)) if i not in seen)  # left out: kept as they were
    return merged


def _id_prefixes(kinds: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, id prefix): ``C`` and ``E`` for challenge and enabler; an initial when unique, else ``K1``..."""
    initials = [k[:1].upper() for k in kinds]
    return [
        (k, initials[i] if initials.count(initials[i]) == 1 and initials[i].isalpha() else f"K{i + 1}_")
        for i, k in enumerate(kinds)
    ]


def _theme(
    members: Sequence[Candidate], vecs: np.ndarray, group: list[int], max_quotes: int, kinds: Sequence[str]
) -> Theme:
    sub = vecs[group]
    centre = sub.mean(axis=0)
    centre = centre / max(float(np.linalg.norm(centre)), 1e-12)
    to_centre = sub @ centre
    order = [group[i] for i in np.argsort(-to_centre, kind="stable")]
    medoid = members[group[_medoid(sub)]]
    votes = {k: sum(members[i].kind == k for i in group) for k in kinds}
    top = max(votes.values(), default=0)
    leaders = [k for k in kinds if votes[k] == top]
    # The majority; on a tie the medoid's kind when it is among the leaders.
    kind: KindName = medoid.kind if medoid.kind in leaders or not leaders else leaders[0]
    labels: list[str] = []
    for i in [group[_medoid(sub)], *order]:
        if members[i].label.lower() not in {x.lower() for x in labels}:
            labels.append(members[i].label)
    quotes: list[ThemeQuote] = []
    taken: list[tuple[str, int, int]] = []
    # First pass: the most central quote of each transcript; second pass: fill up from the rest.
    for first_pass in (True, False):
        got = {q.transcript_id for q in quotes}
        for i in order:
            c = members[i]
            if first_pass and c.transcript_id in got:
                continue
            for q in c.quotes[:1] if first_pass else c.quotes:
                # Members often quote the same passage, a few words longer or shorter: one of them is enough.
                overlaps = any(t == c.transcript_id and a < q.end and q.start < b for t, a, b in taken)
                if overlaps or len(quotes) >= max_quotes:
                    continue
                taken.append((c.transcript_id, q.start, q.end))
                quotes.append(ThemeQuote(transcript_id=c.transcript_id, quote=q))
                got.add(c.transcript_id)
                break
    transcripts = tuple(sorted({members[i].transcript_id for i in group}))
    return Theme(
        id="",
        kind=kind,
        kind_votes=votes,
        label=medoid.label,
        description=medoid.description,
        prevalence=len(transcripts),
        runs=len({members[i].repeat for i in group}),
        transcripts=transcripts,
        labels=tuple(labels),
        quotes=tuple(quotes),
        members=len(group),
        cohesion=round(float(to_centre.mean()), 3),
    )
