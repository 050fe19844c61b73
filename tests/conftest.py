"""Shared test set-up: no remote model requests, paths to the demo fixtures, a keyword coder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from quallm.models import openai_compat

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"

# Tests never reach a remote model: only the local test server on 127.0.0.1 is allowed.
openai_compat.ALLOW_MODEL_REQUESTS = False

KEYWORDS = {"C_money": ["budget", "funding", "money"], "E_help": ["early help", "family support"]}


@pytest.fixture
def demo_dir() -> Path:
    return DEMO


@pytest.fixture
def tiny_codebook_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "codebook.yaml"
    p.write_text(
        """
name: Tiny
codes:
  - id: C_money
    kind: challenge
    label: Funding pressure
    definition: Budgets and money are short.
  - id: E_help
    kind: enabler
    label: Early help
    definition: Early help and family support keep children at home.
""",
        encoding="utf-8",
    )
    return p


def keyword_answer(messages: list[dict[str, Any]] | list[Any]) -> str:
    """A deterministic stand-in coder: codes by keyword, quoting the sentence that holds it.

    Answers the per-turn form or the per-chunk form depending on what the prompt asks for.
    """
    contents = [m["content"] if isinstance(m, dict) else m.content for m in messages]
    system, user = contents[0], contents[1]  # the first user message, also on a re-ask
    if "one key per code id" in system:  # the summary: a sentence per code, keyed by its id
        ids = re.findall(r"^(\S+): ", user.split("Coded evidence:", 1)[-1], re.M)
        return json.dumps({cid: f"They talked about {cid}." for cid in ids})
    if '"codings"' in system:
        out = []
        for n, role, text in re.findall(r"^\[S(\d+)\] \([^,]+, (CODE|context)\) (.*)$", user, re.M):
            if role != "CODE":
                continue
            for cid, words in KEYWORDS.items():
                for w in words:
                    m = re.search(rf"[^.?!]*\b{w}\b[^.?!]*", text, re.I)
                    if m:
                        out.append(
                            {
                                "segment": int(n),
                                "code_id": cid,
                                "quote": m.group(0).strip(),
                                "rationale": f"mentions {w}",
                                "confidence": 0.9,
                            }
                        )
                        break
        return json.dumps({"codings": out})
    sentences = re.findall(r"^\[(\d+)\] (.*)$", user.split("sentence by sentence:", 1)[-1], re.M)
    codes = []
    for cid, words in KEYWORDS.items():
        hit = next((int(n) for n, text in sentences for w in words if re.search(rf"\b{w}\b", text, re.I)), None)
        if hit is not None:
            codes.append({"code_id": cid, "sentence": hit})
    return json.dumps({"codes": codes})


SAMPLE = """Interviewer: Thanks for joining. What is your role?

Respondent: I'm the director of children's services. I've been here three years.

Interviewer: What gets in the way?

Respondent: Honestly the budget is the big thing. We lost a lot of funding over ten years.

And the courts are slow, which doesn't help anyone.

Interviewer: And what helps?

Respondent: Our early help offer has been transformative. Family support workers go in quickly.
"""


@pytest.fixture
def sample_txt(tmp_path: Path) -> Path:
    p = tmp_path / "la_sample.txt"
    p.write_text(SAMPLE, encoding="utf-8")
    return p


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Hugging Face downloads, no remote endpoint from the environment, and a fresh response cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QUALLM_CACHE", str(tmp_path / "responses.sqlite3"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
