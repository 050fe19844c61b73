"""Build the HTML report of a run with jinja2 (autoescape on) and inline SVG drawn here.

Safety rule: transcript text, quotes, labels and metadata reach the page only through jinja2's
autoescaping, or, inside the SVG charts, through :func:`markupsafe.escape`. Coded spans are
highlighted by cutting the text at the coding offsets into pieces that the template escapes one by
one and wraps in ``<mark>``; no HTML is ever spliced into unescaped text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from quallm.analysis.agreement import AgreementReport, Disagreement, PairReport, format_estimate
from quallm.analysis.agreement.probability import ProbabilityCalibration
from quallm.analysis.reviewed import review_counts
from quallm.analysis.synthesis import (
    CodeComparison,
    Synthesis,
    default_group_column,
    format_p,
    format_share,
    group_line,
    synthesise,
)
from quallm.core.codebook import Code, Codebook
from quallm.core.codings import Coding
from quallm.core.errors import InputError, QuallmError
from quallm.core.results import Summary, SummaryPoint, TranscriptResult
from quallm.core.transcript import Transcript
from quallm.ingest.transcripts import load_transcript
from quallm.outputs.study_summary import StudySummary, read_study_summary
from quallm.run.opening import OpenRun, open_run
from quallm.run.review_log import REVIEW_FILE, read_log
from quallm.run.review_state import fold
from quallm.run.review_state import reviewers as review_reviewers
from quallm.run.rundir import RunDir, atomic_write_text, now_iso

MAX_DISAGREEMENTS = 300  # the rest stay in disagreements.csv/json; a page of thousands helps nobody
GROUP_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")
STRATEGIES = {
    "turn": "turn (one request per coded answer)",
    "chunk": "chunk (numbered segments of the transcript per request)",
}


# --- view values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A run of turn text with the same codings over it; the template escapes ``text``."""

    text: str
    mark_id: str | None = None
    extra_ids: tuple[str, ...] = ()  # further codings that start here (one element holds one id)
    codes: tuple[str, ...] = ()
    css: str = ""


@dataclass(frozen=True)
class TurnView:
    """One speaker turn, cut into pieces."""

    index: int
    anchor: str
    speaker: str
    timestamp: str | None
    interviewer: bool
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class QuoteView:
    """A quote with a link to its place in its transcript."""

    text: str
    href: str
    where: str
    code_id: str
    label: str
    kind: str


@dataclass(frozen=True)
class PointView:
    """A summary point (per transcript or study-wide) with its quotes linked."""

    code_id: str
    label: str
    kind: str
    text: str
    quotes: tuple[QuoteView, ...]
    prevalence: str = ""
    by_group: str = ""
    caution: str | None = None
    generated_by_model: bool = True


@dataclass
class TranscriptView:
    """One transcript's section."""

    index: int
    anchor: str
    id: str
    metadata: dict[str, str]
    source: str
    format: str
    n_codings: int
    n_ungrounded: int
    failures: list[str]
    notices: list[str] = field(default_factory=list)
    turns: list[TurnView] = field(default_factory=list)
    narrative: str | None = None
    summary_by_model: bool = True
    points: list[PointView] = field(default_factory=list)
    unplaced: list[tuple[str, QuoteView]] = field(default_factory=list)


@dataclass(frozen=True)
class HeatCell:
    """One cell of the code x transcript heatmap."""

    count: int
    style: str
    title: str


@dataclass(frozen=True)
class HeatRow:
    """One code's row of the heatmap."""

    code_id: str
    label: str
    kind: str
    anchor: str
    cells: tuple[HeatCell, ...]
    total: str


@dataclass(frozen=True)
class CodeView:
    """One code's section: definition, rules, prevalence, quotes."""

    code_id: str
    label: str
    kind: str
    anchor: str
    definition: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    prevalence: str
    quotes: tuple[QuoteView, ...]
    needs_review: int = 0  # codings a calibration marked: the code was not found reliable


