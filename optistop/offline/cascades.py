"""Threshold cascades over every ordered subset of stages, evaluated as one vectorised grid.

A configuration is (subset S = s_1 < ... < s_m, agree, thresholds t_1..t_{m-1}) of
optistop.policy_cascade.CascadeRule. Each position's thresholds are ``grid`` quantiles of its score on the
fitting data plus +inf (never stop there). Every configuration of every subset is simulated once, all at
once per chunk (a (configs, prompts) boolean ``alive`` mask walked stage by stage), so the cheapest
configuration at *every* quality level comes from one pass: the old per-level re-simulation is gone.

The grid per position shrinks for long subsets so that a subset never has more than ``budget``
configurations: 128 thresholds for one decision, 88 per position for two, 19 for three, 8 for four.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from optistop.policy_cascade import CascadeRule

if TYPE_CHECKING:   # policy_fit imports this module: the arrays type only for annotations
    from optistop.offline.policy_fit import Arrays

# at most GRID thresholds per position and BUDGET configurations per subset: a two-stage cascade gets a fine
# grid (128: the certified path steps down in small quality steps), five stages 8 per position
GRID, BUDGET, CHUNK = 128, 8000, 1 << 21      # CHUNK: configs x prompts per boolean block (~2 MB)


def subsets(n: int) -> list[tuple[int, ...]]:
    """Every non-empty increasing tuple of stages (start anywhere, skip any)."""
    return [s for m in range(1, n + 1) for s in itertools.combinations(range(n), m)]


def scores(a: Arrays, S: tuple[int, ...], agree: bool) -> np.ndarray:
    """(N, m) the score each listed stage is compared with its threshold (CascadeRule's)."""
    sc = a.conf[:, list(S)].astype(float)
    if agree and a.resp is not None:
        for j in range(1, len(S)):
            r, p = a.resp[:, S[j]], a.resp[:, S[j - 1]]
            sc[:, j] += (r == p) & (r >= 0)
    return sc


def evaluate(sc: np.ndarray, corr: np.ndarray, costs: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean correctness and cost of every threshold row of T (C, m-1) on scores sc (N, m)."""
    N, m = sc.shape
    q, c = np.zeros(len(T)), np.zeros(len(T))
    step = max(1, CHUNK // max(N, 1))
    cf = corr.astype(np.float32)
    for lo in range(0, len(T), step):
        t = T[lo:lo + step]
        alive = np.ones((len(t), N), bool)
        for j in range(m - 1):
            c[lo:lo + step] += costs[j] * alive.sum(1)
            stop = alive & (sc[None, :, j] >= t[:, j, None])
            q[lo:lo + step] += stop.astype(np.float32) @ cf[:, j]
            alive &= ~stop
        c[lo:lo + step] += costs[-1] * alive.sum(1)
        q[lo:lo + step] += alive.astype(np.float32) @ cf[:, -1]
    return q / max(N, 1), c / max(N, 1)


@dataclass
class Grid:
    """Every configuration: ``quality`` / ``cost`` means on the data it was evaluated on."""

    blocks: list[tuple[tuple[int, ...], bool, np.ndarray]]   # (S, agree, T (C, m-1))
    quality: np.ndarray                                       # (total,) mean correctness
    cost: np.ndarray
    offsets: np.ndarray                                       # start of each block in the flat arrays

    def rule(self, i: int) -> CascadeRule:
        b = int(np.searchsorted(self.offsets, i, side="right") - 1)
        S, agree, T = self.blocks[b]
        return CascadeRule(S, T[i - self.offsets[b]], agree)

    def cheapest(self, level_quality: float) -> int | None:
        """Index of the cheapest configuration with mean correctness >= level_quality (None if none)."""
        ok = np.flatnonzero(self.quality >= level_quality - 1e-12)
        return int(ok[np.argmin(self.cost[ok])]) if ok.size else None


def grid(a: Arrays, agree: bool | None = None, grid: int = GRID, budget: int = BUDGET) -> Grid:
    """Evaluate every subset cascade on ``a``. ``agree``: None = both variants where answers are known."""
    n = a.conf.shape[1]
    variants = [False, True] if agree is None else [agree]
    if a.resp is None:
        variants = [False]
    blocks, qs, cs = [], [], []
    for S in subsets(n):
        m = len(S)
        for ag in variants:
            if ag and m < 2:
                continue
            sc = scores(a, S, ag)
            g = grid if m <= 1 else min(grid, max(2, int(budget ** (1 / (m - 1)) + 1e-9) - 1))
            levels = [np.append(np.unique(np.quantile(sc[:, j], np.linspace(0, 1, g))), np.inf)
                      for j in range(m - 1)]
            T = np.array(list(itertools.product(*levels)), float) if m > 1 else np.zeros((1, 0))
            q, c = evaluate(sc, a.correct[:, list(S)], a.costs[list(S)], T)
            blocks.append((S, ag, T))
            qs.append(q)
            cs.append(c)
    sizes = np.array([len(b[2]) for b in blocks])
    return Grid(blocks, np.concatenate(qs), np.concatenate(cs), np.concatenate([[0], np.cumsum(sizes)[:-1]]))


def hindsight_cost(a: Arrays, ref: int, level: float, g: int = 256, budget: int = 30000) -> float:
    """Cost of the cheapest plain threshold cascade over any stage subset reaching ``level`` x the reference
    stage's quality on ``a`` itself: a reference tuned in hindsight, never a policy."""
    gr = grid(a, agree=False, grid=g, budget=budget)
    i = gr.cheapest(level * a.correct[:, ref].mean())
    return float(gr.cost[i]) if i is not None else float(a.costs[ref])
