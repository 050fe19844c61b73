"""reconcile(), units, disagreements, writers and the human CSV import on small hand-built data."""

from __future__ import annotations

import csv
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from quallm.analysis.agreement import (
    POOLED_MACRO,
    POOLED_MICRO,
    build_units,
    cohen_kappa,
    disagreements,
    fleiss_kappa,
    format_report,
    gwet_ac1,
    krippendorff_alpha,
    percent_agreement,
    precision_recall_f1,
    read_human_csv,
    reconcile,
    write_agreement,
)
from quallm.core.codings import Coding
from quallm.core.errors import ConfigError, InputError
from quallm.core.spans import find_quote, locate_quote, sentence_spans
from quallm.core.transcript import Transcript, Turn


def make_transcript(tid: str, turns: list[tuple[str, str]], interviewer: str = "I") -> Transcript:
    """Turns as "Speaker: text" lines; the speaker ``interviewer`` is the interviewer."""
    text = ""
    out: list[Turn] = []
    for i, (speaker, said) in enumerate(turns):
        if text:
            text += "\n"
        text += f"{speaker}: "
        start = len(text)
        text += said
        out.append(Turn(index=i, speaker=speaker, start=start, end=len(text), text=said,
                        is_interviewer=speaker == interviewer))
    return Transcript(id=tid, source=f"{tid}.txt", format="txt", text=text, turns=tuple(out))


def span_coding(t: Transcript, coder: str, code: str, fragment: str, **kw: object) -> Coding:
    start = t.text.index(fragment)
    return Coding(transcript_id=t.id, coder=coder, code_id=code, start=start, end=start + len(fragment),
                  quote=fragment, **kw)  # type: ignore[arg-type]


def turn_coding(t: Transcript, coder: str, code: str, turn: int, **kw: object) -> Coding:
    """A coding of a whole turn by offsets (how a grounded coding of that turn looks)."""
    tu = t.turns[turn]
    return Coding(transcript_id=t.id, coder=coder, code_id=code, start=tu.start, end=tu.end,
                  turn_index=turn, quote=tu.text, **kw)  # type: ignore[arg-type]


# --- vectorised statistics equal the table functions of metrics.py


def _random_study(seed: int) -> tuple[list[Transcript], list[Coding], dict[str, dict[tuple[str, int, str], bool]]]:
    """Random transcripts and codings of three coders; also the truth table (transcript, turn, code)."""
    rng = np.random.default_rng(seed)
    transcripts: list[Transcript] = []
    codings: list[Coding] = []
    truth: dict[str, dict[tuple[str, int, str], bool]] = {"alice": {}, "bob": {}, "quallm-m": {}}
    for ti in range(7):
        n = int(rng.integers(2, 7))
        turns = [("I" if k % 2 == 0 else "P", f"words of turn {k} in transcript {ti}.") for k in range(2 * n)]
        t = make_transcript(f"tr{ti}", turns)
        transcripts.append(t)
        for coder in truth:
            if (coder == "bob" and ti in (3, 5)) or (coder == "alice" and ti == 5):
                continue  # not coded: missing values, not "absent"; tr5 has one coder (not pairable)
            for k in range(1, 2 * n, 2):
                for code in ("A", "B", "C"):
                    p = {"A": 0.5, "B": 0.15, "C": 0.0}[code]
                    mark = bool(rng.random() < p)
                    truth[coder][(t.id, k, code)] = mark
                    if mark:
                        codings.append(turn_coding(t, coder, code, k, confidence=float(rng.random())))
            # Every coder applies some code in each transcript it coded (coverage is inferred).
            if not any(truth[coder].get((t.id, k, c)) for k in range(1, 2 * n, 2) for c in "ABC"):
                truth[coder][(t.id, 1, "A")] = True
                codings.append(turn_coding(t, coder, "A", 1))
    return transcripts, codings, truth