@dataclass(frozen=True)
class DisagreementView:
    """One disagreement row."""

    code_id: str
    label: str
    transcript_id: str
    href: str
    where: str
    votes: tuple[tuple[str, str], ...]
    machine_quote: str | None
    unit_text: str


# --- transcripts and highlighting -----------------------------------------------------------------



def _load_transcript(run: OpenRun, r: TranscriptResult) -> tuple[Transcript | None, list[str]]:
    """The transcript of ``r`` read again from its source file, and notices about it."""
    raw, path = run.transcript_file(r)
    if path is None:
        return None, [f"The transcript file {raw!r} was not found, so the text is not shown; the coded quotes are."]
    try:
        t = load_transcript(path, r.metadata)
    except QuallmError as exc:
        return None, [f"The transcript could not be read again ({exc}); the coded quotes are shown instead."]
    notices = []
    if run.transcript_changed(r, path):
        notices.append(f"{path} has changed since the run; codings that no longer match the text are listed below.")
    return t, notices


def _css(kinds: set[str]) -> str:
    return "both" if len(kinds) > 1 else next(iter(kinds), "")


def cut_turn(
    text: str, start: int, end: int, spans: Sequence[tuple[int, int, str, str, str]], placed: set[str]
) -> list[Piece]:
    """Cut ``text[start:end]`` at the coded spans (``(start, end, mark id, code id, kind)``) into pieces.

    A span is clipped to the turn; its id goes on the first piece it covers (once over the whole
    transcript: ``placed`` collects ids already used).
    """
    inside = [(max(s, start), min(e, end), mid, cid, kind) for s, e, mid, cid, kind in spans if s < end and e > start]
    cuts = sorted({start, end, *(s for s, *_ in inside), *(e for _, e, *_ in inside)})
    pieces: list[Piece] = []
    for a, b in pairwise(cuts):
        if a >= b:
            continue
        over = [sp for sp in inside if sp[0] <= a and sp[1] >= b]
        if not over:
            pieces.append(Piece(text=text[a:b]))
            continue
        new_ids = [sp[2] for sp in over if sp[0] == a and sp[2] not in placed]
        placed.update(new_ids)
        pieces.append(
            Piece(
                text=text[a:b],
                mark_id=new_ids[0] if new_ids else None,
                extra_ids=tuple(new_ids[1:]),
                codes=tuple(dict.fromkeys(sp[3] for sp in over)),
                css=_css({sp[4] for sp in over}),
            )
        )
    return pieces


def _where(tid: str, c: Coding | None = None, turn_index: int | None = None) -> str:
    ti = c.turn_index if c is not None else turn_index
    return f"{tid}, turn {ti}" if ti is not None else tid


# --- SVG ------------------------------------------------------------------------------------------


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def prevalence_svg(comparisons: Sequence[CodeComparison], column: str) -> Markup:
    """Grouped horizontal bars: for each code, the share of each group's transcripts with it.

    Every piece of text is escaped here; numbers are formatted by quallm.
    """
    if not comparisons:
        return Markup("")
    groups = [g.group for g in comparisons[0].groups]
    colour = {g: GROUP_COLOURS[i % len(GROUP_COLOURS)] for i, g in enumerate(groups)}
    label_w, bar_w, right_w, bar_h, gap = 300, 440, 70, 13, 3
    width = label_w + bar_w + right_w
    legend_h = 22 * ((len(groups) + 2) // 3) + 10
    axis_y = legend_h + 16
    block = len(groups) * (bar_h + gap) + 14
    height = axis_y + 8 + block * len(comparisons) + 10
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-labelledby="prev-title">',
        f'<title id="prev-title">Share of transcripts with each code, by {escape(column)}</title>',
    ]
    for i, name in enumerate(groups):
        lx, ly = 10 + (i % 3) * 280, 8 + (i // 3) * 22
        n = comparisons[0].groups[i].n_transcripts
        out.append(f'<rect x="{lx}" y="{ly}" width="14" height="14" fill="{colour[name]}"/>')
        out.append(f'<text x="{lx + 20}" y="{ly + 12}" class="legend">{escape(_short(name, 30))} (n={n})</text>')
    for pct in (0, 25, 50, 75, 100):
        gx = label_w + bar_w * pct / 100
        out.append(f'<line x1="{gx:.1f}" y1="{axis_y}" x2="{gx:.1f}" y2="{height - 10}" class="grid"/>')
        out.append(f'<text x="{gx:.1f}" y="{axis_y - 4}" class="tick" text-anchor="middle">{pct}%</text>')
    y = axis_y + 8
    for c in comparisons:
        mid = y + (len(groups) * (bar_h + gap)) / 2 + 4
        out.append(
            f'<text x="{label_w - 8}" y="{mid:.1f}" class="label" text-anchor="end">'
            f"<title>{escape(c.label)} ({escape(c.code_id)})</title>{escape(_short(c.label, 42))}</text>"
        )
        for j, g in enumerate(c.groups):
            by = y + j * (bar_h + gap)
            w = bar_w * g.share
            out.append(
                f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h}" fill="{colour[g.group]}">'
                f"<title>{escape(g.group)}: {g.n_with_code} of {g.n_transcripts}</title></rect>"
            )
            out.append(
                f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 2}" class="value">'
                f"{g.n_with_code}/{g.n_transcripts}</text>"
            )
        y += block
    out.append("</svg>")
    return Markup("\n".join(out))


