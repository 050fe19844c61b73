"""Calibration on the researcher's own coded sample (``quallm calibrate``).

* :mod:`.maths`: thresholds by cross-validation over transcripts, out-of-fold agreement, verdicts (pure);
* :mod:`.labels`: codings -> label tables on the agreement package's units;
* :mod:`.model`: ``calibration.json`` and its validity (codebook, model, prompts, strategy);
* :mod:`.run`: calibrate a run, suggest what to code next, write the coders' template;
* :mod:`.apply`: apply a calibration to results already answered (no model call).
"""

from quallm.analysis.calibration.model import (
    Calibration,
    CodeCalibration,
    Validity,
    read_calibration,
    validity_from_manifest,
)

__all__ = ["Calibration", "CodeCalibration", "Validity", "read_calibration", "validity_from_manifest"]
