"""The API key never lands on disk, even when a server echoes it back in an error body."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from quallm.cli import app
from quallm.core.errors import TransportError, describe
from quallm.core.redact import MIN_FRAGMENT, REDACTED, redact, redact_value, register_secret
from quallm.core.results import Failure
from quallm.models.fake_server import Faults, OpenAITestServer

runner = CliRunner()

# No "sk-" prefix and no "Bearer" before it where the server repeats it bare: only the registry of
# configured keys can catch it.
KEY = "QzT7vLm2Xc9Rb4Nw8Ks3Hd6PqYe"


def _fragments(secret: str) -> set[str]:
    return {secret[i : i + MIN_FRAGMENT] for i in range(len(secret) - MIN_FRAGMENT + 1)}


def test_redact_removes_registered_key_its_fragments_and_token_lookalikes() -> None:
    secret = "Wn4Jc8Vq2Lm6Xt0Rb5Hy9Kd3"
    register_secret(secret)
    assert redact(f"key={secret}!") == f"key={REDACTED}!"
    # A fragment (a server that shows part of the key, or a key cut off in a log) is redacted too.
    out = redact(f"Incorrect API key provided: {secret[3:15]}... see docs")
    assert secret[3:15] not in out and REDACTED in out and out.endswith("... see docs")
    assert not any(f in redact(f"x{secret[:-2]}y{secret[5:]}") for f in _fragments(secret))
    # Lookalikes of keys that were never configured.
    # Key-shaped strings are built at run time so that no file of the repository holds one.
    lookalike = "-".join(["sk", "proj", "abcdefghijklmnop1234"])
    assert lookalike not in redact(f"the key {lookalike} is bad")
    token = "abcDEF" + "123456ghiJKL"
    assert token not in redact(f"Authorization: {'Bear' + 'er'} {token}")
    assert "0123456789abcdefXY" not in redact('{"api-key": "0123456789abcdefXY"}')
    # Ordinary text is left alone.
    for text in ("Bearer of bad news, she said.", "We asked the task-force lead.", "Short ask-back."):
        assert redact(text) == text
    assert redact_value({"Authorization": "x", "errors": [secret], "n": 3}) == {"errors": [REDACTED], "n": 3}


def test_described_errors_and_failures_are_redacted() -> None:
    secret = "Pf3Gh8Jk2Lz7Xc4Vb9Nm1Qw"
    register_secret(secret)
    exc = TransportError(f"127.0.0.1:1/v1 answered HTTP 401: Incorrect API key provided: {secret}")
    d = describe(exc)
    assert secret not in d["message"] and "HTTP 401" in d["message"]
    f = Failure.from_error("turn 3", exc)
    assert secret not in f.message and REDACTED in f.message


def test_echoed_key_in_401_body_never_lands_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_codebook_yaml: Path
) -> None:
    monkeypatch.setenv("QUALLM_HOSTILE_KEY", KEY)
    t = tmp_path / "la_x.txt"
    t.write_text("Interviewer: How is the budget?\n\nRespondent: The budget is the big worry this year.\n",
                 encoding="utf-8")
    out, rec, cache = tmp_path / "run", tmp_path / "rec", tmp_path / "cache.sqlite3"
    with OpenAITestServer(faults=Faults(echo_auth=1000)) as srv:
        r = runner.invoke(app, [
            "extract", str(t), "--codebook", str(tiny_codebook_yaml), "--out", str(out), "--model", "test-model",
            "--base-url", srv.base_url, "--api-key-env", "QUALLM_HOSTILE_KEY", "--record", str(rec),
            "--cache", str(cache),
        ])
        assert srv.state.faults_served["echo_auth"] >= 1
        assert srv.state.headers[0]["authorization"] == f"Bearer {KEY}"  # the key was sent ...
    result = (out / "results" / "la_x.json").read_text(encoding="utf-8")
    assert "401" in result and REDACTED in result  # ... the failure is recorded, without it
    assert KEY not in r.output
    written = [f for f in (*out.rglob("*"), *rec.rglob("*"), *tmp_path.glob("cache.sqlite3*")) if f.is_file()]
    assert any(f.name == "log.jsonl" for f in written)
    for f in written:
        data = f.read_bytes().decode("utf-8", errors="ignore")
        leaked = [frag for frag in _fragments(KEY) if frag in data]
        assert not leaked, (f, leaked[:3])