def reliability_svg(pc: ProbabilityCalibration) -> Markup:
    """The calibration curve (reliability diagram): per probability bin, the share of the machine's
    proposals the human coded too, against the diagonal of perfect calibration, with each bin's count.

    Every piece of text is escaped here; numbers are formatted by quallm."""
    if not pc.n:
        return Markup("")
    left, top, size, bottom = 50, 16, 300, 52
    width, height = left + size + 20, top + size + bottom
    x0, y0 = left, top + size

    def px(v: float) -> float:
        return x0 + size * v

    def py(v: float) -> float:
        return y0 - size * v

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-labelledby="rel-title-{escape(pc.coder)}">',
        f'<title id="rel-title-{escape(pc.coder)}">Calibration of the machine\'s probabilities against '
        f"{escape(pc.coder)}</title>",
    ]
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{px(0):.1f}" y1="{py(v):.1f}" x2="{px(1):.1f}" y2="{py(v):.1f}" class="grid"/>')
        out.append(f'<text x="{x0 - 6}" y="{py(v) + 4:.1f}" class="tick" text-anchor="end">{v:.2f}</text>')
        out.append(f'<text x="{px(v):.1f}" y="{y0 + 14}" class="tick" text-anchor="middle">{v:.2f}</text>')
    out.append(f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(1):.1f}" y2="{py(1):.1f}" class="diagonal" '
               'stroke="#888" stroke-dasharray="4 3"/>')
    for b in pc.bins:
        if not b.n or b.observed is None:
            continue
        bw = size * (b.high - b.low)
        out.append(
            f'<rect x="{px(b.low) + 1:.1f}" y="{py(b.observed):.1f}" width="{bw - 2:.1f}" '
            f'height="{size * b.observed:.1f}" fill="#4c78a8" opacity="0.75"><title>probability {b.low:.1f}-'
            f"{b.high:.1f}: {b.n} proposal(s), mean {b.mean_probability or 0:.2f}, human coded "
            f"{b.observed:.0%}</title></rect>"
        )
        out.append(f'<text x="{px(b.low) + bw / 2:.1f}" y="{y0 + 28}" class="value" text-anchor="middle">'
                   f"{b.n}</text>")
    out.append(f'<text x="{x0 + size / 2}" y="{height - 6}" class="label" text-anchor="middle">machine probability '
               "(count per bin above)</text>")
    out.append(f'<text x="12" y="{top + size / 2}" class="label" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + size / 2})">share human-coded</text>')
    out.append("</svg>")
    return Markup("\n".join(out))


