"""Coding probabilities read from token log probabilities (quallm.coding.confidence).

The token streams here are written for the test (they are not model output): they pin the arithmetic.
"""

from __future__ import annotations

import math

from quallm.coding.confidence import code_probabilities
from quallm.models.base import TokenLogprob


def _tok(token: str, p: float, **alts: float) -> TokenLogprob:
    top = {token: math.log(p), **{k.replace("_sp_", " "): math.log(v) for k, v in alts.items()}}
    return TokenLogprob(token=token, logprob=math.log(p), top=top)


IDS = ["C01_demand", "C02_funding", "E01_help"]


def test_chain_rule_over_the_code_tokens_and_the_continue_decision() -> None:
    tokens = [
        _tok('{"', 0.9),
        _tok("codes", 0.9),
        _tok('":', 0.9),
        _tok(" [", 0.5),
        _tok('{"', 0.6, **{"]": 0.2}),  # the list could have closed here: 0.6 / 0.8 that a code follows
        _tok("code", 1.0),
        _tok("_id", 1.0),
        _tok('":', 1.0),
        _tok(' "', 1.0),
        _tok("C", 0.8, E=0.2, Q=0.5),  # Q spells no code id: not counted; C 0.8 of 1.0
        _tok("0", 1.0),
        _tok("2", 0.75, **{"1": 0.25}),  # C02 against C01
        _tok("_funding", 1.0),
        _tok('"}', 1.0),
        _tok("]}", 1.0),
    ]
    content = "".join(t.token for t in tokens)
    assert content == '{"codes": [{"code_id": "C02_funding"}]}'
    [p] = code_probabilities(content, tokens, IDS)
    assert p is not None and math.isclose(p, round(0.75 * 0.8 * 0.75, 4))


def test_unreadable_tokens_give_none_never_a_guess() -> None:
    content = '{"codes": [{"code_id": "E01_help"}]}'
    assert code_probabilities(content, None, IDS) == [None]
    assert code_probabilities(content, [_tok("something else", 1.0)], IDS) == [None]
    assert code_probabilities('{"codes": []}', None, IDS) == []
