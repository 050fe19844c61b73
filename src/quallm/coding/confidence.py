"""How sure the model was of each code it named: read from its own token probabilities, never asked.

A per-turn answer is ``{"codes": [{"code_id": "<id>", "sentence": n}, ...]}``. With a request's
``logprobs`` on, the backend returns every generated token with its top alternatives (before any
grammar). For each code the answer names, two decisions carry its probability:

* **that there is another code at all**: at the character that opens the item (``{`` after ``[``, or
  ``,`` after the previous item) the alternatives that continue the list against those that close it
  (``]``);
* **which code**: at every token of the code id, the share of the alternatives still spelling some
  codebook id (what a grammar allows) that still spell this one; the product over the tokens is the
  chain rule's probability of the whole id.

The coding's probability is the product of the two (each 1 where the alternatives kept say nothing).
Alternatives outside the backend's top list are treated as impossible, a small loss: the local backend
keeps 10 per token, OpenAI sends up to 20.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from quallm.models.base import TokenLogprob

_CODE_ID = re.compile(r'"code_id"\s*:\s*"')


def _alternatives(tok: TokenLogprob) -> dict[str, float]:
    alts = {k: math.exp(v) for k, v in tok.top.items()}
    alts.setdefault(tok.token, math.exp(tok.logprob))
    return alts


def _token_at(spans: list[tuple[int, int]], pos: int) -> int | None:
    for i, (s, e) in enumerate(spans):
        if s <= pos < e:
            return i
    return None


def _existence(content: str, tokens: Sequence[TokenLogprob], spans: list[tuple[int, int]], pos: int) -> float:
    """p(continue) / (p(continue) + p(close)) at the list's decisive character ``content[pos]``."""
    i = _token_at(spans, pos)
    if i is None:
        return 1.0
    lead = content[spans[i][0] : pos]
    want = content[pos]
    go = stop = 0.0
    for alt, p in _alternatives(tokens[i]).items():
        if not alt.startswith(lead):
            continue
        rest = alt[len(lead) :].lstrip()
        if rest.startswith(want):
            go += p
        elif rest.startswith("]"):
            stop += p
    return go / (go + stop) if go + stop > 0 else 1.0


def _identity(
    content: str, tokens: Sequence[TokenLogprob], spans: list[tuple[int, int]], a: int, b: int, code: str,
    valid: Sequence[str],
) -> float:
    """The probability of ``code`` among the codebook's ids, from the tokens spelling ``content[a:b]``."""
    others = [v for v in valid if v != code]

    def fits(cand: str, cid: str) -> bool:
        return cid.startswith(cand) or cand.startswith(cid + '"')

    p_total = 1.0
    for i, (s, e) in enumerate(spans):
        if e <= a or s >= b:
            continue
        lead = content[s:a] if s < a else ""
        prefix = content[a:max(s, a)]
        mine = allowed = 0.0
        for alt, p in _alternatives(tokens[i]).items():
            if not alt.startswith(lead) or len(alt) == len(lead):
                continue
            cand = prefix + alt[len(lead) :]
            if fits(cand, code):
                mine += p
                allowed += p
            elif any(fits(cand, o) for o in others):
                allowed += p
        # Chain rule: the share of what the grammar allows here that still spells this code.
        if allowed > 0:
            p_total *= mine / allowed
    return p_total


def code_probabilities(content: str, tokens: Sequence[TokenLogprob] | None, valid: Sequence[str]) -> list[float | None]:
    """The probability of each ``code_id`` in ``content``, in order; None for each when it cannot be read.

    None when there are no tokens or they do not spell ``content`` exactly (then nothing is guessed).
    """
    found = list(_CODE_ID.finditer(content))
    if not tokens or "".join(t.token for t in tokens) != content:
        return [None] * len(found)
    spans: list[tuple[int, int]] = []
    pos = 0
    for t in tokens:
        spans.append((pos, pos + len(t.token)))
        pos += len(t.token)
    out: list[float | None] = []
    prev_end = content.find("[")
    for m in found:
        a = m.end()
        b = content.find('"', a)
        if b < 0 or prev_end < 0:
            out.append(None)
            continue
        code = content[a:b]
        # The decisive character: the first one after "[" or after the previous item's "}".
        q = prev_end + 1
        while q < len(content) and content[q].isspace():
            q += 1
        p_exist = _existence(content, tokens, spans, q) if q < len(content) else 1.0
        p_code = _identity(content, tokens, spans, a, b + 1, code, valid)
        out.append(round(p_exist * p_code, 4))
        close = content.find("}", b)
        prev_end = close if close >= 0 else b
    return out
