"""Inductive discovery: candidate themes per chunk, consolidated into themes and a draft codebook.

The batch entry point, ``run_discovery`` (``quallm discover``), is in ``quallm.run.discovery``; the steps are in
``candidates`` (open coding of chunks), ``consolidate`` (embedding clusters, optional model merge),
``merge`` (the model merge step) and ``outputs`` (``codebook.draft.yaml``, ``themes.md``).
"""

from quallm.coding.discovery.candidates import Candidate, CandidateFinder, CandidateSet, DiscoverOptions
from quallm.coding.discovery.consolidate import Theme, cluster, consolidate
from quallm.coding.discovery.outputs import draft_codebook, render_themes_md

__all__ = [
    "Candidate",
    "CandidateFinder",
    "CandidateSet",
    "DiscoverOptions",
    "Theme",
    "cluster",
    "consolidate",
    "draft_codebook",
    "render_themes_md",
]
