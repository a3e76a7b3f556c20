"""Fitting the stopping rules: the model of later stages, fitted-Q backward induction, the operating point.

- ``fit_answer_models``: for every history S and stage j, ridge logistic regression of correct_j on x_S
  (optistop.policy.features). j in S: "is this answer right, given everything seen"; j not in S: the model
  of later stages, conditioned on the confidences and agreement seen so far (correlated difficulty).
- ``fit_optimal``: fitted-Q backward induction at one lambda (optistop.policy.ModelRule). For histories S
  from the deepest back to {}, and each allowed next stage k, the already fitted rule is rolled out from
  S + k on every calibration prompt; the realised final correctness and extra cost are regressed on x_S.
- threshold cascades: optistop.offline.cascades (every ordered stage subset, one vectorised grid that
  serves every quality level at once; the old per-level ``fit_thresholds`` re-simulation is gone).
- ``choose``: the operating point with a stated confidence, by Learn-then-Test (optistop.offline.ltt): every
  candidate (fixed:k; router and optimal across lambda; subset threshold cascades with and without answer
  agreement) is fitted on one part of the calibration set, the cost-quality frontier on that part (fitted-Q's
  points excepted: it walks alone, as a comparator) is the fixed sequence, and the other part certifies it in
  order (quality >= t_lcb x the reference stage's at level 1 - confidence). The last certified candidate is
  served as fitted, unless a two-stage cascade certified on ALL the calibration prompts (ltt.pair_paths: into
  the reference, and below a stage certified adequate alone; threshold sequences read off unlabelled
  confidences, no fitting part; they get ``Criterion.whole`` of the error budget, a quarter of it to the
  ex-ante router's fixed lambda sequence, ltt.ante_path, where the prompts have ex-ante estimates) is cheaper;
  a rule that mixes stages must be cheaper than the cheapest certified single stage with the stated confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from optistop import policy as K
from optistop.logistic import fit_logistic, sigmoid
from optistop.policy_cascade import CascadeRule

if TYPE_CHECKING:   # candidates imports this module: the type only for annotations
    from optistop.offline.candidates import Candidates

LAMBDAS = tuple(float(x) for x in np.geomspace(2.0, 5000.0, 36))
OPT_STRIDE = 3        # fitted-Q candidates at every 3rd lambda of the grid (12 of 36): each costs a full fit
ROUTER_REFINE = 4     # router candidates on a 4x finer lambda grid (141 for 36): a router costs no fit, and
#                       on the x1.25 grid its cost jumped 30% between neighbours (RouteLLM MMLU: 6.96 -> 4.87),
#                       gaps that other families' points filled on the tested sequence, whose first failure
#                       then ended the walk above the router points the router-only walk certified
PATH_MARGIN = 0.15    # the tested sequence runs down to 15 points below the tolerance on the fitting part:
#                       the testing part may well certify what looked worse on the fitting part
CROSS_FIT = ("router", "optimal")   # families whose fitting-part estimates are cross-fitted (and the
#                                     subset cascades, by level: crossfit.levels)
PATH_CAP = 200        # ... through at most this many frontier points (fixed-sequence: no cost in length)
WHOLE_N = 1500        # up to this many calibration prompts the pair paths get most of the error budget
# families fitted and certified on their own walk (a comparator, reported), but not on the served split path.
# Fitted-Q (the paper's stopping rule with learned continuation values) never made the served rule cheaper
# (5 report sets x 5-fold, 20 draws of 300 / 1,000, 5 MMLU-Pro ladders with and without ex-ante estimates:
# equal everywhere, tiny 5-fold 3.067 -> 3.070), while its points, interleaved with the router's on the
# tested sequence, ended the walk above the router-only walk: MMLU-Pro Llama 5-fold 6.779 -> 6.867 (seed 0)
COMPARATOR_ONLY = ("optimal",)


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
    target: float = 0.95       # the quality target, as a share of the reference stage's quality
    t_lcb: float = 0.945       # the tolerance the promise is about: quality >= t_lcb x the reference's ...
    confidence: float = 0.9    # ... with this probability over the fitting data (optistop.offline.ltt)
    reference: str = "best"    # best | last | a stage index or name (reference_stage)
    test: str = "likelihood"   # the certifying test of optistop.offline.ltt.TESTS
    fit_share: float = 0.5     # share of the calibration set that fits and orders; the rest tests
    whole: float | None = None  # share of 1 - confidence spent on the whole-data pair paths (ltt.pair_paths);
    #                             None: whole_share(N), a function of the calibration set's size only

    def __post_init__(self) -> None:
        for name, v, ok in (("target", self.target, 0 < self.target <= 1), ("confidence", self.confidence,
                            0 < self.confidence < 1), ("fit_share", self.fit_share, 0 < self.fit_share < 1),
                            ("whole", self.whole, self.whole is None or 0 <= self.whole < 1)):
            if not ok:
                raise ValueError(f"{name} {v!r} is out of range: target in (0, 1], confidence and fit_share "
                                 f"in (0, 1), whole in [0, 1)")

    @classmethod
    def at(cls, target: float, confidence: float = 0.9, reference: str = "best", **kw: object) -> Criterion:
        """The criterion for a target: the tolerance is 0.5 points below it (95% -> 94.5%)."""
        return cls(target, target - 0.005, confidence, str(reference), **kw)   # type: ignore[arg-type]


def whole_share(N: int) -> float:
    """The pair paths' share of the error budget for N calibration prompts. Measured on the report sets
    (optistop.offline.ltt_sweep ``--whole 0,auto --kfold``): with a few hundred to ~1,000 prompts,
    twice the test prompts outweigh the split path's smaller budget (0.8); with thousands the split path's
    half is already large, the model-based rules it orders (router, fitted-Q) win on some sets, and every
    share it gives away ends its walk earlier than the same walk at the whole budget (RouteLLM MMLU 5-fold,
    seeds 4 and 8: 5.37 / 5.47 at 0.1, 5.29 / 5.38 at 0, equal to the router-only walk; tiny 3.103 -> 3.099
    over 10 seeds; MMLU-Pro Qwen 6.37 -> 6.36, Llama unchanged, 3 seeds). The tiny family's 5-fold (1,870
    fitting prompts) set the break at 1,500; the 1,045-prompt GSM8K folds still want the pairs.
    A function of N only, never of the labels: the union bound stays valid."""
    return 0.8 if N <= WHOLE_N else 0.0


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
        out[mask] = np.stack([fit_logistic(x, a.correct[:, j].astype(float), _l2(N)) for j in range(n)])
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
            w_q = fit_logistic(x, y, _l2(N))
            w_c = fit_logistic(x, extra / cmax, _l2(N)) if cmax > 0 else np.zeros(x.shape[1])
            rule.cont[mask][k] = (w_q, w_c, cmax)
    return rule


def fit_router(a: Arrays, lam: float, answer: dict[int, np.ndarray]) -> K.ModelRule:
    ue, ua = flags(a)
    return K.ModelRule(a.conf.shape[1], a.costs, lam, ue, ua, answer, {}, True, "router")


def router_outcomes(a: Arrays, answer: dict[int, np.ndarray],
                    lambdas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(L, N) per-prompt quality and cost of the router at every lambda at once. Its one decision (the
    empty history; K.ModelRule with router_only) runs argmin_k c_k + lam (1 - P(correct_k | prompt)) and
    stops there, and P does not depend on lambda: so one matmul serves the whole grid. The rule's own plan
    and arithmetic, so the choices equal ``outcome(fit_router(a, lam, answer), a)`` (unit test)."""
    N = len(a.conf)
    ue, ua = flags(a)
    pl = fit_router(a, 1.0, answer).plan(0)
    nk = len(pl.ks)
    z = sigmoid(K.features(a.state(), np.arange(N), 0, ue, ua) @ pl.w)
    base = pl.cost + pl.cmax * z[:, nk:]                          # the (zero) cost-to-go term, as decide has it
    lam = np.asarray(lambdas, float)
    step = max(1, (1 << 22) // max(N * nk, 1))                    # (lambdas, N, stages) blocks of ~32 MB
    pick = np.concatenate([pl.ks[np.argmin(base + lam[i:i + step, None, None] * (1 - z[:, :nk]), axis=2)]
                           for i in range(0, len(lam), step)]) if len(lam) else np.zeros((0, N), int)
    return a.correct[np.arange(N), pick].astype(float), a.costs[pick]         # pick: (L, N) the stage run


def outcome(rule: K.Policy, a: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt (quality, cost) of a rule on complete replay arrays."""
    ran, ans = K.simulate(rule, a.conf, a.ex_ante, a.resp)
    return a.correct[np.arange(len(ans)), ans].astype(float), ran.astype(float) @ a.costs


def reference_stage(a: Arrays, reference: str | int = "best", names: Sequence[str] | None = None) -> int:
    """The stage quality is measured against: ``best`` (highest accuracy on ``a``; the cheaper on a tie),
    ``last``, a stage index, or a stage name from ``names``. ValueError naming the valid choices."""
    n = a.conf.shape[1]
    ref = str(reference)
    if ref == "best":
        acc = a.correct.mean(axis=0)
        return int(np.lexsort((a.costs, -acc))[0])
    if ref == "last":
        return n - 1
    if ref.isdigit() and int(ref) < n:
        return int(ref)
    if names is not None and ref in names:
        return list(names).index(ref)
    valid = ["best", "last", f"0..{n - 1}", *(names or [])]
    raise ValueError(f"reference {reference!r} is not a stage; valid: {', '.join(valid)}")


def router_lambdas(lambdas: Sequence[float]) -> tuple[float, ...]:
    """``lambdas`` (geometric, as LAMBDAS) refined ROUTER_REFINE times between the same ends: contains them."""
    if len(lambdas) < 2:
        return tuple(float(x) for x in lambdas)
    fine = np.geomspace(min(lambdas), max(lambdas), (len(lambdas) - 1) * ROUTER_REFINE + 1)
    given = np.asarray(lambdas, float)
    near = np.abs(np.log(fine[:, None] / given[None, :])).min(axis=1) < 1e-9   # the given points, kept exact
    return tuple(sorted(map(float, np.concatenate([given, fine[~near]]))))


def operating_json(cand: tuple[str, float | None, K.Policy, float, float]) -> dict:
    """A candidate as policy.json's ``operating`` entry (what PolicyBook serves)."""
    fam, param, rule = cand[0], cand[1], cand[2]
    if isinstance(rule, CascadeRule):
        return rule.to_json()
    return {"policy": fam, "lambda": param if fam in ("optimal", "router", "ante") else None}


def _cand_name(rule: K.Policy) -> str:
    if isinstance(rule, CascadeRule):
        return "cascade:" + ">".join(map(str, rule.stages)) + ("+agree" if rule.agree else "")
    return rule.name


def choose(cal: Arrays, crit: Criterion, seed: int, lambdas: tuple[float, ...] = LAMBDAS,
           inner: int = 2, thresholds: bool = True, names: Sequence[str] | None = None,
           optimal: bool = True, fitted: Candidates | None = None) -> dict:
    """The operating point by Learn-then-Test (optistop.offline.ltt) over ALL candidates at once.

    ``cal`` is split (seeded) into a fitting part (``crit.fit_share``) and a testing part. On the fitting
    part every candidate is fitted and its (cost, quality) estimated: fixed:k, the threshold cascade over
    every stage subset (with and without answer agreement), the router and the fitted-Q rule at each lambda.
    Their Pareto frontier (fitted-Q's excepted: ``COMPARATOR_ONLY``), most expensive first, is the fixed
    sequence; the testing part certifies them in
    that order (quality >= crit.t_lcb x the reference stage's, at level 1 - crit.confidence) and the last
    certified one is served as fitted (refitting on all of ``cal`` would void the guarantee). The reference
    stage opens the sequence: it meets the tolerance by definition. ``inner`` is unused (kept for callers).
    ``fitted``: the candidates of ``candidates.fit(cal, seed, crit.fit_share, ...)`` when the caller fits once
    for several criteria (they do not depend on the target, confidence or reference).

    That split path spends ``1 - crit.whole`` of the error budget 1 - confidence; the rest goes to
    ltt.pair_paths: every two-stage cascade (k -> reference) down its confidence quantiles, tested on ALL of
    ``cal`` (its order needs no fitting part, so it sees twice the prompts), and, with ``ltt.ANTE_SHARE`` of
    that share where ``cal`` has ex-ante estimates, ltt.ante_path: the ex-ante router (policy ``ante``) down
    a fixed lambda grid, tested on ALL of ``cal`` too. With probability >= confidence
    no path certified a rule below the tolerance (union bound), so the cheapest certified rule of all
    paths (by its mean cost on the testing part) is served, unless it mixes stages and its cost there is not
    below the cheapest certified single stage's by z(confidence) standard errors (``ltt.single_stage_guard``):
    then that stage is. ``thresholds=False``
    turns the pair paths off too (the split path then has the whole budget).

    Returns {"choice": (name, param), "rule", "router_choice", "router", "optimal_choice", "optimal" (the
    comparators: the router's and fitted-Q's families alone, each with the whole budget on the split path;
    fitted-Q's None when ``optimal`` is False), "answer" (answer models of the
    fitting part), "reference", "fit_idx", "path": [{"name", "param", "cost", "quality_rel", "certified",
    "operating"}]}: the tested sequence, safest first (cost and quality on the fitting part), each with its
    policy.json ``operating`` entry, so a safer certified point can be served without refitting.
    """
    from optistop.offline import candidates, ltt

    N, n = cal.conf.shape
    ref = reference_stage(cal, crit.reference, names)
    if fitted is None:
        fitted = candidates.fit(cal, seed, crit.fit_share, lambdas, thresholds, optimal)
    elif fitted.key != candidates.key(cal, seed, crit.fit_share, lambdas, thresholds, optimal):
        raise ValueError("the fitted candidates are for other data or another seed, fit_share, lambdas or families")
    fit_idx, test_idx, rng = candidates.split(N, seed, crit.fit_share)
    a, b = cal.take(fit_idx), cal.take(test_idx)
    q_ref_a = max(float(a.correct[:, ref].mean()), 1e-12)
    cands, answer = fitted.cands, fitted.answer
    order = rng.permutation(len(test_idx))
    whole = (whole_share(N) if crit.whole is None else crit.whole) if thresholds and N > 1 else 0.0
    delta = (1.0 - crit.confidence) * (1.0 - whole)      # the split path's share; whole x the rest: the pairs
    q_ref_b = b.correct[:, ref].astype(float)

    def select(pool: list[tuple[str, float | None, K.Policy, float, float]], delta: float) -> tuple[int, list[dict]]:
        cheaper = [c for c in pool if c[3] < a.costs[ref] - 1e-12]
        path = ltt.frontier_path(np.array([c[3] for c in cheaper]), np.array([c[4] for c in cheaper]),
                                 (crit.t_lcb - PATH_MARGIN) * q_ref_a, PATH_CAP) if cheaper else np.zeros(0, int)
        seq = [pool[ref]] + [cheaper[i] for i in path]
        tests = [lambda: True] + [
            (lambda r=c[2]: ltt.rejects(outcome(r, b)[0], q_ref_b, crit.t_lcb, delta, crit.test, order))
            for c in seq[1:]]
        last = ltt.fixed_sequence(tests)
        info = [{"name": _cand_name(c[2]) if c[0] == "cascade" else c[0], "param": c[1], "cost": round(c[3], 6),
                 "quality_rel": round(c[4] / q_ref_a, 6), "certified": i <= last, "operating": operating_json(c)}
                for i, c in enumerate(seq)]
        return last, [dict(x, _cand=c) for x, c in zip(info, seq, strict=True)]

    last, path = select([c for c in cands if c[0] not in COMPARATOR_ONLY], delta)
    best = path[last]["_cand"]
    singles = [x["_cand"] for x in path if x["certified"] and ltt.stage_of(x["_cand"][2]) is not None]
    q_ref_all = max(float(cal.correct[:, ref].mean()), 1e-12)

    def whole_entry(cand: tuple[str, float | None, K.Policy, float, float]) -> dict:
        # after the split path's entries; cost and quality on the whole calibration set
        return {"name": _cand_name(cand[2]) + "@whole", "param": cand[1], "cost": round(cand[3], 6),
                "quality_rel": round(cand[4] / q_ref_all, 6), "certified": True,
                "operating": operating_json(cand), "_cand": cand}

    # per-prompt cost of the rule to serve on the testing part: out of sample for the split path's rule (a
    # model-based rule's cost on the part it was fitted to is off), label-free for every rule
    best_cost = outcome(best[2], b)[1]
    if whole > 0:
        # the pair paths' certified rules and the split path's are all valid at once (union bound over
        # the (1 - whole) delta of the split path and whole x delta of the pairs): any of them may be
        # served, so the cheapest on the whole calibration set is
        budget, perm = (1.0 - crit.confidence) * whole, rng.permutation(N)
        ante = ltt.ANTE_SHARE if cal.ex_ante is not None else 0.0
        won: list[tuple[K.Policy, float]] = [
            *ltt.pair_paths(cal, ref, crit.t_lcb, budget * (1.0 - ante), crit.test, perm),
            *ltt.ante_path(cal, ref, crit.t_lcb, budget * ante, crit.test, perm)]
        # a tie goes to the fewer stages: stage k alone costs c_k on any data; "k, then j below a
        # threshold" only did on these (an ex-ante router runs one stage)
        for rule, c in sorted(won, key=lambda w: len(getattr(w[0], "stages", (0,)))):
            cost_b = outcome(rule, b)[1]
            cheaper = float(cost_b.mean()) < float(best_cost.mean()) - 1e-12
            if cheaper or ltt.stage_of(rule) is not None:
                q = float(outcome(rule, cal)[0].mean())
                fam, lam = ("cascade", None) if isinstance(rule, CascadeRule) else ("ante", rule.lam)  # type: ignore[attr-defined]
                cand = (fam, lam, rule, c, q)
                singles += [cand] if ltt.stage_of(rule) is not None else []
                if cheaper:
                    best_cost, best = cost_b, cand
                    path.append(whole_entry(cand))
    guarded = ltt.single_stage_guard(best, singles, best_cost, cal.costs, crit.confidence)
    if guarded is not best and all(x["_cand"] is not guarded for x in path):
        path.append(whole_entry(guarded))
    best = guarded
    # the comparators are procedures of their own: one family (and the fixed stages) with the whole error
    # budget on its split path; the fitted-Q one is None when its candidates were not fitted
    def alone(fam: str) -> tuple[str, float | None, K.Policy, float, float]:
        last, p = select([c for c in cands if c[0] == fam or c[0].startswith("fixed")], 1.0 - crit.confidence)
        return p[last]["_cand"]

    router, opt = alone("router"), alone("optimal") if any(c[0] == "optimal" for c in cands) else None
    label = lambda c: (_cand_name(c[2]) if c[0] == "cascade" else c[0], c[1])   # noqa: E731
    strip = lambda p: [{k: v for k, v in x.items() if k != "_cand"} for x in p]   # noqa: E731
    return {"choice": label(best), "rule": best[2], "router_choice": label(router), "router": router[2],
            "optimal_choice": None if opt is None else label(opt), "optimal": None if opt is None else opt[2],
            "answer": answer, "reference": ref, "fit_idx": fit_idx, "path": strip(path)}


def fit_platt(a: Arrays) -> np.ndarray:
    """(n, 2) per-stage Platt (a, b) of the raw confidences: what the paper's rule reads them through."""
    return np.stack([fit_logistic(np.column_stack([np.ones(len(a.conf)), K.logit(a.conf[:, k])]),
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
