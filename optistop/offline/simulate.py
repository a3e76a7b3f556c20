"""Vectorised replay of the stopping rules over many prompts at once (offline only).

Each function takes per-prompt arrays P (calibrated post-hoc confidence, shape (N, n)), R (ex-ante
estimate, (N, n)) and returns ``Outcome``: which stages ran and which stage answered. The decisions are
the same as ``optistop.policy`` makes one prompt at a time (tests/test_replay.py checks that); this is
only faster. ``oracle`` needs the labels and exists only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optistop.policy import paper_threshold


@dataclass
class Outcome:
    ran: np.ndarray      # (N, n) bool: stage k ran for prompt i
    answer: np.ndarray   # (N,) int: stage whose answer was returned

    def cost(self, costs: Sequence[float]) -> np.ndarray:
        return self.ran.astype(float) @ np.asarray(costs, float)

    def quality(self, correct: np.ndarray) -> np.ndarray:
        return correct[np.arange(len(self.answer)), self.answer].astype(float)


def _outcomes(r: np.ndarray, s: float) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    return ((np.zeros_like(r), s * (1.0 - r)), (r, np.full_like(r, 1.0 - s)), (np.ones_like(r), s * r))


def _value(m: np.ndarray, R: np.ndarray, ks: tuple[int, ...], costs: np.ndarray, s: np.ndarray,
           lam: float) -> np.ndarray:
    """V(h) for every prompt: best confidence m (N,), allowed stages ks (forward only)."""
    best = lam * (1.0 - m)
    for j, k in enumerate(ks):
        if costs[k] >= best.max(initial=-np.inf):
            continue
        best = np.minimum(best, costs[k] + _expect(m, R, ks[j + 1:], k, costs, s, lam))
    return best


def _expect(m: np.ndarray, R: np.ndarray, rest: tuple[int, ...], k: int, costs: np.ndarray,
            s: np.ndarray, lam: float) -> np.ndarray:
    ev = np.zeros_like(m)
    for p, w in _outcomes(R[:, k], float(s[k])):
        if np.any(w > 0):
            ev += w * _value(np.maximum(m, p), R, rest, costs, s, lam)
    return ev


def optimal(P: np.ndarray, R: np.ndarray, costs: Sequence[float], lam: float,
            resolution: float | Sequence[float] = 0.0) -> Outcome:
    N, n = P.shape
    c = np.asarray(costs, float)
    s = np.clip(np.broadcast_to(np.asarray(resolution, float), (n,)), 0.0, 1.0)
    ran = np.zeros((N, n), bool)
    answer = np.full(N, -1)
    m = np.zeros(N)
    last = np.full(N, -1)
    active = np.ones(N, bool)
    while active.any():
        for j in range(-1, n):
            idx = np.flatnonzero(active & (last == j))
            if idx.size == 0:
                continue
            ks = tuple(range(j + 1, n))
            if not ks:
                active[idx] = False
                continue
            mm, RR = m[idx], R[idx]
            conts = np.stack([c[k] + _expect(mm, RR, ks[i + 1:], k, c, s, lam) for i, k in enumerate(ks)])
            best_i = np.argmin(conts, axis=0)            # first minimum, as the scalar policy
            cont = conts[best_i, np.arange(idx.size)]
            stop = (lam * (1.0 - mm) <= cont) & (j >= 0)
            active[idx[stop]] = False
            go = idx[~stop]
            k_next = np.asarray(ks)[best_i[~stop]]
            ran[go, k_next] = True
            p = P[go, k_next]
            better = p >= m[go]
            answer[go[better]] = k_next[better]
            m[go] = np.maximum(m[go], p)
            last[go] = k_next
    return Outcome(ran, answer)


def paper(P: np.ndarray, costs: Sequence[float], lam: float) -> Outcome:
    N, n = P.shape
    ran = np.zeros((N, n), bool)
    answer = np.full(N, n - 1)
    active = np.ones(N, bool)
    for i in range(n):
        ran[active, i] = True
        if i == n - 1:
            break
        stop = active & (P[:, i] >= paper_threshold(i, lam, costs))
        answer[stop] = i
        active &= ~stop
    return Outcome(ran, answer)


def fixed(N: int, n: int, k: int) -> Outcome:
    ran = np.zeros((N, n), bool)
    ran[:, k] = True
    return Outcome(ran, np.full(N, k))


def random_stop(N: int, n: int, seed: int) -> Outcome:
    """Uniform stopping stage, stages run in order (the ``random`` serving policy's distribution)."""
    stop = np.random.default_rng(seed).integers(0, n, N)
    ran = np.arange(n)[None, :] <= stop[:, None]
    return Outcome(ran, stop)


def oracle(correct: np.ndarray) -> Outcome:
    """Cheapest correct stage, known in advance (runs and pays only that stage); stage 0 if none is."""
    N, n = correct.shape
    any_ok = correct.any(axis=1)
    k = np.where(any_ok, np.argmax(correct, axis=1), 0)
    ran = np.zeros((N, n), bool)
    ran[np.arange(N), k] = True
    return Outcome(ran, k)


def oracle_at_target(correct: np.ndarray, costs: Sequence[float], target_quality: float) -> Outcome:
    """The cheapest foresight policy whose quality reaches ``target_quality`` (absolute accuracy).

    Starts from stage 0 for everyone and moves prompts whose stage 0 is wrong to their cheapest correct
    stage, cheapest move first, until the target is met (the RouteLLM README's oracle figures)."""
    N, n = correct.shape
    out = fixed(N, n, 0)
    need = int(np.ceil(target_quality * N - correct[:, 0].sum() - 1e-9))
    if need <= 0:
        return out
    cand = np.flatnonzero(~correct[:, 0] & correct.any(axis=1))
    k = np.argmax(correct[cand], axis=1)
    order = np.lexsort((cand, np.asarray(costs)[k]))
    take, kk = cand[order][:need], k[order][:need]
    out.ran[take, 0] = False
    out.ran[take, kk] = True
    out.answer[take] = kk
    return out