def _value(table: list[tuple[bool | None, ...]], stat: str) -> float | None:
    if stat == "percent":
        return percent_agreement(table)
    if stat == "kappa":
        return cohen_kappa(table)
    if stat == "alpha":
        return krippendorff_alpha(table)
    if stat == "ac1":  # pair statistics are on the units both coders coded, as Cohen's kappa
        return gwet_ac1([r for r in table if None not in r], categories=[False, True])
    prf = precision_recall_f1([r[0] for r in table], [r[1] for r in table])
    return getattr(prf, stat)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_turn_statistics_equal_metrics_functions(seed: int) -> None:
    transcripts, codings, truth = _random_study(seed)
    report = reconcile(transcripts, codings, ["A", "B", "C"], unit="turn", n_boot=0)
    assert report.issues == []
    coders = report.coders
    assert coders == ["alice", "bob", "quallm-m"]
    units = [(t.id, tu.index) for t in transcripts for tu in t.coded_turns()]

    def vote(coder: str, tid: str, k: int, code: str) -> bool | None:
        covered = any(key[0] == tid for key in truth[coder])
        return truth[coder].get((tid, k, code), False) if covered else None

    for pair in report.pairs:
        tables = {code: [(vote(pair.coder_a, tid, k, code), vote(pair.coder_b, tid, k, code)) for tid, k in units]
                  for code in report.codes}
        pooled = [row for code in report.codes for row in tables[code]]
        for stat in ("percent", "kappa", "alpha", "ac1", "precision", "recall", "f1"):
            per_code = [_value(tables[code], stat) for code in report.codes]  # type: ignore[arg-type]
            for s, expected in zip(pair.codes, per_code, strict=True):
                got = getattr(s, stat).value
                assert (got is None) == (expected is None), (pair.pair, s.code, stat)
                if expected is not None:
                    assert got == pytest.approx(expected, abs=1e-12)
            micro = _value(pooled, stat)  # type: ignore[arg-type]
            assert getattr(pair.micro, stat).value == pytest.approx(micro, abs=1e-12)
            defined = [v for v in per_code if v is not None]
            macro = sum(defined) / len(defined) if defined else None
            assert getattr(pair.macro, stat).value == pytest.approx(macro, abs=1e-12)
    # Code C is never used: kappa and alpha undefined, percent and AC1 1.0 (documented).
    c_stats = report.pairs[0].codes[2]
    assert (c_stats.kappa.value, c_stats.alpha.value, c_stats.percent.value, c_stats.ac1.value) == (
        None, None, 1.0, 1.0)
    # All coders: Fleiss' kappa, alpha, AC1 over units with at least two coders.
    assert report.group is not None
    for code, g in zip(report.codes, report.group.codes, strict=True):
        table = [tuple(vote(c, tid, k, code) for c in coders) for tid, k in units]
        assert g.fleiss_kappa.value == pytest.approx(fleiss_kappa(table), abs=1e-12)
        assert g.alpha.value == pytest.approx(krippendorff_alpha(table), abs=1e-12)
        assert g.ac1.value == pytest.approx(gwet_ac1(table, categories=[False, True]), abs=1e-12)
        assert g.percent.value == pytest.approx(percent_agreement(table), abs=1e-12)
    # alice-bob units exclude tr3 and tr5, which bob did not code; all-coders units exclude tr5.
    ab = report.pairs[0]
    assert ab.n_units == len([u for u in units if u[0] not in ("tr3", "tr5")])
    assert ab.n_transcripts == 5
    assert report.group.n_units == len([u for u in units if u[0] != "tr5"])


def test_all_coders_chance_terms_count_single_rated_units_as_irrcac() -> None:
    # Gwet's irrCAC dataset cac.raw4raters (tests/test_agreement_metrics.py: 12 units x 4 raters,
    # unit 12 rated once), one transcript per unit so that a rater's missing value is a transcript
    # it did not code. Per category v, code "k<v>" is present where a rater gave v. The all-coders
    # AC1 and Fleiss' kappa take chance agreement over every rated unit, as irrCAC does: equal to the
    # metrics' defaults, not to chance_from="pairable" (unit 12 is rated but not pairable).
    from test_agreement_metrics import KRIPPENDORFF_2011

    coders = ["r1", "r2", "r3", "r4"]
    transcripts = [make_transcript(f"u{u:02}", [("I", "Question?"), ("P", f"Answer {u}.")]) for u in range(12)]
    codings = [turn_coding(transcripts[u], coders[c], f"k{v}", 1)
               for u, unit in enumerate(KRIPPENDORFF_2011) for c, v in enumerate(unit) if v is not None]
    codes = [f"k{v}" for v in range(1, 6)]
    report = reconcile(transcripts, codings, codes, unit="turn", n_boot=0)
    assert report.group is not None
    assert report.group.n_units == 11  # observed agreement: pairable units only
    differs = 0
    for g in report.group.codes:
        v = int(g.code[1:])
        table = [tuple(None if x is None else x == v for x in unit) for unit in KRIPPENDORFF_2011]
        assert g.ac1.value == pytest.approx(gwet_ac1(table, categories=[False, True]), abs=1e-12)
        assert g.fleiss_kappa.value == pytest.approx(fleiss_kappa(table), abs=1e-12)
        pairable_ac1 = gwet_ac1(table, categories=[False, True], chance_from="pairable")
        differs += pairable_ac1 != pytest.approx(g.ac1.value, abs=1e-9)
    assert differs > 0  # the single rating of unit 12 moves at least one code's chance term


