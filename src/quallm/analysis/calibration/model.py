"""``calibration.json``: per-code thresholds, verdicts, the out-of-fold figures behind them, and what
the calibration is valid for (codebook, model, prompts, strategy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quallm.analysis.agreement.reconcile import Estimate
from quallm.analysis.calibration.maths import Verdict
from quallm.core.errors import ConfigError, InputError
from quallm.core.hashing import sha256_file

#: The prompts whose wording moves the probabilities (the summary's does not).
PROMPTS_THAT_SCORE = ("code_turn", "code_chunk", "verify_turn")


class Validity(BaseModel):
    """What produced the probabilities the thresholds were chosen on; a calibration applies only there."""

    model_config = ConfigDict(frozen=True)

    codebook_hash: str | None
    model: dict[str, str | None]
    prompts: dict[str, str]
    strategy: str | None
    # Options that change which proposals exist (worked examples, the none choice, codes per answer,
    # the shortest answer coded); a key missing on either side (files written before) is not compared.
    proposals: dict[str, str | None] = Field(default_factory=dict)

    def differences(self, other: Validity) -> list[str]:
        """What differs between this calibration's validity and ``other`` (a run or an extraction)."""
        out = []
        if self.codebook_hash != other.codebook_hash:
            out.append(f"codebook (calibrated on {_short(self.codebook_hash)}, now {_short(other.codebook_hash)})")
        for key in ("name", "endpoint", "sha256"):
            mine, theirs = self.model.get(key), other.model.get(key)
            if mine and theirs and mine != theirs:
                out.append(f"model {key} (calibrated on {mine}, now {theirs})")
        for name, h in self.prompts.items():
            if name in other.prompts and other.prompts[name] != h:
                out.append(f"prompt {name} (calibrated on {_short(h)}, now {_short(other.prompts[name])})")
        if self.strategy and other.strategy and self.strategy != other.strategy:
            out.append(f"strategy (calibrated on {self.strategy}, now {other.strategy})")
        for key, mine in self.proposals.items():
            if key in other.proposals and other.proposals[key] != mine:
                out.append(f"option {key} (calibrated on {_short(mine)}, now {_short(other.proposals[key])})")
        return out


def _short(h: str | None) -> str:
    return (h or "none")[:12]


class CodeCalibration(BaseModel):
    """One code: its threshold (chosen on every human-coded transcript), the out-of-fold figures at
    thresholds chosen without each transcript, and the verdict those figures give."""

    model_config = ConfigDict(frozen=True)

    code: str
    threshold: float
    verdict: Verdict
    positives: int = Field(description="human-coded units with this code")
    proposals: int = Field(description="units where the machine proposed this code (any probability)")
    kappa: Estimate
    precision: Estimate
    recall: Estimate
    default_kappa: Estimate = Field(description="out-of-sample kappa at the run's own threshold, for comparison")
    fold_thresholds: tuple[float, ...] = ()
    note: str = ""


class Calibration(BaseModel):
    """The whole calibration file."""

    model_config = ConfigDict(frozen=True)

    quallm_version: str
    created: str
    run_dir: str
    human_files: tuple[str, ...]
    coder: str
    unit: str
    transcripts: tuple[str, ...] = Field(description="the human-coded transcripts the thresholds were chosen on")
    folds: str
    default_threshold: float
    min_kappa: float
    min_positives: int
    n_boot: int
    seed: int
    codes: tuple[CodeCalibration, ...]
    pooled: dict[str, Estimate]
    pooled_default: dict[str, Estimate]
    not_calibrated: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    validity: Validity

    def thresholds(self) -> dict[str, float]:
        """Per-code thresholds for the codes it covers."""
        return {c.code: c.threshold for c in self.codes if c.code not in self.not_calibrated}

    def needs_review(self) -> tuple[str, ...]:
        """Codes whose codings are marked as needing review (every verdict but ``reliable``)."""
        return tuple(c.code for c in self.codes if c.verdict != "reliable")


def validity_from_manifest(manifest: dict[str, Any]) -> Validity:
    """The validity facts of a run, from its manifest."""
    model = manifest.get("model") or {}
    return Validity(
        codebook_hash=(manifest.get("codebook") or {}).get("hash"),
        model={k: (str(model[k]) if model.get(k) is not None else None) for k in ("name", "endpoint", "sha256")},
        prompts={k: v for k, v in (manifest.get("prompts") or {}).items() if k in PROMPTS_THAT_SCORE},
        strategy=manifest.get("strategy"),
        proposals=proposal_options(manifest.get("parameters") or {}),
    )


#: The ExtractOptions fields that decide which proposals a run makes and how they are scored (see
#: Validity.proposals).
PROPOSAL_OPTIONS = ("examples_sha256", "none_code", "max_codes_per_unit", "min_unit_words", "scoring")


def proposal_options(params: dict[str, Any]) -> dict[str, str | None]:
    """The proposal-shaping options of a run's parameters (``ExtractOptions`` as JSON), as strings; only
    the keys present, so a manifest written before them keeps comparing on the rest."""
    found = {k: params[k] for k in PROPOSAL_OPTIONS if k in params}
    return {k: None if v is None else str(v) for k, v in found.items()}


def write_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write ``cal`` as JSON (atomically) and return the path."""
    from quallm.run.rundir import atomic_write_text

    p = Path(path)
    atomic_write_text(p, json.dumps(cal.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n")
    return p


def read_calibration(path: str | Path) -> tuple[Calibration, str]:
    """A calibration file and its sha256; a file that is not one is an :class:`InputError`."""
    p = Path(path)
    try:
        cal = Calibration.model_validate_json(p.read_bytes())
    except OSError as exc:
        raise InputError(p, f"cannot read the calibration: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(file)"
        raise InputError(p, f"not a quallm calibration file ({where}: {err['msg']})") from exc
    return cal, sha256_file(p)


def check_applicable(cal: Calibration, here: Validity, path: str = "calibration") -> None:
    """Refuse (one line, saying what differs) a calibration made for another codebook, model, prompt
    or strategy."""
    diff = cal.validity.differences(here)
    if diff:
        raise ConfigError(f"{path}: made for another setup, so it does not apply here: {'; '.join(diff)}")
