"""Out-of-fold estimates within the fitting part, for ordering Learn-then-Test's tested sequence
(optistop.offline.policy_fit.choose): a rule scored on the prompts that fitted or picked it looks better
than it is, and an optimistic point early in the fixed sequence ends the walk at its first failure.

- ``models``: (cost, quality) of each (family, lambda) model rule, refitted per fold (every router lambda in
  one pass: policy_fit.router_outcomes).
- ``levels``: of "the cheapest subset cascade whose quality reaches this level", picked on one fold's
  grid (optistop.offline.cascades) and scored on the other.
"""

from __future__ import annotations

import numpy as np

from optistop.offline import cascades
from optistop.offline import policy_fit as F
from optistop.offline.policy_fit import Arrays


def folds(N: int, k: int, seed: int) -> np.ndarray:
    f = np.arange(N) % k
    np.random.default_rng(seed).shuffle(f)
    return f


def models(a: Arrays, rules: list[tuple[str, float]], seed: int, k: int = 2) -> list[tuple[float, float]]:
    """Out-of-fold (mean cost, mean correctness) on ``a`` of each (family, lambda) model rule."""
    N = len(a.conf)
    if N < 2 * k or not rules:
        return [(float(a.costs.max()), 0.0)] * len(rules)
    fid = folds(N, k, seed + 7)
    Q, C = np.zeros((len(rules), N)), np.zeros((len(rules), N))
    routers = [i for i, (fam, _) in enumerate(rules) if fam == "router"]
    for f in range(k):
        tr, te = np.flatnonzero(fid != f), np.flatnonzero(fid == f)
        a_tr, a_te = a.take(tr), a.take(te)
        ans = F.fit_answer_models(a_tr)
        if routers:   # every router lambda in one pass (router_outcomes)
            q, c = F.router_outcomes(a_te, ans, [rules[i][1] for i in routers])
            Q[np.ix_(routers, te)], C[np.ix_(routers, te)] = q, c
        for i, (fam, lam) in enumerate(rules):
            if fam != "router":
                Q[i, te], C[i, te] = F.outcome(F.fit_optimal(a_tr, lam, ans), a_te)
    return [(float(C[i].mean()), float(Q[i].mean())) for i in range(len(rules))]


def levels(a: Arrays, targets: np.ndarray, seed: int, k: int = 2) -> list[tuple[float, float]]:
    """Out-of-fold (mean cost, mean correctness) of "the cheapest subset cascade whose quality on the data
    reaches level": per fold, the grid on the other folds picks the configuration, this fold scores it."""
    N = len(a.conf)
    if N < 2 * k or not len(targets):
        return [(float(a.costs.max()), 0.0)] * len(targets)
    fid = folds(N, k, seed + 11)
    Q, C = np.zeros((len(targets), N)), np.zeros((len(targets), N))
    for f in range(k):
        tr, te = np.flatnonzero(fid != f), np.flatnonzero(fid == f)
        gr, a_te = cascades.grid(a.take(tr)), a.take(te)
        seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}     # neighbouring levels often pick one config
        for n_, lev in enumerate(targets):
            j = gr.cheapest(float(lev))
            j = int(np.argmax(gr.quality)) if j is None else j  # not reached on this fold: its best
            if j not in seen:
                seen[j] = F.outcome(gr.rule(j), a_te)
            Q[n_, te], C[n_, te] = seen[j]
    return [(float(C[i].mean()), float(Q[i].mean())) for i in range(len(targets))]