# --- units


def test_sentence_spans_keep_offsets() -> None:
    text = '  I liked it. The staff were "kind!" Was it cheap?\n\nNo  '
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == ["I liked it.", 'The staff were "kind!"', "Was it cheap?", "No"]
    assert sentence_spans("   ") == []


def test_sentence_units_are_the_sentences_the_coder_numbers() -> None:
    # One rule: a curly closing quote or a lower-case start does not end a sentence, for the coder
    # (extraction numbers sentences with sentence_spans) and for --unit sentence alike.
    text = "It was \u201cfine.\u201d Then the council cut it. and then? Nothing."
    t = make_transcript("s2", [("I", "Tell me."), ("P", text)])
    turn = t.turns[1]
    units = build_units(t, "sentence")
    assert [(u.start, u.end) for u in units] == sentence_spans(turn.text, turn.start)
    assert [u.text for u in units] == ["It was \u201cfine.\u201d Then the council cut it. and then?", "Nothing."]


def test_sentence_units_and_marking() -> None:
    t = make_transcript("s1", [("I", "Tell me."), ("P", "I liked it. The staff were kind! Was it cheap? No.")])
    units = build_units(t, "sentence")
    assert [u.text for u in units] == ["I liked it.", "The staff were kind!", "Was it cheap?", "No."]
    assert all(t.text[u.start:u.end] == u.text for u in units)
    assert [u.unit_id for u in units] == ["turn-1.s0", "turn-1.s1", "turn-1.s2", "turn-1.s3"]
    codings = [
        span_coding(t, "alice", "staff", "staff were kind"),
        span_coding(t, "bob", "staff", "kind! Was it"),  # spans two sentences: marks both
        span_coding(t, "alice", "cost", "cheap"),
        span_coding(t, "bob", "cost", "cheap"),
    ]
    report = reconcile([t], codings, ["staff", "cost"], unit="sentence", n_boot=0)
    pair = report.pairs[0]
    assert pair.n_units == 4
    staff, cost = pair.codes
    assert (staff.marked_a, staff.marked_b) == (1, 2)
    assert staff.percent.value == 0.75
    assert cost.percent.value == 1.0 and cost.kappa.value == 1.0
    assert [(d.unit_id, d.code_id, d.votes) for d in report.disagreements] == [
        ("turn-1.s2", "staff", {"alice": False, "bob": True})]


def test_transcript_units_presence_anywhere() -> None:
    t1 = make_transcript("a", [("I", "Q?"), ("P", "About money and kids.")])
    t2 = make_transcript("b", [("I", "Q?"), ("P", "About kids.")])
    codings = [
        span_coding(t1, "alice", "money", "money"),
        Coding(transcript_id="a", coder="bob", code_id="money"),  # no location: fine for presence
        span_coding(t1, "alice", "kids", "kids"),
        span_coding(t2, "alice", "kids", "kids"),
        span_coding(t2, "bob", "kids", "kids"),
    ]
    report = reconcile([t1, t2], codings, ["money", "kids"], unit="transcript", n_boot=0)
    assert report.n_units == 2 and report.issues == []
    money, kids = report.pairs[0].codes
    assert money.percent.value == 1.0 and money.kappa.value == 1.0
    assert kids.percent.value == 0.5  # bob did not mark kids in "a"
    assert report.disagreements[0].unit_id == "transcript"


