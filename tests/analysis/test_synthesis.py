"""synthesise(), the exact tests and study_summary() on small runs made with the fake keyword coder.

Also holds the helpers the report tests share: a run built by ``run_extraction`` with a fake model
whose answers come from ``conftest.keyword_answer``, and a fake answerer for the study-summary prompts.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import fisher_exact
from tests import conftest as qc

from quallm.analysis.exact_tests import freeman_halton, holm, two_by_k_test
from quallm.analysis.synthesis import SMALL_NUMBERS, default_group_column, synthesise, write_synthesis
from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError, OutputValidationError
from quallm.ingest.transcripts import load_transcript
from quallm.models.base import ChatRequest, Completion
from quallm.models.fake import FakeModel
from quallm.outputs.study_summary import StudyOptions, read_study_summary, study_summary, write_study_summary
from quallm.run.rundir import RunDir
from quallm.run.runner import RunReport, run_extraction

# Keywords for the demo codebook (fixtures/demo/codebook.yaml), so the fake coder codes every code somewhere.
DEMO_KEYWORDS = {
    "C01_demand": ["neglect", "domestic abuse", "exploit", "poverty", "asylum"],
    "C02_funding": ["budget", "overspent", "funding", "money", "cuts"],
    "C03_workforce": ["agency", "vacancy", "turnover", "recruit"],
    "C04_risk_aversion": ["anxiety", "just in case", "serious case review", "jumpy"],
    "C05_courts": ["court", "judge", "proceedings"],
    "C06_sufficiency": ["foster carers", "placements", "out of area", "residential"],
    "E01_leadership": ["senior team", "director", "leadership"],
    "E02_practice_model": ["signs of safety", "restorative", "practice model", "systemic"],
    "E03_edge_of_care": ["edge-of-care", "edge of care", "family group conference", "MST"],
    "E04_early_help": ["early help", "children's centres", "family hub", "parenting"],
    "E05_partnership": ["co-located", "multi-agency", "MASH", "police"],
    "E06_data": ["data", "panel", "audit", "dashboard"],
}

SMALL_KEYWORDS = {"C_money": ["budget"], "C_courts": ["court"], "E_help": ["early help"]}

SMALL_CODEBOOK = """
name: Small study
version: 2
codes:
  - id: C_money
    kind: challenge
    label: Funding pressure
    definition: Budgets are short.
  - id: C_courts
    kind: challenge
    label: Court delays
    definition: The court is slow.
  - id: E_help
    kind: enabler
    label: Early help
    definition: Early help keeps children at home.
"""

# transcript -> (trend, area, respondent answers); "budget" and "court" sit where the expected counts need them.
SMALL_STUDY: dict[str, tuple[str, str, list[str]]] = {
    "t01": ("up", "north", ["The budget is tight this year.", "Early help works. The budget is still the issue."]),
    "t02": ("up", "north", ["Our budget was cut again.", "Early help is our strength."]),
    "t03": ("down", "north", ["The court is slow with us.", "Early help made a difference."]),
    "t04": ("down", "north", ["Waiting for the court takes months.", "We rely on early help."]),
    "t05": ("flat", "north", ["Staff turnover hurts.", "Early help is valued."]),
    "t06": ("flat", "south", ["The court adjourned twice.", "Early help keeps going."]),
    "t07": ("", "south", ["The budget is the worry.", "Early help is good."]),
    "t08": ("", "south", ["Nothing much gets in the way.", "Early help, mainly."]),
    "t09": ("", "south", ["It is hard to say.", "Early help again."]),
    "t10": ("", "south", ["Families struggle.", "Early help, always early help."]),
}


def study_answer(request: ChatRequest) -> str:
    """A deterministic stand-in for the study-summary prompts; everything else goes to the keyword coder."""
    user = request.messages[-1].content
    if request.prompt_id == "study_map":
        points = []
        for block in re.split(r"\n(?=\S)", user.split("quotes:\n", 1)[1]):
            code_id = block.split(" ", 1)[0]
            nums = [int(n) for n in re.findall(r"^\s+\[(\d+)\]", block, re.M)]
            points.append(
                {
                    "code_id": code_id,
                    "statement": f"Interviewees described {code_id} in their own words.",
                    "quote_ids": nums[:2],
                }
            )
        return json.dumps({"points": points})
    if request.prompt_id == "study_reduce":
        return json.dumps({"narrative": "Across the interviews, pressures and supports were described."})
    return qc.keyword_answer(list(request.messages))


def fake_model(answer: Callable[[ChatRequest], str | Completion] = study_answer) -> FakeModel:
    """The fake model every test here uses."""
    return FakeModel(responder=answer)


def make_run(
    out: Path,
    inputs: list[Path],
    codebook_path: Path,
    keywords: dict[str, list[str]],
    metadata_path: Path | None = None,
) -> RunReport:
    """Code ``inputs`` into the run directory ``out`` with the fake keyword coder and ``keywords``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qc, "KEYWORDS", keywords)
        return run_extraction(
            inputs,
            Codebook.load(codebook_path),
            fake_model(),
            out,
            metadata_path=metadata_path,
            codebook_path=codebook_path,
        )