def _heat_colour(count: int, peak: int) -> str:
    if count == 0 or peak == 0:
        return "background:#f7f9fb;color:#9aa5b1"
    t = 0.18 + 0.82 * count / peak  # one coding is still clearly visible
    r, g, b = (round(255 + (v - 255) * t) for v in (8, 81, 156))
    fg = "#ffffff" if t > 0.55 else "#102a43"
    return f"background:rgb({r},{g},{b});color:{fg}"


# --- the page -------------------------------------------------------------------------------------


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("quallm.outputs.report", "templates"),
        autoescape=True,  # every variable is escaped unless it is Markup built in this module
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["est"] = format_estimate
    env.filters["p"] = format_p
    env.filters["pct"] = lambda v: "" if v is None else f"{v:.0%}"
    return env


def _duration(start: str | None, end: str | None) -> str:
    try:
        secs = (datetime.fromisoformat(end or "") - datetime.fromisoformat(start or "")).total_seconds()
    except ValueError:
        return ""
    return f" ({secs / 60:.1f} minutes)" if secs >= 60 else f" ({secs:.0f} seconds)"


def _run_facts(manifest: dict[str, Any], results: Sequence[TranscriptResult], cb: Codebook) -> list[tuple[str, str]]:
    """The manifest in plain words: (term, description) pairs."""
    facts: list[tuple[str, str]] = []
    model = manifest.get("model") or {}
    extra = {k: v for k, v in model.items() if k not in ("name", "endpoint", "output_mode")}
    desc = f"{model.get('name', 'unknown')} at {model.get('endpoint', 'unknown endpoint')}"
    if model.get("output_mode"):
        desc += f", structured output: {model['output_mode']}"
    if extra:
        desc += "; " + "; ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in extra.items())
    facts.append(("Model", desc))
    if manifest.get("started"):
        facts.append(
            (
                "When",
                f"started {manifest['started']}, finished {manifest.get('finished') or 'not yet'}"
                + _duration(manifest.get("started"), manifest.get("finished")),
            )
        )
    if manifest.get("status"):
        facts.append(("Status", str(manifest["status"])))
    strategy = manifest.get("strategy")
    params = manifest.get("parameters") or {}
    if strategy:
        settings = ", ".join(f"{k} {params[k]}" for k in ("temperature", "seed", "max_reasks") if k in params)
        facts.append(("Coding strategy", STRATEGIES.get(strategy, strategy) + (f"; {settings}" if settings else "")))
    info = manifest.get("codebook") or {}
    facts.append(
        (
            "Codebook",
            f"{cb.name}, version {cb.version}: {len(cb.ids)} codes"
            + (
                " (" + ", ".join(f"{sum(c.kind == k.name for c in cb.codes if c.codable)} {k.plural_name}"
                                 for k in cb.categories) + ")"
                if cb.categories
                else ""
            )
            + (f"; file {info['path']}" if info.get("path") else "")
            + (f"; sha256 {str(info['hash'])[:12]}…" if info.get("hash") else ""),
        )
    )
    counts = manifest.get("counts") or {}
    incomplete = [r.transcript_id for r in results if not r.complete]
    errors = manifest.get("errors") or []
    facts.append(
        (
            "Transcripts",
            f"{len(results)} in the run; {len(incomplete)} incomplete; {len(errors)} input file(s) could not be read",
        )
    )
    if manifest.get("metadata_file"):
        facts.append(("Metadata", f"{manifest['metadata_file']}"))
    n_codings = sum(len(r.codings) for r in results)
    facts.append(("Codings", f"{n_codings} grounded codings (each quote found verbatim in its transcript)"))
    n_ung = sum(len(r.ungrounded) for r in results)
    facts.append(
        (
            "Ungrounded quotes dropped",
            f"{n_ung}: quotes the model gave that could not be found in the "
            "transcript; they are not counted or shown (see log.jsonl)",
        )
    )
    n_fail = sum(len(r.failures) for r in results)
    facts.append(
        (
            "Failed units",
            f"{n_fail} unit(s) failed after all re-asks, in {len(incomplete)} transcript(s)"
            + (f": {', '.join(incomplete)}" if incomplete else ""),
        )
    )
    calls = sum(r.calls for r in results)
    ptok = sum(r.usage.prompt_tokens for r in results)
    ctok = sum(r.usage.completion_tokens for r in results)
    facts.append(
        (
            "Model use",
            f"{calls} calls ({sum(r.reasks for r in results)} re-asks); {ptok} prompt and {ctok} completion tokens",
        )
    )
    if manifest.get("prompts"):
        facts.append(("Prompts", ", ".join(f"{k} {v}" for k, v in manifest["prompts"].items())))
    sw = [
        f"quallm {manifest['quallm_version']}" if manifest.get("quallm_version") else "",
        f"Python {manifest['python']}" if manifest.get("python") else "",
        str(manifest.get("platform") or ""),
    ]
    if any(sw):
        facts.append(("Software", ", ".join(s for s in sw if s)))
    if counts.get("input_errors") and not errors:
        facts.append(("Input errors", str(counts["input_errors"])))
    return facts