def test_min_overlap() -> None:
    # Two consecutive participant turns; a span reaching 3 characters into the first one.
    t = make_transcript("m", [("I", "Q?"), ("P", "First answer here."), ("Q", "Second answer from Q.")])
    first, second = t.turns[1], t.turns[2]
    span = Coding(transcript_id="m", coder="alice", code_id="x", start=first.end - 3, end=second.start + 10)
    short = Coding(transcript_id="m", coder="bob", code_id="x", start=first.start, end=first.start + 2)
    both = reconcile([t], [span, short], ["x"], n_boot=0, min_overlap=1)
    assert (both.pairs[0].codes[0].marked_a, both.pairs[0].codes[0].marked_b) == (2, 1)
    strict = reconcile([t], [span, short], ["x"], n_boot=0, min_overlap=5)
    # alice's span now only marks the second turn; bob's 2-character span still marks its turn.
    assert (strict.pairs[0].codes[0].marked_a, strict.pairs[0].codes[0].marked_b) == (1, 1)
    assert strict.pairs[0].codes[0].percent.value == 0.0
    with pytest.raises(ConfigError):
        reconcile([t], [span, short], ["x"], n_boot=0, min_overlap=0)


def test_quote_location_and_issues() -> None:
    t = make_transcript("q", [("I", "Q?"), ("P", "The food was good. the FOOD was  good. He said “yes”."),
                              ("I", "Ok."), ("P", "Staff and food.")])
    assert find_quote(t.text, "Staff and") == [(t.text.index("Staff and"), t.text.index("Staff and") + 9)]
    # The normalised search ignores case, whitespace runs and curly-vs-straight quotes...
    assert find_quote(t.text, 'he said "YES"') == [(t.text.index("He said"), t.text.index("”.") + 1)]
    # ... and is only tried when there is no exact match: one exact match wins.
    assert locate_quote(t.text, "food was good") == ((t.text.index("food"), t.text.index("food") + 13), None)
    span, problem = locate_quote(t.text, "the food was good")
    assert span is None and problem is not None and "ambiguous, found at 2 places" in problem
    span, problem = locate_quote(t.text, "pizza")
    assert span is None and problem is not None and "not found" in problem
    codings = [
        Coding(transcript_id="q", coder="alice", code_id="food", quote="food"),  # ambiguous in text
        Coding(transcript_id="q", coder="alice", code_id="food", quote="food", turn_index=3),  # unique in turn
        Coding(transcript_id="q", coder="bob", code_id="food", quote="pizza"),  # missing
        Coding(transcript_id="q", coder="bob", code_id="food", quote='he said "yes"'),  # normalised
        Coding(transcript_id="q", coder="bob", code_id="food", turn_index=2),  # interviewer turn
        Coding(transcript_id="q", coder="bob", code_id="other", turn_index=1),  # not in codebook
        Coding(transcript_id="nope", coder="bob", code_id="food", turn_index=1),
    ]
    report = reconcile([t], codings, ["food"], n_boot=0)
    issues = "\n".join(report.issues)
    assert "quote is ambiguous" in issues and "quote not found: 'pizza'" in issues
    assert "turn 2 is not a coded turn" in issues
    assert "code 'other', which is not in the codebook" in issues
    assert "nope: 1 coding(s)" in issues
    food = report.pairs[0].codes[0]
    assert (food.marked_a, food.marked_b) == (1, 1)  # alice: turn 3 only; bob: turn 1 only
    assert food.percent.value == 0.0


# --- bootstrap


def _study() -> tuple[list[Transcript], list[Coding]]:
    transcripts, codings, _ = _random_study(11)
    return transcripts, codings


def test_bootstrap_reproducible_and_seeded() -> None:
    transcripts, codings = _study()
    a = reconcile(transcripts, codings, ["A", "B", "C"], n_boot=200, seed=5)
    b = reconcile(transcripts, codings, ["A", "B", "C"], n_boot=200, seed=5)
    c = reconcile(transcripts, codings, ["A", "B", "C"], n_boot=200, seed=6)
    assert a.model_dump_json() == b.model_dump_json()
    assert a.pairs[0].micro.kappa != c.pairs[0].micro.kappa
    assert a.pairs[0].micro.kappa.value == c.pairs[0].micro.kappa.value
    for pair in a.pairs:
        for s in (pair.micro, pair.macro, *pair.codes):
            for stat in ("percent", "kappa", "alpha", "ac1", "f1"):
                e = getattr(s, stat)
                if e.value is not None and e.ci_low is not None:
                    assert e.ci_low <= e.ci_high
    none = reconcile(transcripts, codings, ["A", "B", "C"], n_boot=0)
    assert none.pairs[0].micro.kappa.ci_low is None and none.pairs[0].micro.kappa.value is not None


