"""Inter-coder agreement: how far the machine's coding (and each human's) agrees with the others.

Three layers:

* :mod:`~quallm.analysis.agreement.metrics`: coefficients over a units x coders table of labels (``None``
  for "no value"): :func:`percent_agreement`, :func:`cohen_kappa` (optionally weighted),
  :func:`fleiss_kappa`, :func:`krippendorff_alpha` (nominal/ordinal/interval/ratio),
  :func:`gwet_ac1`, and :func:`precision_recall_f1` on binary presence. Each returns
  ``float | None``; ``None`` means undefined (never NaN).
* :mod:`~quallm.analysis.agreement.units`: units of analysis (``turn``, ``sentence``, ``transcript``) built
  from transcripts, and which codings mark which units (:func:`mark_units`; quotes are found by
  :mod:`quallm.core.spans`).
* :func:`reconcile`: per code and pooled (micro and macro) agreement for every pair of coders and
  across all coders, with percentile-bootstrap CIs over transcripts, the disagreements to review,
  and the issues met; :func:`write_agreement` writes it as JSON and CSV, :func:`format_report` as
  text. :func:`read_human_csv` imports human codings to compare against.

Typical use::

    human, problems = read_human_csv("human.csv", transcripts, codebook_codes)
    report = reconcile(transcripts, machine_codings + human, codebook_codes, unit="turn")
    write_agreement(report, "runs/agreement")
"""

from quallm.analysis.agreement.metrics import (
    AgreementInputError,
    PrecisionRecall,
    cohen_kappa,
    fleiss_kappa,
    gwet_ac1,
    krippendorff_alpha,
    percent_agreement,
    precision_recall_f1,
)
from quallm.analysis.agreement.reconcile import (
    POOLED_MACRO,
    POOLED_MICRO,
    AgreementReport,
    Disagreement,
    Estimate,
    GroupCodeStats,
    GroupReport,
    PairCodeStats,
    PairReport,
    disagreements,
    is_machine_coder,
    is_reviewed_coder,
    reconcile,
)
from quallm.analysis.agreement.units import (
    MarkedUnits,
    Unit,
    UnitKind,
    build_units,
    mark_units,
)
from quallm.analysis.agreement.writers import format_estimate, format_report, format_value, write_agreement
from quallm.ingest.human_csv import read_human_csv

__all__ = [
    "POOLED_MACRO",
    "POOLED_MICRO",
    "AgreementInputError",
    "AgreementReport",
    "Disagreement",
    "Estimate",
    "GroupCodeStats",
    "GroupReport",
    "MarkedUnits",
    "PairCodeStats",
    "PairReport",
    "PrecisionRecall",
    "Unit",
    "UnitKind",
    "build_units",
    "cohen_kappa",
    "disagreements",
    "fleiss_kappa",
    "format_estimate",
    "format_report",
    "format_value",
    "gwet_ac1",
    "is_machine_coder",
    "is_reviewed_coder",
    "krippendorff_alpha",
    "mark_units",
    "percent_agreement",
    "precision_recall_f1",
    "read_human_csv",
    "reconcile",
    "write_agreement",
]
