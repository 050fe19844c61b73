"""The optional model merge step: the model says, by number, which themes repeat an earlier one."""

from __future__ import annotations

from quallm.coding.discovery.candidates import DiscoverOptions
from quallm.coding.discovery.consolidate import GroupFn
from quallm.coding.prompting import load_prompt
from quallm.coding.reask import ask
from quallm.coding.schemas import MergeAnswer, merge_schema
from quallm.core.errors import ModelError
from quallm.models.base import ChatModel


def model_grouper(model: ChatModel, options: DiscoverOptions, log: list[str] | None = None) -> GroupFn:
    """A grouping function for :func:`consolidate` that asks ``model``; on failure nothing is merged."""
    prompt = load_prompt("discover_merge")

    def group(labels: list[str]) -> list[list[int]]:
        request = prompt.request(
            model,
            merge_schema(len(labels)),
            "theme_groups",
            temperature=0.0,
            max_tokens=64 + 6 * len(labels),  # one short number per theme
            seed=options.seed,
            focus=options.focus or "(not stated)",
            n=str(len(labels)),
            themes="\n".join(f"{i}. {t}" for i, t in enumerate(labels, start=1)),
        )
        try:
            ans, _, _, _ = ask(model, request, MergeAnswer, max_reasks=options.max_reasks)
        except ModelError as exc:
            if log is not None:
                log.append(f"model merge failed, clusters kept as they are: {exc}")
            return [[i] for i in range(1, len(labels) + 1)]
        return groups_from_links(ans.same_as, len(labels))

    return group


def groups_from_links(same_as: list[int], n: int) -> list[list[int]]:
    """Groups (1-based theme numbers) from "theme i is the same as earlier theme j" links.

    Links to a later theme, to itself or out of range are ignored; chains join (3 -> 2 -> 1).
    """
    parent = list(range(n + 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in enumerate(same_as[:n], start=1):
        if 1 <= j < i:
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(1, n + 1):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())
