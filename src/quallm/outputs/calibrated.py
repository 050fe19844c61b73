"""Extraction options from a calibration file, refused where the calibration was made for another setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quallm.analysis.calibration.model import (
    PROMPTS_THAT_SCORE,
    Validity,
    check_applicable,
    proposal_options,
    read_calibration,
)
from quallm.coding.extract import ExtractOptions, resolve_strategy
from quallm.coding.prompting import load_prompt
from quallm.core.codebook import Codebook
from quallm.models.base import ChatModel


def extraction_validity(
    codebook: Codebook, model: ChatModel, options: ExtractOptions, model_info: dict[str, Any] | None = None
) -> Validity:
    """The validity facts of an extraction about to run (compared with a calibration's)."""
    info = model_info or {}
    return Validity(
        codebook_hash=codebook.hash,
        model={"name": model.name, "endpoint": model.endpoint,
               "sha256": str(info["sha256"]) if info.get("sha256") else None},
        prompts={n: load_prompt(n).hash for n in PROMPTS_THAT_SCORE},
        strategy=resolve_strategy(options, model),
        proposals=proposal_options(options.model_dump(mode="json")),
    )


def calibrated_options(
    options: ExtractOptions,
    path: str | Path,
    codebook: Codebook,
    model: ChatModel,
    model_info: dict[str, Any] | None = None,
) -> ExtractOptions:
    """``options`` with the calibration's per-code thresholds (replacing ``min_confidence`` for the codes
    it covers), its not-reliable codes to mark and its sha256; a calibration for another codebook,
    model, prompt or strategy raises :class:`~quallm.core.errors.ConfigError` saying which differs."""
    cal, digest = read_calibration(path)
    check_applicable(cal, extraction_validity(codebook, model, options, model_info), str(path))
    return options.model_copy(update={
        "code_thresholds": cal.thresholds(),
        "review_codes": cal.needs_review(),
        "calibration_sha256": digest,
    })