def _read_agreement(run: OpenRun) -> tuple[AgreementReport | None, list[Disagreement], list[str]]:
    notices: list[str] = []
    path = run.path / "agreement.json"
    if not path.is_file():
        return None, [], notices
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        body.pop("n_disagreements", None)
        report = AgreementReport.model_validate({**body, "disagreements": []})
    except (OSError, ValueError) as exc:
        return None, [], [f"agreement.json could not be read: {exc}"]
    rows: list[Disagreement] = []
    dpath = run.path / "disagreements.json"
    if dpath.is_file():
        try:
            rows = [Disagreement.model_validate(x) for x in json.loads(dpath.read_text(encoding="utf-8"))]
        except (OSError, ValueError) as exc:
            notices.append(f"disagreements.json could not be read: {exc}")
    return report, rows, notices


def _ordered_pairs(report: AgreementReport) -> list[PairReport]:
    # Human-human pairs first: they are the baseline the machine is judged against.
    order = {"human-human": 0, "machine-human": 1, "reviewed-human": 2, "reviewed-reviewed": 3,
             "reviewed-machine": 4, "machine-machine": 5}
    return sorted(report.pairs, key=lambda p: order.get(p.kind, 9))


def _review(run: OpenRun, codebook: Codebook, n_transcripts: int) -> dict[str, Any] | None:
    """Review decisions per code (``quallm review``), or None when the run has no review log."""
    log = read_log(run.path / REVIEW_FILE)
    if not log.decisions and not log.problems:
        return None
    labels = {c.id: c.label for c in codebook.codes}
    rows = [(c, labels.get(c.code_id, c.code_id)) for c in review_counts(log.decisions, codebook.ids)]
    reviewers = [(name, len(fold(log.decisions, name).reviewed)) for name in review_reviewers(log.decisions)]
    return {"rows": rows, "reviewers": reviewers, "n_transcripts": n_transcripts, "problems": log.problems,
            "totals": {k: sum(getattr(c, k) for c, _ in rows)
                       for k in ("accepted", "rejected", "recoded", "recoded_to", "added")}}