def test_bootstrap_equals_naive_resampling_of_transcripts() -> None:
    # The vectorised bootstrap (re-weighting per-transcript sums) must equal literally resampling the
    # transcripts and recomputing Cohen's kappa on the pooled table with the same draws.
    transcripts, codings, truth = _random_study(11)
    n_boot, seed = 60, 9
    report = reconcile(transcripts, codings, ["A", "B", "C"], coders=["alice", "quallm-m"], n_boot=n_boot,
                       seed=seed)
    pair = report.pairs[0]
    per_t = [
        [(truth["alice"].get((t.id, tu.index, code), False), truth["quallm-m"].get((t.id, tu.index, code), False))
         for tu in t.coded_turns() for code in "ABC"]
        for t in transcripts
        if any(key[0] == t.id for key in truth["alice"])  # alice did not code tr5: not resampled
    ]
    assert len(per_t) == pair.n_transcripts == 6
    rng = np.random.default_rng([seed, zlib.crc32(pair.pair.encode())])
    draws = rng.integers(0, len(per_t), size=(n_boot, len(per_t)))
    naive = [v for d in draws if (v := cohen_kappa([row for i in d for row in per_t[i]])) is not None]
    lo, hi = np.percentile(naive, [2.5, 97.5])
    assert pair.micro.kappa.ci_low == pytest.approx(lo, abs=1e-12)
    assert pair.micro.kappa.ci_high == pytest.approx(hi, abs=1e-12)


# --- labelling, reference, coverage, disagreements


def test_pair_kinds_and_reference() -> None:
    t = make_transcript("k", [("I", "Q?"), ("P", "Yes."), ("I", "Q?"), ("P", "No.")])
    codings = [turn_coding(t, c, "x", 1) for c in ("quallm-gpt", "robot", "zoe", "adam")]
    report = reconcile([t], codings, ["x"], machine_coders=["robot"], n_boot=0)
    assert report.coders == ["adam", "zoe", "quallm-gpt", "robot"]
    assert report.machine_coders == ["quallm-gpt", "robot"]
    kinds = {(p.coder_a, p.coder_b): p.kind for p in report.pairs}
    assert kinds == {
        ("adam", "zoe"): "human-human",
        ("adam", "quallm-gpt"): "machine-human",
        ("adam", "robot"): "machine-human",
        ("zoe", "quallm-gpt"): "machine-human",
        ("zoe", "robot"): "machine-human",
        ("quallm-gpt", "robot"): "machine-machine",
    }
    ref = reconcile([t], codings, ["x"], reference="zoe", n_boot=0, coders=["quallm-gpt", "zoe", "adam"])
    assert [(p.coder_a, p.coder_b) for p in ref.pairs] == [("zoe", "quallm-gpt"), ("adam", "quallm-gpt"),
                                                           ("zoe", "adam")]
    with pytest.raises(ConfigError):
        reconcile([t], codings, ["x"], reference="nobody", n_boot=0)
    with pytest.raises(ConfigError):
        reconcile([t], codings[:1], ["x"], n_boot=0)  # one coder
    with pytest.raises(ConfigError):
        reconcile([t], codings, ["x"], unit="paragraph", n_boot=0)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        reconcile([t, t], codings, ["x"], n_boot=0)


def test_explicit_coverage() -> None:
    t1 = make_transcript("c1", [("I", "Q?"), ("P", "One.")])
    t2 = make_transcript("c2", [("I", "Q?"), ("P", "Two.")])
    codings = [turn_coding(t1, "alice", "x", 1), turn_coding(t1, "bob", "x", 1)]
    inferred = reconcile([t1, t2], codings, ["x"], n_boot=0)
    assert inferred.pairs[0].n_units == 1  # neither coded c2
    told = reconcile([t1, t2], codings, ["x"], n_boot=0, coverage={"alice": ["c1", "c2"], "bob": ["c1", "c2"]})
    assert told.pairs[0].n_units == 2  # both looked at c2 and found nothing
    assert told.pairs[0].codes[0].kappa.value == 1.0


