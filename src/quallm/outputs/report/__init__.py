"""The HTML report of a run: one self-contained file people can read, share and archive.

:func:`render_report` writes ``report.html`` with inline CSS and inline SVG charts (no network, no
scripts): the run in plain words, the code x transcript heatmap, prevalence by group, every code with
its quotes linked to their place in the transcript, per-transcript summaries and full texts with the
coded spans highlighted, agreement with human coders and the disagreements, and the study summary.
"""

from quallm.outputs.report.render import build_report_html, render_report

__all__ = ["build_report_html", "render_report"]
