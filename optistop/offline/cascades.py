"""Threshold cascades over every ordered subset of stages, evaluated as one vectorised grid.

A configuration is (subset S = s_1 < ... < s_m, agree, thresholds t_1..t_{m-1}) of
optistop.policy_cascade.CascadeRule. Each position's thresholds are ``grid`` quantiles of its score on the
fitting data plus +inf (never stop there). Every configuration of every subset is simulated once, all at
once per chunk (a (configs, prompts) boolean ``alive`` mask walked stage by stage), so the cheapest
configuration at *every* quality level comes from one pass: the old per-level re-simulation is gone.

The grid per position shrinks for long subsets so that a subset never has more than ``budget``
configurations: 128 thresholds for one decision, 128 per position for two, 26 for three, 10 for four.
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
# grid (128: the certified path steps down in small quality steps), five stages 10 per position
GRID, BUDGET, CHUNK = 128, 20000, 1 << 21     # CHUNK: configs x prompts per boolean block (~2 MB)


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


def evaluate_product(sc: np.ndarray, corr: np.ndarray, costs: np.ndarray,
                     levels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``evaluate`` over the product grid of ``levels`` (one ascending threshold array per position), in
    itertools.product order, with the last position's thresholds all at once: its prompts are sorted by
    score once, and for every combination of the earlier thresholds, suffix sums over that order give the
    stopped count and correctness at every last threshold (a searchsorted each). So the work is
    (grid ** (m - 2)) x N instead of (grid ** (m - 1)) x N. Returns (quality, cost, T)."""
    N, m = sc.shape
    if m == 1:
        return np.array([corr[:, 0].mean()]), np.array([float(costs[0])]), np.zeros((1, 0))
    cf = corr.astype(float)
    outer = np.array(list(itertools.product(*levels[:-1])), float) if m > 2 else np.zeros((1, 0))
    last = np.asarray(levels[-1], float)
    order = np.argsort(sc[:, m - 2], kind="stable")
    vals = sc[order, m - 2]
    idx = np.searchsorted(vals, last, side="left")            # first prompt (in order) at or above t
    c_stop, c_go = cf[order, m - 2], cf[order, m - 1]
    qs, cs = [], []
    step = max(1, CHUNK // max(N, 1))
    for lo in range(0, len(outer), step):
        t = outer[lo:lo + step]
        alive = np.ones((len(t), N), bool)
        q0, c0 = np.zeros(len(t)), np.zeros(len(t))
        for j in range(m - 2):
            c0 += costs[j] * alive.sum(1)
            stop = alive & (sc[None, :, j] >= t[:, j, None])
            q0 += stop @ cf[:, j]
            alive &= ~stop
        c0 += costs[m - 2] * alive.sum(1)
        A = alive[:, order].astype(float)

        def suffix(x: np.ndarray) -> np.ndarray:   # suffix[:, k] = sum over ordered prompts >= k
            return np.concatenate([np.cumsum(x[:, ::-1], axis=1)[:, ::-1], np.zeros((len(x), 1))], axis=1)

        n_ge, q_st, q_go = suffix(A), suffix(A * c_stop), suffix(A * c_go)
        q = q0[:, None] + q_st[:, idx] + (q_go[:, :1] - q_go[:, idx])
        c = c0[:, None] + costs[m - 1] * (n_ge[:, :1] - n_ge[:, idx])
        qs.append(q.ravel())
        cs.append(c.ravel())
    T = np.column_stack([np.repeat(outer, len(last), axis=0), np.tile(last, len(outer))])
    return np.concatenate(qs) / max(N, 1), np.concatenate(cs) / max(N, 1), T


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
            q, c, T = evaluate_product(sc, a.correct[:, list(S)], a.costs[list(S)], levels)
            blocks.append((S, ag, T))
            qs.append(q)
            cs.append(c)
    sizes = np.array([len(b[2]) for b in blocks])
    return Grid(blocks, np.concatenate(qs), np.concatenate(cs), np.concatenate([[0], np.cumsum(sizes)[:-1]]))


def hindsight_grid(a: Arrays, g: int = 256, budget: int = 40000) -> Grid:
    """The grid the hindsight references are read from: plain cascades (no agreement), finer than a fit's."""
    return grid(a, agree=False, grid=g, budget=budget)


def hindsight_point(a: Arrays, ref: int, level: float, gr: Grid | None = None) -> tuple[CascadeRule | None, float]:
    """(rule, cost on ``a``) of the cheapest plain threshold cascade over any stage subset reaching ``level``
    x the reference stage's quality on ``a`` itself: tuned in hindsight, a reference, never a policy. None
    and the reference stage's cost when none does. ``gr``: ``hindsight_grid(a)`` when the caller has it."""
    gr = hindsight_grid(a) if gr is None else gr
    i = gr.cheapest(level * a.correct[:, ref].mean())
    return (gr.rule(i), float(gr.cost[i])) if i is not None else (None, float(a.costs[ref]))


def hindsight_cost(a: Arrays, ref: int, level: float, g: int = 256, budget: int = 40000) -> float:
    """The cost of ``hindsight_point``."""
    return hindsight_point(a, ref, level, hindsight_grid(a, g, budget))[1]