def test_disagreements_sorted_with_machine_details() -> None:
    t = make_transcript("d", [("I", "Q?"), ("P", "Alpha."), ("I", "Q?"), ("P", "Beta."), ("I", "Q?"),
                              ("P", "Gamma.")])
    codings = [
        turn_coding(t, "quallm-m", "b", 1, confidence=0.2, rationale="weak"),
        turn_coding(t, "quallm-m", "b", 3, confidence=0.9, rationale="strong"),
        turn_coding(t, "quallm-m", "a", 5, confidence=0.5),
        turn_coding(t, "human", "a", 1),
        turn_coding(t, "human", "b", 5),
    ]
    rows = disagreements([t], codings, ["a", "b"])
    assert [(r.code_id, r.unit_id, r.machine_confidence) for r in rows] == [
        ("a", "turn-5", 0.5), ("a", "turn-1", None),
        ("b", "turn-3", 0.9), ("b", "turn-1", 0.2), ("b", "turn-5", None)]
    assert rows[2].machine_rationale == "strong" and rows[2].machine_quote == "Beta."
    assert rows[2].votes == {"human": False, "quallm-m": True}
    assert rows == reconcile([t], codings, ["a", "b"], n_boot=0).disagreements


def test_writers_undefined_values(tmp_path: Path) -> None:
    t = make_transcript("w", [("I", "Q?"), ("P", "Same."), ("I", "Q?"), ("P", "Again.")])
    codings = [turn_coding(t, c, "x", 1) for c in ("alice", "bob", "quallm-m")]
    codings += [turn_coding(t, "quallm-m", "never", 3, confidence=0.7)]
    report = reconcile([t], codings, ["x", "never", "unused"], n_boot=50)
    paths = write_agreement(report, tmp_path / "out")
    assert [p.name for p in paths] == ["agreement.json", "agreement.csv", "disagreements.csv",
                                       "disagreements.json"]
    body = json.loads(paths[0].read_text(encoding="utf-8"))  # strict JSON: no NaN
    assert "NaN" not in paths[0].read_text(encoding="utf-8")
    assert body["n_disagreements"] == 1
    assert any("absent" in n for n in body["notes"])
    unused = next(c for c in body["pairs"][0]["codes"] if c["code"] == "unused")
    assert unused["kappa"]["value"] is None and unused["percent"]["value"] == 1.0
    rows = list(csv.DictReader(paths[1].open(encoding="utf-8")))
    pairs = {r["pair"] for r in rows}
    assert pairs == {"alice vs bob", "alice vs quallm-m", "bob vs quallm-m", "all: alice, bob, quallm-m"}
    unused_row = next(r for r in rows if r["pair"] == "alice vs bob" and r["code"] == "unused")
    assert unused_row["kappa"] == "" and unused_row["percent"] == "1.0" and unused_row["kind"] == "human-human"
    assert {r["code"] for r in rows} >= {POOLED_MICRO, POOLED_MACRO}
    assert next(r for r in rows if r["pair"] == "alice vs quallm-m")["kind"] == "machine-human"
    dis = list(csv.DictReader(paths[2].open(encoding="utf-8")))
    assert [(r["unit_id"], r["code_id"], r["alice"], r["bob"], r["quallm-m"], r["machine_confidence"],
             r["machine_quote"]) for r in dis] == [("turn-3", "never", "no", "no", "yes", "0.7", "Again.")]
    assert json.loads(paths[3].read_text(encoding="utf-8"))[0]["votes"] == {
        "alice": False, "bob": False, "quallm-m": True}
    text = format_report(report)
    assert "undefined" in text and "nan" not in text.lower()


# --- human CSV import


