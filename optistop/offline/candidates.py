"""The fitting part of Learn-then-Test (optistop.offline.policy_fit.choose): every candidate rule fitted and
its (cost, quality) estimated on the fitting part of a seeded split.

Nothing here depends on the target, the confidence or the reference stage, so one fit serves every target
of a sweep (the report's served frontier: 4 targets x 5 folds fitted once per fold, not once per target).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from optistop import policy as K
from optistop.offline import cascades, crossfit, ltt
from optistop.offline import policy_fit as F

Cand = tuple[str, "float | None", K.Policy, float, float]   # (family, param, rule, cost, quality)


@dataclass(frozen=True)
class Candidates:
    key: tuple[int, int, float, tuple[float, ...], bool, bool]   # key(...): the data and the fit's arguments
    cands: list[Cand]
    answer: dict[int, np.ndarray]        # the answer models of the fitting part


def key(cal: F.Arrays, seed: int, fit_share: float, lambdas: tuple[float, ...], thresholds: bool,
        optimal: bool) -> tuple[int, int, float, tuple[float, ...], bool, bool]:
    """What a fit depends on: the calibration data (a checksum of confidences and labels) and the arguments."""
    data = zlib.crc32(cal.correct.tobytes(), zlib.crc32(cal.conf.tobytes()))
    return (data, seed, float(fit_share), tuple(map(float, lambdas)), thresholds, optimal)


def split(N: int, seed: int, fit_share: float) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """(fit_idx, test_idx, the generator after the split: choose draws its test order from it next)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(N)
    n_fit = min(max(int(round(N * fit_share)), 1), N - 1) if N > 1 else N
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit:]), rng


def fit(cal: F.Arrays, seed: int, fit_share: float, lambdas: tuple[float, ...] = F.LAMBDAS,
        thresholds: bool = True, optimal: bool = True) -> Candidates:
    """fixed:k, the subset threshold cascades' frontier (with and without answer agreement), the router and
    the fitted-Q rule across lambda: fitted on the fitting part, (cost, quality) estimated there."""
    N, n = cal.conf.shape
    a = cal.take(split(N, seed, fit_share)[0])
    cands: list[Cand] = [(f"fixed:{k}", None, K.FixedRule(k, f"fixed:{k}"), float(a.costs[k]),
                          float(a.correct[:, k].mean())) for k in range(n)]
    if thresholds:
        gr = cascades.grid(a)
        # the frontier of thousands of configurations scored on the data that picked them is the envelope
        # of lucky estimates: it pushed honestly scored router points off the tested sequence, then failed
        # there (4-stage MMLU-Pro ladder, 1,200 prompts). Each frontier point is scored out of fold instead:
        # "the cheapest configuration reaching its level", picked on one half, scored on the other
        front = ltt.frontier_path(gr.cost, gr.quality, -np.inf, cap=10**9)
        for i, (c, q) in zip(front, crossfit.levels(a, gr.quality[front], seed), strict=True):
            cands.append(("cascade", None, gr.rule(int(i)), c, q))
    answer = F.fit_answer_models(a)
    # model-based rules score themselves too well on the data they were fitted to, and an optimistic
    # estimate early in the sequence ends it at once: their (cost, quality) are cross-fitted within the
    # fitting part (2 folds), the rules themselves fitted on all of it
    models = [("router", lam) for lam in F.router_lambdas(lambdas)]
    models += [("optimal", lam) for lam in lambdas[::F.OPT_STRIDE]] if optimal else []
    crossed = [m for m in models if m[0] in F.CROSS_FIT]
    est = dict(zip(crossed, crossfit.models(a, crossed, seed), strict=True))
    for fam, lam in models:
        r = F.fit_router(a, lam, answer) if fam == "router" else F.fit_optimal(a, lam, answer)
        if (fam, lam) in est:
            c, q = est[(fam, lam)]
        else:
            qq, cc = F.outcome(r, a)
            c, q = float(cc.mean()), float(qq.mean())
        cands.append((fam, lam, r, c, q))
    return Candidates(key(cal, seed, fit_share, lambdas, thresholds, optimal), cands, answer)
