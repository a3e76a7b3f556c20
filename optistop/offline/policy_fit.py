"""Fitting the stopping rules: the model of later stages, fitted-Q backward induction, the operating point.

- ``fit_answer_models``: for every history S and stage j, ridge logistic regression of correct_j on x_S
  (optistop.policy.features). j in S: "is this answer right, given everything seen"; j not in S: the model
  of later stages, conditioned on the confidences and agreement seen so far (correlated difficulty).
- ``fit_optimal``: fitted-Q backward induction at one lambda (optistop.policy.ModelRule). For histories S
  from the deepest back to {}, and each allowed next stage k, the already fitted rule is rolled out from
  S + k on every calibration prompt; the realised final correctness and extra cost are regressed on x_S.
- ``fit_thresholds``: the classic cascade (start stage, per-stage confidence thresholds), cheapest config
  reaching a quality level on the calibration data: a candidate, so the chosen rule is never dearer
  than a threshold cascade tuned on the same data.
- ``choose``: the operating point with a stated confidence. Inner 2-fold cross-fitting on the calibration
  set gives honest per-prompt (quality, cost) for every candidate (fixed:k; router, optimal at each
  lambda; threshold cascades at each level). A candidate is certified iff its mean quality ratio reaches
  the target t and the one-sided lower confidence bound of mean(q - t_lcb q_last) is >= 0 (z standard
  errors). Each family is tested in fixed sequence from its safest member down and stops at the first
  failure (Learn-then-Test style: no multiplicity blow-up over the grid). The cheapest certified
  candidate is refitted on the whole calibration set.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from optistop import policy as K

LAMBDAS = tuple(float(x) for x in np.geomspace(2.0, 5000.0, 36))
LEVELS = (0.99, 0.985, 0.98, 0.975, 0.97, 0.965, 0.96, 0.955, 0.95)  # threshold-cascade quality levels


@dataclass
class Arrays:
    conf: np.ndarray                   # (N, n) every stage's confidence (offline, every stage was run)
    correct: np.ndarray                # (N, n) bool
    costs: np.ndarray                  # (n,)
    ex_ante: np.ndarray | None = None
    resp: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> Arrays:
        sub = lambda a: None if a is None else a[idx]
        return Arrays(self.conf[idx], self.correct[idx], self.costs, sub(self.ex_ante), sub(self.resp))

    def state(self) -> K.State:
        return K.State(self.conf, self.ex_ante, self.resp)


@dataclass(frozen=True)
class Criterion:
    target: float = 0.95      # mean quality / always-last-stage quality must reach this
    t_lcb: float = 0.945      # ... and the lower confidence bound of the same must reach this
    z: float = 0.674          # one-sided 75%: measured, not swept far (see reports/report.md)


def logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 25) -> np.ndarray:
    """Ridge logistic regression by Newton (IRLS); y may be fractional in [0, 1]; bias (col 0) unpenalised."""
    d = X.shape[1]
    pen = np.full(d, l2)
    pen[0] = 0.0
    w = np.zeros(d)
    m = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    w[0] = np.log(m / (1 - m))
    for _ in range(iters):
        p = K.sigmoid(X @ w)
        g = X.T @ (p - y) + pen * w
        H = (X * (p * (1 - p) + 1e-9)[:, None]).T @ X + np.diag(pen + 1e-8)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w


def _l2(N: int) -> float:
    return 1.0 + 30.0 / np.sqrt(max(N, 1))   # strong shrinkage for 30 prompts, negligible at thousands


def flags(a: Arrays) -> tuple[bool, bool]:
    return a.ex_ante is not None, a.resp is not None


def fit_answer_models(a: Arrays) -> dict[int, np.ndarray]:
    N, n = a.conf.shape
    ue, ua = flags(a)
    out = {}
    for mask in range(1 << n):
        x = K.features(a.state(), np.arange(N), mask, ue, ua)
        out[mask] = np.stack([logistic(x, a.correct[:, j].astype(float), _l2(N)) for j in range(n)])
    return out


def fit_optimal(a: Arrays, lam: float, answer: dict[int, np.ndarray]) -> K.ModelRule:
    N, n = a.conf.shape
    ue, ua = flags(a)
    rule = K.ModelRule(n, a.costs, lam, ue, ua, answer, {})
    rows = np.arange(N)
    masks = [m for m in range(1 << n) if max(K.stages_of(m, n), default=-1) < n - 1]
    masks.sort(key=lambda m: -max(K.stages_of(m, n), default=-1))        # deepest histories first
    for mask in masks:
        x = K.features(a.state(), rows, mask, ue, ua)
        top = max(K.stages_of(mask, n), default=-1)
        rule.cont[mask] = {}
        for k in range(top + 1, n):
            start = np.zeros((N, n), bool)
            start[:, K.stages_of(mask | 1 << k, n)] = True
            ran, ans = K.simulate(rule, a.conf, a.ex_ante, a.resp, start)
            y = a.correct[rows, ans].astype(float)
            extra = (ran & ~start).astype(float) @ a.costs
            cmax = float(a.costs[k + 1:].sum())
            w_q = logistic(x, y, _l2(N))
            w_c = logistic(x, extra / cmax, _l2(N)) if cmax > 0 else np.zeros(x.shape[1])
            rule.cont[mask][k] = (w_q, w_c, cmax)
    return rule


def fit_router(a: Arrays, lam: float, answer: dict[int, np.ndarray]) -> K.ModelRule:
    ue, ua = flags(a)
    return K.ModelRule(a.conf.shape[1], a.costs, lam, ue, ua, answer, {}, True, "router")


def outcome(rule: K.Policy, a: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt (quality, cost) of a rule on complete replay arrays."""
    ran, ans = K.simulate(rule, a.conf, a.ex_ante, a.resp)
    return a.correct[np.arange(len(ans)), ans].astype(float), ran.astype(float) @ a.costs


