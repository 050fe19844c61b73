"""Inductive discovery: candidate themes per chunk, consolidated into themes and a draft codebook.

``run_discovery`` is the batch entry point (``quallm discover``); the steps are in
``candidates`` (open coding of chunks), ``consolidate`` (embedding clusters, optional model merge),
``merge`` (the model merge step) and ``outputs`` (``codebook.draft.yaml``, ``themes.md``).
"""

from quallm.discovery.candidates import Candidate, CandidateFinder, CandidateSet, DiscoverOptions
from quallm.discovery.consolidate import Theme, cluster, consolidate
from quallm.discovery.outputs import draft_codebook, render_themes_md
from quallm.discovery.run import DiscoveryReport, run_discovery

__all__ = [
    "Candidate",
    "CandidateFinder",
    "CandidateSet",
    "DiscoverOptions",
    "DiscoveryReport",
    "Theme",
    "cluster",
    "consolidate",
    "draft_codebook",
    "render_themes_md",
    "run_discovery",
]