class _Builder:
    """Collects everything the template needs from one run directory."""

    def __init__(self, run: OpenRun, by: str | None, codebook: Codebook | None, max_disagreements: int) -> None:
        self.run = run
        self.results = run.results
        if not self.results:
            raise InputError(run.path, "the run has no results to report")
        self.manifest = run.manifest.to_json()
        self.by = by if by is not None else default_group_column(self.results)
        self.syn: Synthesis = synthesise(run, self.by, codebook=codebook)
        self.codebook, _ = run.codebook(codebook)
        self.max_disagreements = max_disagreements
        self.t_index = {r.transcript_id: i for i, r in enumerate(self.results)}
        self.anchors: dict[tuple[str, int, int], str] = {}  # (transcript, start, end) -> mark id
        self.coding_ids: dict[tuple[str, int], str] = {}  # (transcript, coding index) -> mark id
        for r in self.results:
            i = self.t_index[r.transcript_id]
            for k, c in enumerate(r.codings):
                mid = f"t{i}-m{k}"
                self.coding_ids[(r.transcript_id, k)] = mid
                if c.start is not None and c.end is not None:
                    self.anchors.setdefault((r.transcript_id, c.start, c.end), mid)

    def href(self, tid: str, start: int | None = None, end: int | None = None) -> str:
        """Link to a quote's mark, else to its transcript's section."""
        if start is not None and end is not None and (tid, start, end) in self.anchors:
            return "#" + self.anchors[(tid, start, end)]
        return f"#t{self.t_index[tid]}" if tid in self.t_index else "#transcripts"

    def code_meta(self, code_id: str) -> tuple[str, str]:
        code = self.codebook.get(code_id)
        return (code.label, code.kind or "") if code else (code_id, "unknown")

    def kind_css(self, kind: str) -> str:
        """The CSS class of a category: its own name for the default two, else ``k0``... by position."""
        if kind in ("challenge", "enabler", "unknown", ""):
            return kind
        names = [k.name for k in self.codebook.categories]
        return f"k{names.index(kind) % 6}" if kind in names else "unknown"

    def kind_titles(self) -> list[tuple[str, str]]:
        """(heading, category) per category, or one untitled group when the codebook has none."""
        return [(k.title, k.name) for k in self.codebook.categories] or [("Codes", "")]

    # -- sections

    def transcripts(self) -> list[TranscriptView]:
        views = []
        for r in self.results:
            i = self.t_index[r.transcript_id]
            t, notices = _load_transcript(self.run, r)
            view = TranscriptView(
                index=i,
                anchor=f"t{i}",
                id=r.transcript_id,
                metadata=dict(r.metadata),
                source=r.source,
                format=r.format,
                n_codings=len(r.codings),
                n_ungrounded=len(r.ungrounded),
                failures=[f"{f.unit}: {f.error_type}: {f.message}" for f in r.failures],
                notices=notices,
            )
            spans: list[tuple[int, int, str, str, str]] = []
            for k, c in enumerate(r.codings):
                mid = self.coding_ids[(r.transcript_id, k)]
                label, kind = self.code_meta(c.code_id)
                ok = (
                    t is not None
                    and c.start is not None
                    and c.end is not None
                    and (
                        0 <= c.start < c.end <= len(t.text) and (c.quote is None or t.text[c.start : c.end] == c.quote)
                    )
                )
                if ok:
                    assert c.start is not None and c.end is not None
                    spans.append((c.start, c.end, mid, c.code_id, self.kind_css(kind)))
                else:
                    q = QuoteView(
                        text=c.quote or "",
                        href="#" + mid,
                        where=_where(r.transcript_id, c),
                        code_id=c.code_id,
                        label=label,
                        kind=kind,
                    )
                    view.unplaced.append((mid, q))
            if t is not None:
                placed: set[str] = set()
                for turn in t.turns:
                    view.turns.append(
                        TurnView(
                            index=turn.index,
                            anchor=f"t{i}-turn{turn.index}",
                            speaker=turn.speaker,
                            timestamp=turn.timestamp,
                            interviewer=turn.is_interviewer,
                            pieces=tuple(cut_turn(t.text, turn.start, turn.end, spans, placed)),
                        )
                    )
                for s, _e, mid, cid, kind in spans:  # spans outside every turn keep a working link
                    if mid not in placed:
                        label, _ = self.code_meta(cid)
                        view.unplaced.append(
                            (
                                mid,
                                QuoteView(
                                    text=t.text[s:_e],
                                    href="#" + mid,
                                    where=r.transcript_id,
                                    code_id=cid,
                                    label=label,
                                    kind=kind,
                                ),
                            )
                        )
            self._summary(view, r.transcript_id, r.summary)
            views.append(view)
        return views

    def _summary(self, view: TranscriptView, tid: str, summary: Summary | None) -> None:
        if summary is None:
            return
        view.narrative = summary.narrative
        view.summary_by_model = summary.generated_by_model
        points: Sequence[SummaryPoint] = summary.points
        for p in points:
            quotes = tuple(
                QuoteView(
                    text=q.text,
                    href=self.href(tid, q.start, q.end),
                    where=_where(tid, turn_index=q.turn_index),
                    code_id=p.code_id,
                    label=p.label,
                    kind=p.kind,
                )
                for q in p.quotes
            )
            text = p.summary if p.by_model and p.summary else "(quotes only: the model wrote no summary)"
            view.points.append(PointView(code_id=p.code_id, label=p.label, kind=p.kind, text=text, quotes=quotes))

    def heatmap(self) -> tuple[list[HeatRow], int]:
        peak = max((n for row in self.syn.codes for n in row.counts.values()), default=0)
        n = len(self.syn.transcript_ids)
        rows = []
        for row in self.syn.codes:
            cells = tuple(
                HeatCell(
                    count=row.counts[t],
                    style=_heat_colour(row.counts[t], peak),
                    title=f"{row.code_id} in {t}: {row.counts[t]} coding(s)",
                )
                for t in self.syn.transcript_ids
            )
            rows.append(
                HeatRow(
                    code_id=row.code_id,
                    label=row.label,
                    kind=row.kind,
                    anchor=f"code-{row.code_id}",
                    cells=cells,
                    total=format_share(row.n_transcripts, n),
                )
            )
        return rows, peak

    def codes(self) -> list[CodeView]:
        quotes: dict[str, list[QuoteView]] = {}
        for r in self.results:
            for k, c in enumerate(r.codings):
                label, kind = self.code_meta(c.code_id)
                quotes.setdefault(c.code_id, []).append(
                    QuoteView(
                        text=c.quote or "",
                        href="#" + self.coding_ids[(r.transcript_id, k)],
                        where=_where(r.transcript_id, c),
                        code_id=c.code_id,
                        label=label,
                        kind=kind,
                    )
                )
        n = len(self.syn.transcript_ids)
        review = Counter(c.code_id for r in self.results for c in r.codings if c.needs_review)
        views = []
        for row in self.syn.codes:
            code: Code | None = self.codebook.get(row.code_id)
            views.append(
                CodeView(
                    code_id=row.code_id,
                    label=row.label,
                    kind=row.kind,
                    anchor=f"code-{row.code_id}",
                    definition=code.definition if code else "(not in the codebook)",
                    include=code.include if code else (),
                    exclude=code.exclude if code else (),
                    prevalence=f"Coded {row.n_codings} time(s), in {format_share(row.n_transcripts, n)} transcripts.",
                    quotes=tuple(quotes.get(row.code_id, [])),
                    needs_review=review.get(row.code_id, 0),
                )
            )
        return views

    def study(self) -> tuple[StudySummary | None, list[PointView]]:
        s = read_study_summary(self.run.path / "study_summary.json")
        if s is None:
            return None, []
        points = []
        for p in s.points:
            quotes = tuple(
                QuoteView(
                    text=q.text,
                    href=self.href(q.transcript_id, q.start, q.end),
                    where=_where(q.transcript_id, turn_index=q.turn_index),
                    code_id=p.code_id,
                    label=p.label,
                    kind=p.kind,
                )
                for q in p.quotes
            )
            by_group = group_line(p.by_group) if p.by_group is not None else ""
            points.append(
                PointView(
                    code_id=p.code_id,
                    label=p.label,
                    kind=p.kind,
                    text=p.statement,
                    quotes=quotes,
                    prevalence=format_share(p.prevalence.n_with_code, p.prevalence.n_transcripts),
                    by_group=by_group,
                    caution=p.by_group.caution if p.by_group else None,
                    generated_by_model=p.generated_by_model,
                )
            )
        return s, points

    def disagreements(self, rows: Sequence[Disagreement], coders: Sequence[str]) -> list[DisagreementView]:
        out = []
        for d in rows[: self.max_disagreements]:
            label, _ = self.code_meta(d.code_id)
            i = self.t_index.get(d.transcript_id)
            href = (
                f"#t{i}-turn{d.turn_index}"
                if i is not None and d.turn_index is not None
                else self.href(d.transcript_id)
            )
            votes = tuple((c, "—" if d.votes.get(c) is None else "yes" if d.votes[c] else "no") for c in coders)
            text = d.unit_text if len(d.unit_text) <= 400 else d.unit_text[:399] + "…"
            out.append(
                DisagreementView(
                    code_id=d.code_id,
                    label=label,
                    transcript_id=d.transcript_id,
                    href=href,
                    where=_where(d.transcript_id, turn_index=d.turn_index),
                    votes=votes,
                    machine_quote=d.machine_quote,
                    unit_text=text,
                )
            )
        return out

    def context(self) -> dict[str, Any]:
        heat_rows, peak = self.heatmap()
        agreement, dis_rows, agreement_notices = _read_agreement(self.run)
        study, study_points = self.study()
        by_values = [r.metadata.get(self.by, "") if self.by else "" for r in self.results]
        return {
            "title": f"quallm report: {self.codebook.name}",
            "generated": now_iso(),
            "run_path": str(self.run.path),
            "facts": _run_facts(self.manifest, self.results, self.codebook),
            "input_errors": [str(e) for e in self.manifest.get("errors") or []],
            "syn": self.syn,
            "by": self.by,
            "by_values": by_values,
            "metadata_columns": self.syn.metadata_columns,
            "heat_rows": heat_rows,
            "heat_peak": peak,
            "transcript_ids": self.syn.transcript_ids,
            "prevalence_svg": prevalence_svg(self.syn.by.codes, self.syn.by.column) if self.syn.by else Markup(""),
            "reliability": [
                (pc, reliability_svg(pc)) for pc in (agreement.probability_calibration if agreement else [])
            ],
            "codes": self.codes(),
            "transcripts": self.transcripts(),
            "agreement": agreement,
            "pairs": _ordered_pairs(agreement) if agreement else [],
            "agreement_notices": agreement_notices,
            "disagreements": self.disagreements(dis_rows, agreement.coders if agreement else []),
            "n_disagreements": len(dis_rows),
            "max_disagreements": self.max_disagreements,
            "code_labels": {row.code_id: row.label for row in self.syn.codes},
            "study": study,
            "study_points": study_points,
            "review": _review(self.run, self.codebook, len(self.results)),
            "kind_titles": self.kind_titles(),
            "kind_names": [k.name for k in self.codebook.categories],
        }