def threshold_grid(a: Arrays, grid: int = 16) -> list[K.ThresholdRule]:
    """Every (start stage, per-stage confidence-quantile thresholds) cascade on a ``grid``-point grid."""
    N, n = a.conf.shape
    rules = []
    for s in range(n):
        qs = [np.unique(np.quantile(a.conf[:, k], np.linspace(0, 1, grid))) for k in range(s, n - 1)]
        for th in itertools.product(*[np.append(q, np.inf) for q in qs]):
            rules.append(K.ThresholdRule(s, np.concatenate([np.full(s, np.inf), np.asarray(th)])))
    return rules


def fit_thresholds(a: Arrays, level: float, rules: list[K.ThresholdRule] | None = None) -> K.ThresholdRule:
    """The cheapest threshold cascade whose quality on ``a`` reaches ``level`` x always-last."""
    target = level * a.correct[:, -1].mean()
    best: tuple[float, K.ThresholdRule] | None = None
    for rule in rules or threshold_grid(a):
        q, c = outcome(rule, a)
        if q.mean() >= target - 1e-12 and (best is None or c.mean() < best[0]):
            best = (float(c.mean()), rule)
    n = a.conf.shape[1]
    return best[1] if best else K.ThresholdRule(n - 1, np.full(n - 1, np.inf))


def certified(q: np.ndarray, q_last: np.ndarray, c: Criterion) -> bool:
    m = len(q)
    d_pt, d_lcb = q - c.target * q_last, q - c.t_lcb * q_last
    sd = d_lcb.std(ddof=1) if m > 1 else 0.0
    return bool(d_pt.mean() >= 0 and d_lcb.mean() - c.z * sd / np.sqrt(m) >= 0)


def _folds(N: int, k: int, seed: int) -> np.ndarray:
    f = np.arange(N) % k
    np.random.default_rng(seed).shuffle(f)
    return f


