"""The optional model merge step: the model groups clusters that mean the same, by number."""

from __future__ import annotations

from quallm.discovery.candidates import DiscoverOptions
from quallm.discovery.consolidate import GroupFn
from quallm.errors import ModelError
from quallm.models.base import ChatModel
from quallm.prompting import load_prompt
from quallm.reask import ask
from quallm.schemas import MergeAnswer, merge_schema


def model_grouper(model: ChatModel, options: DiscoverOptions, log: list[str] | None = None) -> GroupFn:
    """A grouping function for :func:`consolidate` that asks ``model``; on failure nothing is merged."""
    prompt = load_prompt("discover_merge")

    def group(labels: list[str]) -> list[list[int]]:
        request = prompt.request(
            model,
            merge_schema(len(labels)),
            "theme_groups",
            temperature=0.0,
            max_tokens=max(256, 12 * len(labels)),
            seed=options.seed,
            focus=options.focus or "(not stated)",
            themes="\n".join(f"{i}. {t}" for i, t in enumerate(labels, start=1)),
        )
        try:
            ans, _, _, _ = ask(model, request, MergeAnswer, max_reasks=options.max_reasks)
        except ModelError as exc:
            if log is not None:
                log.append(f"model merge failed, clusters kept as they are: {exc}")
            return [[i] for i in range(1, len(labels) + 1)]
        return ans.groups

    return group
