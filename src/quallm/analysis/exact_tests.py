"""Exact tests of a 2 x k table (does a code's prevalence differ between groups?) and Holm's adjustment.

Fisher's exact test for two groups, the Freeman-Halton extension for more (every table with the
observed margins enumerated), Monte Carlo above :data:`MAX_EXACT_TABLES`; pure numbers, no run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import gammaln
from scipy.stats import fisher_exact

from quallm.core.errors import ConfigError

MAX_EXACT_TABLES = 1_000_000  # above this many candidate tables, the 2 x k test is done by Monte Carlo
MONTE_CARLO_DRAWS = 100_000

TestName = Literal["fisher", "freeman-halton", "monte-carlo", "none"]


class ExactTest(BaseModel):
    """The result of one exact (or Monte Carlo) test of a 2 x k table."""

    model_config = ConfigDict(frozen=True)

    test: TestName
    p_value: float | None
    method: str
    n_tables: int | None = Field(default=None, description="tables enumerated, or random tables drawn (Monte Carlo)")


def _log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.asarray(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1), dtype=np.float64)


# Tables whose probability is within this relative distance of the observed one count as "as extreme"
# (floating-point ties), as in R's fisher.test.
_REL_TOL = 1e-7


def freeman_halton(
    present: Sequence[int],
    totals: Sequence[int],
    *,
    max_tables: int = MAX_EXACT_TABLES,
    draws: int = MONTE_CARLO_DRAWS,
    seed: int = 0,
) -> ExactTest:
    """Exact test of a 2 x k table (``present[j]`` of ``totals[j]`` transcripts in group j have the code).

    The Freeman-Halton extension of Fisher's exact test: with the margins fixed, the p-value is the
    total probability (multivariate hypergeometric) of the tables no more probable than the observed
    one. Every table is enumerated when there are at most ``max_tables`` of them; otherwise
    ``draws`` random tables with the same margins are drawn (seeded), and the method says so.
    """
    x = np.asarray(present, dtype=np.int64)
    n = np.asarray(totals, dtype=np.int64)
    if x.shape != n.shape or x.ndim != 1 or len(x) < 2 or (x < 0).any() or (x > n).any():
        raise ConfigError(f"not a valid 2 x k table: present={list(present)}, totals={list(totals)}")
    m, big_n = int(x.sum()), int(n.sum())
    log_denominator = float(_log_choose(np.array(big_n), np.array(m)))
    nf = n.astype(np.float64)

    def log_p(tables: np.ndarray) -> np.ndarray:
        return np.asarray(_log_choose(nf, tables.astype(np.float64)).sum(axis=-1) - log_denominator)

    observed = float(log_p(x[None, :])[0])
    threshold = observed + math.log1p(_REL_TOL)
    if count_tables(m, [int(v) for v in n]) <= max_tables:
        lp = _table_log_probs(m, [int(v) for v in n]) - log_denominator
        p = float(np.exp(lp[lp <= threshold]).sum())
        return ExactTest(
            test="freeman-halton",
            p_value=min(1.0, p),
            method=f"Freeman-Halton exact test (all {len(lp)} tables with these margins enumerated)",
            n_tables=len(lp),
        )
    rng = np.random.default_rng(seed)
    sims = rng.multivariate_hypergeometric(n, m, size=draws)
    hits = int((log_p(sims) <= threshold).sum())
    return ExactTest(
        test="monte-carlo",
        p_value=(hits + 1) / (draws + 1),
        method=f"Monte Carlo Freeman-Halton test ({draws} random tables with these margins, seed {seed}); "
        "too many tables to enumerate",
        n_tables=draws,
    )


def count_tables(m: int, sizes: Sequence[int]) -> int:
    """How many 2 x k tables have column totals ``sizes`` and first-row total ``m`` (exact, by counting)."""
    ways = [1] + [0] * m  # ways[s]: prefixes of the groups seen so far whose counts add up to s
    for size in sizes:
        ways = [sum(ways[s - x] for x in range(min(size, s) + 1)) for s in range(m + 1)]
    return ways[m]


def _table_log_probs(m: int, sizes: list[int]) -> np.ndarray:
    """``sum_j log C(sizes[j], t[j])`` for every table ``t`` with ``sum(t) == m``.

    Built group by group, keeping only prefixes that can still reach ``m``, so memory stays in
    proportion to the number of tables (the tables themselves are never stored, only their weights).
    """
    partial = np.zeros(1, dtype=np.int64)
    weight = np.zeros(1, dtype=np.float64)
    remaining = sum(sizes)
    for size in sizes:
        remaining -= size
        xs = np.arange(size + 1, dtype=np.int64)
        new_partial = (partial[:, None] + xs[None, :]).ravel()
        new_weight = (weight[:, None] + _log_choose(np.full(size + 1, float(size)), xs.astype(np.float64))).ravel()
        keep = (new_partial <= m) & (new_partial + remaining >= m)
        partial, weight = new_partial[keep], new_weight[keep]
    return weight


def two_by_k_test(present: Sequence[int], totals: Sequence[int], *, seed: int = 0) -> ExactTest:
    """Fisher's exact test (scipy) for two groups, Freeman-Halton for more; no test when nothing can differ."""
    m, big_n = sum(present), sum(totals)
    if len(totals) < 2:
        return ExactTest(test="none", p_value=None, method="not tested: fewer than two groups")
    if m == 0 or m == big_n:
        return ExactTest(test="none", p_value=None, method="not tested: the code is in all transcripts or in none")
    if len(totals) == 2:
        a, b = present
        res = fisher_exact([[a, totals[0] - a], [b, totals[1] - b]], alternative="two-sided")
        return ExactTest(test="fisher", p_value=min(1.0, float(res.pvalue)), method="Fisher's exact test, two-sided")
    return freeman_halton(present, totals, seed=seed)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; ``None`` entries are not tests and stay ``None``."""
    idx = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i] or 0.0)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(idx):
        p = p_values[i]
        assert p is not None
        running = max(running, min(1.0, (len(idx) - rank) * p))
        out[i] = running
    return out


__all__ = [
    "ExactTest",
    "TestName",
    "count_tables",
    "freeman_halton",
    "holm",
    "two_by_k_test",
]