def choose(cal: Arrays, crit: Criterion, seed: int, lambdas: tuple[float, ...] = LAMBDAS,
           inner: int = 2, thresholds: bool = True) -> dict:
    """The cheapest certified candidate, refitted on all of ``cal``; and the same for the router family.

    Returns {"choice": (name, param), "rule", "router_choice", "router", "cal": {name: (quality_rel, cost)}}.
    """
    N, n = cal.conf.shape
    fid = _folds(N, inner, seed)
    fams = {"optimal": lambdas, "router": lambdas, "threshold": LEVELS if thresholds else ()}
    Q = {f: np.zeros((len(p), N)) for f, p in fams.items()}
    C = {f: np.zeros((len(p), N)) for f, p in fams.items()}
    for f in range(inner):
        tr, te = np.flatnonzero(fid != f), np.flatnonzero(fid == f)
        a_tr, a_te = cal.take(tr), cal.take(te)
        ans = fit_answer_models(a_tr)
        for i, lam in enumerate(lambdas):
            Q["optimal"][i, te], C["optimal"][i, te] = outcome(fit_optimal(a_tr, lam, ans), a_te)
            Q["router"][i, te], C["router"][i, te] = outcome(fit_router(a_tr, lam, ans), a_te)
        grid = threshold_grid(a_tr) if thresholds else []
        for i, level in enumerate(fams["threshold"]):
            Q["threshold"][i, te], C["threshold"][i, te] = outcome(fit_thresholds(a_tr, level, grid), a_te)
    q_last = cal.correct[:, -1].astype(float)
    cands: list[tuple[float, str, float | None]] = []
    for k in range(n - 1, -1, -1):               # fixed sequence: the safest (largest) stage first
        if not certified(cal.correct[:, k].astype(float), q_last, crit):
            break
        cands.append((float(cal.costs[k]), f"fixed:{k}", None))
    for fam, params in fams.items():
        order = range(len(params) - 1, -1, -1) if fam != "threshold" else range(len(params))
        for i in order:                          # highest lambda / highest level first
            if not certified(Q[fam][i], q_last, crit):
                break
            cands.append((float(C[fam][i].mean()), fam, params[i]))
    fallback = (float(cal.costs[-1]), f"fixed:{n - 1}", None)
    best = min(cands, key=lambda t: t[0]) if cands else fallback
    routers = [c for c in cands if c[1] == "router" or c[1].startswith("fixed")]
    best_router = min(routers, key=lambda t: t[0]) if routers else fallback
    ans_all = fit_answer_models(cal)

    def build(choice: tuple[float, str, float | None]) -> K.Policy:
        _, name, p = choice
        if name == "optimal":
            return fit_optimal(cal, float(p), ans_all)            # type: ignore[arg-type]
        if name == "router":
            return fit_router(cal, float(p), ans_all)             # type: ignore[arg-type]
        if name == "threshold":
            return fit_thresholds(cal, float(p))                  # type: ignore[arg-type]
        return K.FixedRule(int(name.split(":")[1]), name)
    return {"choice": best[1:], "rule": build(best), "router_choice": best_router[1:], "router": build(best_router),
            "answer": ans_all}


def fit_platt(a: Arrays) -> np.ndarray:
    """(n, 2) per-stage Platt (a, b) of the raw confidences: what the paper's rule reads them through."""
    return np.stack([logistic(np.column_stack([np.ones(len(a.conf)), K.logit(a.conf[:, k])]),
                              a.correct[:, k].astype(float), 1e-3)[::-1] for k in range(a.conf.shape[1])])


def paper_at_target(cal: Arrays, target: float = 0.95) -> K.PaperRule:
    """The paper's rule at the cheapest lambda whose calibration quality reaches the target."""
    platt = fit_platt(cal)
    q_last = cal.correct[:, -1].mean()
    best: tuple[float, K.PaperRule] | None = None
    for lam in np.geomspace(1e-3, 1e3, 40):
        r = K.PaperRule(cal.costs, float(lam), platt)
        q, c = outcome(r, cal)
        if q.mean() >= target * q_last and (best is None or c.mean() < best[0]):
            best = (float(c.mean()), r)
    return best[1] if best else K.PaperRule(cal.costs, 0.0, platt)