def _write(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_read_human_csv(tmp_path: Path) -> None:
    t = make_transcript("h1", [("I", "Why?"), ("P", "Because of the money. The money matters."), ("I", "And?"),
                               ("P", "Kids and money.")])
    money_at = t.text.index("money")
    rows = [
        ["transcript_id", "coder", "code_id", "start", "end", "turn_index", "quote", "rationale"],
        ["h1", "ann", "money", str(money_at), str(money_at + 5), "", "", "first"],  # row 2: span
        ["h1", "ann", "kids", "", "", "3", "", ""],  # row 3: turn index
        ["h1", "ann", "kids", "", "", "", "kids AND", ""],  # row 4: quote, normalised match
        ["h1", "ann", "money", "", "", "3", "money", ""],  # row 5: quote within a turn
        ["h1", "ann", "money", "", "", "", "money", ""],  # row 6: ambiguous
        ["h1", "ann", "money", "", "", "", "dollars", ""],  # row 7: missing quote
        ["h1", "ann", "weather", "", "", "1", "", ""],  # row 8: unknown code
        ["h9", "ann", "money", "", "", "1", "", ""],  # row 9: unknown transcript
        ["h1", "ann", "money", "", "", "", "", ""],  # row 10: no location
        ["h1", "ann", "money", "x", "5", "", "", ""],  # row 11: bad number
        ["h1", "ann", "money", "", "", "7", "", ""],  # row 12: turn out of range
    ]
    path = _write(tmp_path / "human.csv", rows, bom=True)
    codings, problems = read_human_csv(path, [t], ["money", "kids"])
    assert len(codings) == 4
    assert all(c.alignment == "human" and c.coder == "ann" for c in codings)
    span, turn_only, quoted, in_turn = codings
    assert (span.start, span.end, span.turn_index, span.quote, span.rationale) == (
        money_at, money_at + 5, 1, "money", "first")
    assert (turn_only.start, turn_only.turn_index, turn_only.speaker) == (None, 3, "P")
    assert quoted.quote == "Kids and" and quoted.turn_index == 3
    assert in_turn.start == t.text.rindex("money") and in_turn.turn_index == 3
    assert [p.split(": ", 2)[1] for p in problems] == [f"row {n}" for n in range(6, 13)]
    assert all(p.startswith(str(path)) for p in problems)
    text = "\n".join(problems)
    assert "row 6: quote is ambiguous" in text
    assert "row 7: quote not found: 'dollars'" in text
    assert "row 8: code 'weather' is not in the codebook" in text
    assert "row 9: unknown transcript id 'h9'" in text
    assert "row 10: no location" in text
    assert "row 11: start 'x' is not a number" in text
    assert "row 12: turn_index 7 is out of range" in text
    # The imported codings reconcile against a machine coder.
    machine = [turn_coding(t, "quallm-m", "money", 1), turn_coding(t, "quallm-m", "kids", 3)]
    report = reconcile([t], codings + machine, ["money", "kids"], n_boot=0)
    assert report.pairs[0].kind == "machine-human" and report.pairs[0].coder_a == "ann"
    money, kids = report.pairs[0].codes
    assert kids.kappa.value == 1.0  # both marked turn 3 only
    assert money.percent.value == 0.5  # ann marked turns 1 and 3, the machine turn 1


def test_read_human_csv_file_errors(tmp_path: Path) -> None:
    t = make_transcript("h1", [("I", "Q?"), ("P", "A.")])
    with pytest.raises(InputError, match="missing column"):
        read_human_csv(_write(tmp_path / "a.csv", [["transcript_id", "code_id", "quote"]]), [t])
    with pytest.raises(InputError, match="no location column"):
        read_human_csv(_write(tmp_path / "b.csv", [["transcript_id", "coder", "code_id"]]), [t])
    with pytest.raises(InputError, match="cannot read"):
        read_human_csv(tmp_path / "missing.csv", [t])
    # Without a codebook any code is accepted; a mapping of transcripts works too.
    codings, problems = read_human_csv(
        _write(tmp_path / "c.csv", [["transcript_id", "coder", "code_id", "turn_index"], ["h1", "x", "any", "1"]]),
        {"h1": t},
    )
    assert problems == [] and codings[0].code_id == "any"


def test_no_nan_anywhere_in_degenerate_report() -> None:
    t = make_transcript("z", [("I", "Q?"), ("P", "A.")])
    report = reconcile([t], [turn_coding(t, "a", "x", 1), turn_coding(t, "b", "x", 1)], ["x", "y"], n_boot=20)
    dumped = json.loads(report.model_dump_json())

    def walk(v: object) -> None:
        if isinstance(v, float):
            assert math.isfinite(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(dumped)
    x, y = report.pairs[0].codes
    assert x.kappa.value is None and x.percent.value == 1.0  # one unit, both marked: kappa undefined
    assert y.kappa.value is None and y.ac1.value == 1.0


def test_empty_codebook_and_transcripts_without_coded_turns() -> None:
    t = make_transcript("e", [("I", "Q?"), ("P", "A.")])
    silent = make_transcript("f", [("I", "Only the interviewer.")])
    codings = [turn_coding(t, "a", "x", 1), turn_coding(t, "b", "x", 1)]
    report = reconcile([t, silent], codings, [], n_boot=10)
    assert report.codes == [] and report.pairs[0].micro.kappa.value is None
    assert "2 coding(s) use code 'x'" in report.issues[0]
    report = reconcile([t, silent], codings, ["x"], n_boot=10, coverage={"a": ["e", "f"], "b": ["e", "f"]})
    assert report.n_units == 1 and report.pairs[0].codes[0].percent.value == 1.0