def write_small_study(folder: Path) -> tuple[list[Path], Path, Path]:
    """The ten transcripts, metadata CSV and codebook of the small study; (transcripts, metadata, codebook)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for tid, (_, _, answers) in SMALL_STUDY.items():
        p = folder / f"{tid}.txt"
        p.write_text(
            f"Interviewer: What gets in the way?\n\nRespondent: {answers[0]}\n\n"
            f"Interviewer: And what helps?\n\nRespondent: {answers[1]}\n",
            encoding="utf-8",
        )
        paths.append(p)
    meta = folder / "metadata.csv"
    meta.write_text(
        "transcript_id,trend,area\n" + "".join(f"{t},{v[0]},{v[1]}\n" for t, v in SMALL_STUDY.items()), encoding="utf-8"
    )
    cb = folder / "codebook.yaml"
    cb.write_text(SMALL_CODEBOOK, encoding="utf-8")
    return paths, meta, cb


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    paths, meta, cb = write_small_study(tmp_path / "inputs")
    report = make_run(tmp_path / "run", paths, cb, SMALL_KEYWORDS, meta)
    assert report.ok and report.codings > 0
    return tmp_path / "run"


# --- exact tests ----------------------------------------------------------------------------------


def test_freeman_halton_hand_computed_2x3() -> None:
    # Groups of 2, 2, 2 with the code in 2 transcripts: 6 tables; (2,0,0), (0,2,0), (0,0,2) have
    # probability 1/15 each and the three (1,1,0)-type tables 4/15 each. Observed (2,0,0): p = 3/15.
    res = freeman_halton([2, 0, 0], [2, 2, 2])
    assert res.test == "freeman-halton" and res.n_tables == 6
    assert res.p_value == pytest.approx(0.2, abs=1e-12)
    # (0,2,1) of m=3: six tables at 2/20 and (1,1,1) at 8/20, so p = 6 * 0.1.
    assert freeman_halton([0, 2, 1], [2, 2, 2]).p_value == pytest.approx(0.6, abs=1e-12)
    assert freeman_halton([1, 1, 1], [2, 2, 2]).p_value == pytest.approx(1.0)


@pytest.mark.parametrize("table", [([3, 1], [5, 6]), ([0, 4], [4, 4]), ([2, 7], [9, 12]), ([5, 0], [5, 5])])
def test_freeman_halton_equals_fisher_for_two_groups(table: tuple[list[int], list[int]]) -> None:
    (a, b), (n1, n2) = table
    expected = fisher_exact([[a, n1 - a], [b, n2 - b]]).pvalue
    assert freeman_halton([a, b], [n1, n2]).p_value == pytest.approx(expected, rel=1e-9)
    assert two_by_k_test([a, b], [n1, n2]).p_value == pytest.approx(expected, rel=1e-12)
    assert two_by_k_test([a, b], [n1, n2]).test == "fisher"


def test_freeman_halton_enumeration_matches_brute_force_and_monte_carlo() -> None:
    present, totals = [4, 1, 0, 3], [5, 4, 3, 6]
    exact = freeman_halton(present, totals)
    # Brute force over all tables with these margins.
    from math import comb

    m = sum(present)
    denom = comb(sum(totals), m)

    def prob(t: tuple[int, ...]) -> float:
        return float(np.prod([comb(n, x) for n, x in zip(totals, t, strict=True)])) / denom

    tables = [t for t in itertools.product(*(range(n + 1) for n in totals)) if sum(t) == m]
    p_obs = prob(tuple(present))
    brute = sum(prob(t) for t in tables if prob(t) <= p_obs * (1 + 1e-7))
    assert exact.n_tables == len(tables)
    assert exact.p_value == pytest.approx(brute, rel=1e-9)
    mc = freeman_halton(present, totals, max_tables=1, draws=50_000, seed=3)
    assert mc.test == "monte-carlo" and "Monte Carlo" in mc.method and "seed 3" in mc.method
    assert mc.p_value == pytest.approx(exact.p_value, abs=0.01)
    assert freeman_halton(present, totals, max_tables=1, draws=50_000, seed=3) == mc  # seeded: repeatable


def test_two_by_k_test_does_not_test_the_untestable() -> None:
    assert two_by_k_test([3, 2], [3, 2]).p_value is None  # present everywhere
    assert two_by_k_test([0, 0, 0], [2, 3, 1]).test == "none"
    with pytest.raises(ConfigError):
        freeman_halton([3, 1], [2, 2])


def test_holm() -> None:
    assert holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


# --- synthesis of a run ---------------------------------------------------------------------------


def test_matrix_counts_and_presence(small_run: Path) -> None:
    s = synthesise(small_run)
    assert s.transcript_ids == tuple(SMALL_STUDY)
    assert s.by is None and s.metadata_columns == ("trend", "area")
    money = s.code("C_money")
    assert money is not None
    assert money.counts == {
        "t01": 2,
        "t02": 1,
        "t03": 0,
        "t04": 0,
        "t05": 0,
        "t06": 0,
        "t07": 1,
        "t08": 0,
        "t09": 0,
        "t10": 0,
    }
    assert money.present_in == ("t01", "t02", "t07") and money.n_codings == 4
    assert money.n_transcripts == 3 and money.share == pytest.approx(0.3)
    help_ = s.code("E_help")
    assert help_ is not None and help_.n_transcripts == 10 and help_.label == "Early help" and help_.kind == "enabler"
    # The counts are exactly the grounded codings in the results.
    total = sum(len(r.codings) for r in RunDir(small_run).results())
    assert sum(c.n_codings for c in s.codes) == total


def test_prevalence_by_three_groups_small_numbers(small_run: Path) -> None:
    s = synthesise(small_run, "trend")
    assert s.by is not None
    by = s.by
    assert [(g.group, g.n_transcripts) for g in by.groups] == [("down", 2), ("flat", 2), ("up", 2)]
    assert by.excluded == ("t07", "t08", "t09", "t10")
    assert by.small_numbers and by.n_tests == 2
    assert any("Small numbers: descriptive only" in c for c in by.cautions)
    assert any("2 test(s) were run" in c for c in by.cautions)
    codes = {c.code_id: c for c in by.codes}
    money = codes["C_money"]
    assert [(g.group, g.n_with_code, g.n_transcripts, g.share) for g in money.groups] == [
        ("down", 0, 2, 0.0),
        ("flat", 0, 2, 0.0),
        ("up", 2, 2, 1.0),
    ]
    assert money.test == "freeman-halton" and money.p_value == pytest.approx(0.2)
    assert money.caution == SMALL_NUMBERS
    courts = codes["C_courts"]
    assert [g.n_with_code for g in courts.groups] == [2, 1, 0]
    assert courts.p_value == pytest.approx(0.6)
    # Holm over the two tests: 2 x 0.2 = 0.4, then max(0.4, 1 x 0.6) = 0.6.
    assert money.p_holm == pytest.approx(0.4) and courts.p_holm == pytest.approx(0.6)
    assert codes["E_help"].test == "none" and codes["E_help"].p_value is None and codes["E_help"].p_holm is None


def test_prevalence_by_two_groups_uses_fisher(small_run: Path) -> None:
    s = synthesise(small_run, "area")
    assert s.by is not None
    assert not s.by.small_numbers  # 5 and 5 transcripts
    assert not any("Small numbers" in c for c in s.by.cautions)
    codes = {c.code_id: c for c in s.by.codes}
    money = codes["C_money"]
    assert [(g.group, g.n_with_code, g.n_transcripts) for g in money.groups] == [("north", 2, 5), ("south", 1, 5)]
    assert money.test == "fisher" and money.caution is None
    assert money.p_value == pytest.approx(fisher_exact([[2, 3], [1, 4]]).pvalue)
    courts = codes["C_courts"]
    assert courts.p_value == pytest.approx(fisher_exact([[2, 3], [1, 4]]).pvalue)
    assert s.by.n_tests == 2
    assert money.p_value is not None and money.p_holm == pytest.approx(min(1.0, 2 * money.p_value))


def test_unknown_column_and_default_column(small_run: Path) -> None:
    with pytest.raises(ConfigError, match="trend, area"):
        synthesise(small_run, "region")
    results = RunDir(small_run).results()
    assert default_group_column(results) == "trend"
    assert default_group_column(results, max_groups=2) == "area"


def test_write_synthesis(small_run: Path, tmp_path: Path) -> None:
    s = synthesise(small_run, "trend")
    paths = write_synthesis(s, tmp_path / "out")
    assert [p.name for p in paths] == ["synthesis.json", "matrix.csv", "prevalence_by_trend.csv"]
    data = json.loads(paths[0].read_text(encoding="utf-8"))
    assert data["by"]["n_tests"] == 2 and data["codes"][0]["code_id"] == "C_money"
    rows = list(csv.DictReader(paths[1].open(encoding="utf-8")))
    assert rows[0]["code_id"] == "C_money" and rows[0]["t01"] == "2" and rows[0]["n_transcripts_with_code"] == "3"
    prev = list(csv.DictReader(paths[2].open(encoding="utf-8")))
    up = next(r for r in prev if r["code_id"] == "C_money" and r["group"] == "up")
    assert (up["n_transcripts"], up["n_with_code"], up["share"], up["test"]) == ("2", "2", "1.0", "freeman-halton")
    assert float(up["p_value"]) == pytest.approx(0.2) and float(up["p_holm"]) == pytest.approx(0.4)
    assert up["caution"] == SMALL_NUMBERS


def test_codebook_missing_is_a_clear_error(small_run: Path, tmp_path: Path) -> None:
    (tmp_path / "inputs" / "codebook.yaml").unlink()
    with pytest.raises(ConfigError, match="codebook"):
        synthesise(small_run)
    cb = Codebook.from_data({"codes": [{"id": "C_money", "kind": "challenge", "label": "Money", "definition": "d"}]})
    s = synthesise(small_run, codebook=cb)
    assert any("hash mismatch" in n for n in s.notes)
    assert any("not in the codebook" in n for n in s.notes)  # C_courts, E_help kept as unknown codes
    assert {c.code_id for c in s.codes} == {"C_money", "C_courts", "E_help"}


# --- study summary --------------------------------------------------------------------------------


def test_study_summary_numbers_from_quallm_quotes_from_codings(small_run: Path) -> None:
    model = fake_model()
    s = study_summary(small_run, model, by="trend")
    prompts = [r.prompt_id for r in model.requests]
    assert prompts.count("study_map") == 1 and prompts.count("study_reduce") == 1
    assert s.narrative.startswith("Across the interviews") and s.narrative_generated_by_model
    assert [p.code_id for p in s.challenges] == ["C_money", "C_courts"]  # most widespread first
    assert [p.code_id for p in s.enablers] == ["E_help"]
    money = s.challenges[0]
    assert (money.prevalence.n_with_code, money.prevalence.n_transcripts) == (3, 10)
    assert money.by_group is not None and money.by_group.p_value == pytest.approx(0.2)
    assert money.statement == "Interviewees described C_money in their own words."
    # Every quote is a grounded coding of that code: the transcript's own text at its offsets.
    codings = {(c.transcript_id, c.start, c.end, c.code_id) for r in RunDir(small_run).results() for c in r.codings}
    for p in (*s.challenges, *s.enablers):
        assert 1 <= len(p.quotes) <= 2
        for q in p.quotes:
            assert (q.transcript_id, q.start, q.end, p.code_id) in codings
            text = load_transcript(small_run.parent / "inputs" / f"{q.transcript_id}.txt").text
            assert text[q.start : q.end] == q.text
    assert s.n_tests == 2 and s.by == "trend" and s.calls == 2
    # The model never sees the counts: no digits in what it was sent about prevalence.
    reduce_prompt = next(r for r in model.requests if r.prompt_id == "study_reduce").messages[-1].content
    assert "raised in some interviews" in reduce_prompt and "3 of 10" not in reduce_prompt


def test_study_summary_files(small_run: Path) -> None:
    s = study_summary(small_run, fake_model(), by="trend")
    paths = write_study_summary(s, small_run)
    assert [p.name for p in paths] == ["study_summary.json", "study_summary.md"]
    md = paths[1].read_text(encoding="utf-8")
    assert "Raised in 3 of 10 (30%) transcripts." in md
    assert "down: 0/2; flat: 0/2; up: 2/2" in md and "p = 0.200" in md and "Holm-adjusted p = 0.400" in md
    assert SMALL_NUMBERS in md
    again = read_study_summary(paths[0])
    assert again == s


def test_study_summary_batches_under_the_token_budget(small_run: Path) -> None:
    model = fake_model()
    opts = StudyOptions(max_prompt_tokens=200, max_quotes_per_code=10)
    s = study_summary(small_run, model, options=opts)
    maps = [r for r in model.requests if r.prompt_id == "study_map"]
    assert len(maps) >= 2  # the three codes did not fit one prompt
    for r in model.requests:
        if r.prompt_id.startswith("study_"):
            assert sum(model.count_tokens(m.content) for m in r.messages) <= 200
    assert {p.code_id for p in (*s.challenges, *s.enablers)} == {"C_money", "C_courts", "E_help"}
    assert all(p.generated_by_model for p in (*s.challenges, *s.enablers))


def test_study_summary_reasks_on_figures_and_drops_bad_references(small_run: Path) -> None:
    answers: list[str] = []

    def answer(request: ChatRequest) -> str:
        if request.prompt_id == "study_map":
            n = len(answers)
            answers.append("map")
            if n == 0:  # first try states a percentage: sent back
                return json.dumps(
                    {"points": [{"code_id": "C_money", "statement": "About 30% said so.", "quote_ids": [1]}]}
                )
            # second try: a quote number of another code, and E_help left out
            return json.dumps(
                {
                    "points": [
                        {"code_id": "C_money", "statement": "Money was short.", "quote_ids": [99]},
                        {"code_id": "C_courts", "statement": "Courts were slow.", "quote_ids": [1]},
                    ]
                }
            )
        return study_answer(request)

    s = study_summary(small_run, fake_model(answer))
    points = {p.code_id: p for p in (*s.challenges, *s.enablers)}
    assert points["C_money"].statement == "Money was short."
    assert len(points["C_money"].quotes) == 1  # fell back to its first quote
    assert "C_money: quote #99" in s.dropped_refs and "C_courts: quote #1" in s.dropped_refs
    assert not points["E_help"].generated_by_model and points["E_help"].statement == "(not summarised by the model)"
    assert s.calls == 3


def test_study_summary_survives_a_failing_model(small_run: Path) -> None:
    def answer(request: ChatRequest) -> str:
        if request.prompt_id.startswith("study_"):
            return "not json"
        return study_answer(request)

    s = study_summary(small_run, fake_model(answer), options=StudyOptions(max_reasks=0))
    assert [f.error_type for f in s.failures] == [OutputValidationError.__name__]
    assert not s.narrative_generated_by_model
    assert all(not p.generated_by_model and len(p.quotes) == 1 for p in (*s.challenges, *s.enablers))


def test_study_summary_with_no_codings(tmp_path: Path) -> None:
    paths, meta, cb = write_small_study(tmp_path / "inputs")
    make_run(tmp_path / "run", paths, cb, {}, meta)
    model = fake_model()
    s = study_summary(tmp_path / "run", model)
    assert not [r for r in model.requests if r.prompt_id.startswith("study_")]
    assert s.absent_codes == ("C_money", "C_courts", "E_help") and not s.challenges
    assert not s.narrative_generated_by_model