def build_report_html(
    run_dir: str | Path | RunDir | OpenRun,
    *,
    by: str | None = None,
    codebook: Codebook | None = None,
    max_disagreements: int = MAX_DISAGREEMENTS,
) -> str:
    """The report of a run as one HTML string (see :func:`render_report`)."""
    run = open_run(run_dir, need_manifest=False)
    builder = _Builder(run, by, codebook, max_disagreements)
    env = _environment()
    env.filters["kind_css"] = builder.kind_css
    return env.get_template("report.html.j2").render(**builder.context())


def render_report(
    run_dir: str | Path | RunDir | OpenRun,
    out_path: str | Path | None = None,
    *,
    by: str | None = None,
    codebook: Codebook | None = None,
    max_disagreements: int = MAX_DISAGREEMENTS,
) -> Path:
    """Write the run's report as one self-contained HTML file (default ``<run_dir>/report.html``).

    ``by`` is the metadata column for prevalence by group (default: the first column with 2 to 6
    distinct values; none if there is no such column). ``codebook`` defaults to the file named in the
    manifest. Agreement and disagreements appear when ``agreement.json`` is in the run directory, the
    study summary when ``study_summary.json`` is. Transcript texts are read again from the files named in
    the manifest, to show each quote in its context.
    """
    run = open_run(run_dir, need_manifest=False)
    out = Path(out_path) if out_path is not None else run.path / "report.html"
    html = build_report_html(run, by=by, codebook=codebook, max_disagreements=max_disagreements)
    try:
        atomic_write_text(out, html)
    except OSError as exc:
        raise InputError(out, f"cannot write the report: {exc}") from exc
    return out


__all__ = ["build_report_html", "cut_turn", "prevalence_svg", "reliability_svg", "render_report"]
