"""Learn-then-Test: a quality promise with a stated confidence, valid over the whole candidate set.

The promise: with probability >= ``confidence`` over the fitting data, the served rule's mean quality on new
traffic from the same distribution is >= ``tol`` x the reference stage's (tol = 0.945 at target 95%).

For one candidate rule the null hypothesis is H0: E[q - tol q_ref] < 0 (q, q_ref in {0, 1} per prompt: the
rule's and the reference stage's correctness). ``d = q - tol q_ref`` lies in [-tol, 1]; a test at level
delta rejects H0 (certifies the rule) only with probability <= delta when H0 holds:

- ``likelihood`` (default): the empirical likelihood ratio test of E[d] >= 0 (Owen 2001), with half a
  pseudo-prompt in each (q, q_ref) cell (Agresti & Min's paired pseudo-counts). Asymptotic (chi-square
  calibrated), but it follows d's skew: at the H0 boundary with few disagreements it rejects 10-11% of
  simulated calibration sets at delta 0.1 where the z-test rejects 12-14% (tests/unit/test_ltt.py).
- ``betting``: Waudby-Smith & Ramdas (2023), "Estimating means of bounded random variables by
  betting": the capital K_t = prod_i (1 + lam_i (x_i - m)) of x = (d + tol) / (1 + tol) in [0, 1] against
  m = tol / (1 + tol) is a nonnegative supermartingale under H0 for any predictable lam_i in [0, 1/m), so
  by Ville's inequality P(max_t K_t >= 1/delta) <= delta: finite-sample valid, and it adapts to the
  variance of d (small when the rule and the reference mostly agree), unlike Hoeffding's range bound.
  lam_i is WSR's predictable plug-in for a fixed n, truncated at 1 / (2m). The price of validity at every
  n: its power is that of a z-test at z ~ sqrt(2 ln(1/delta)) = 2.15 for delta 0.1, not 1.28, which on
  the report sets costs 10-25% more when fitted on 300 prompts (README, "The stopping rules").
- ``normal``: one-sided z-test of mean(d) (asymptotic; above its level on skewed d; kept for comparison).

Fixed-sequence testing (Bauer 1991; the LTT of Angelopoulos et al. 2021): candidates ordered from the
safest to the cheapest *before* looking at the test data are tested in that order at level delta each, and
testing stops at the first non-rejection. The family-wise error is <= delta: the first true null reached
is rejected with probability <= delta and nothing after it is tested. The last rejected candidate is
served; the reference stage itself needs no test (it meets tol x itself by definition).

Whole-data paths (``pair_paths``): a sequence fixed before any outcome is seen (a two-stage cascade k ->
reference with its threshold walked down the quantiles of k's confidences, on to k alone, and from there to the cascades
i -> k below it) needs no fitting part, so it is tested on every calibration prompt: twice the evidence of
the split. Every hindsight-optimal cascade on the report sets is such a pair. The error budget delta is
shared by a union bound (split path: (1 - w) delta; the ex-ante router's path, where the prompts have
ex-ante estimates: A w delta, A = ``ANTE_SHARE``; each of the P pair paths into the reference: (1 - A) w
delta / P, handed down the chain): with probability >= 1 - delta none of the certified rules is below the
tolerance, so any of them (the cheapest) may be served. The ex-ante router (``ante_path``;
optistop.policy.ante_rule) reads the predictor's prompt-only estimates as they are, so its lambda grid is
fixed before the data are seen, like a pair's thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from optistop.policy import FixedRule, ModelRule, ante_rule
from optistop.policy_cascade import CascadeRule

if TYPE_CHECKING:   # policy_fit imports this module lazily: the arrays type only for annotations
    from optistop.offline.policy_fit import Arrays

TESTS = ("betting", "normal", "likelihood")


def betting_capital(x: np.ndarray, m: float, delta: float) -> np.ndarray:
    """Running capital K_1..K_n of the WSR one-sided bet that E[x] > m, x in [0, 1]."""
    n = len(x)
    if n == 0:
        return np.ones(0)
    t = np.arange(1, n + 1)
    csum = np.cumsum(x)
    mu_run = (0.5 + csum) / (t + 1)                                           # after x_t, for sigma
    sq = np.cumsum((x - mu_run) ** 2)
    sigma2 = (0.25 + np.concatenate([[0.0], sq[:-1]])) / t                    # predictable variance estimate
    lam = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * sigma2)), 0.5 / max(m, 1e-12))
    return np.exp(np.cumsum(np.log1p(lam * (x - m))))


def likelihood_z(d: np.ndarray, tol: float) -> float:
    """Signed root of the empirical likelihood ratio statistic of H0: E[d] = 0 (Owen 2001), with half a
    pseudo-prompt in each (q, q_ref) cell, values 1 - tol, 1, -tol, 0 (Agresti & Min's paired pseudo-counts).

    Why not the z-test: d is skewed (rare wins of +1, rarer or commoner losses of -tol), and the z-test's
    sample sd falls with the losses it happens not to see, so it certifies above its level (12.7% at
    delta 0.1 in tests/unit/test_ltt.py). The likelihood ratio reweights the observed prompts to the
    closest distribution with mean 0 instead of assuming a symmetric error, which keeps near its level;
    the pseudo-prompts give it a loss to reweight when none was seen (a handful of agreeing prompts
    certifies nothing)."""
    vals, counts = np.unique(np.asarray(d, float), return_counts=True)
    vals = np.concatenate([vals, [1.0 - tol, 1.0, -tol, 0.0]])
    w = np.concatenate([counts, np.full(4, 0.5)]).astype(float)
    mean = float(w @ vals / w.sum())
    # the weights p_i = w_i / (W (1 + mu v_i)) with sum p_i v_i = 0: g(mu) = sum w v / (1 + mu v) is
    # decreasing, and 1 + mu v > 0 bounds mu to (-1 / max v, 1 / -min v): min v = -tol < 0 < max v = 1
    g = lambda mu: float(w @ (vals / (1.0 + mu * vals)))          # noqa: E731
    lo, hi = -1.0 / vals.max() * (1 - 1e-12), 1.0 / -vals.min() * (1 - 1e-12)
    mu = brentq(g, lo, hi) if g(lo) > 0 > g(hi) else (hi if mean > 0 else lo)
    stat = 2.0 * float(w @ np.log1p(mu * vals))
    return math.copysign(math.sqrt(max(stat, 0.0)), mean)


def rejects(q: np.ndarray, q_ref: np.ndarray, tol: float, delta: float, test: str = "betting",
            order: np.ndarray | None = None) -> bool:
    """True iff H0: E[q - tol q_ref] < 0 is rejected at level ``delta`` (the rule is certified).

    ``order``: the sequence in which the betting test sees the prompts (fixed before looking: a seeded
    permutation; the data are exchangeable, so any fixed order is valid)."""
    d = np.asarray(q, float) - tol * np.asarray(q_ref, float)
    n = len(d)
    if n == 0:
        return False
    if test == "normal":
        sd = d.std(ddof=1) if n > 1 else 0.0
        return bool(d.mean() - norm.ppf(1 - delta) * sd / math.sqrt(n) > 0) if sd > 0 else bool(d.mean() > 0)
    if test == "likelihood":
        return bool(likelihood_z(d, tol) > norm.ppf(1 - delta))
    if test != "betting":
        raise ValueError(f"unknown test {test!r}; valid: {', '.join(TESTS)}")
    x = (d + tol) / (1 + tol)
    if order is not None:
        x = x[order]
    return bool(betting_capital(x, tol / (1 + tol), delta).max() >= 1 / delta)


def fixed_sequence(tests: Sequence[Callable[[], bool]]) -> int:
    """Index of the last candidate certified in fixed-sequence order (-1: none); stops at the first failure."""
    last = -1
    for i, t in enumerate(tests):
        if not t():
            break
        last = i
    return last


def frontier_path(cost: np.ndarray, quality: np.ndarray, floor: float, cap: int = 60) -> np.ndarray:
    """Indices of the (cost, quality) Pareto frontier, most expensive first, down to the first point whose
    quality is below ``floor`` (kept: it may still pass on other data), thinned to ``cap`` points.

    The order the fixed-sequence test walks: estimated on the fitting part only."""
    idx = np.lexsort((-quality, cost))                 # cheapest first, best quality first among ties
    front, best = [], -np.inf
    for i in idx:
        if quality[i] > best + 1e-12:
            front.append(int(i))
            best = quality[i]
    front = front[::-1]                               # most expensive (best) first
    out = []
    for i in front:
        out.append(i)
        if quality[i] < floor:
            break
    if len(out) > cap:                                # thin evenly, keeping both ends
        keep = np.unique(np.round(np.linspace(0, len(out) - 1, cap)).astype(int))
        out = [out[k] for k in keep]
    return np.asarray(out, dtype=int)


PAIR_POINTS = 161   # thresholds per pair path (before ties merge): steps of 1/160 of the prompts


def pair_grid(conf: np.ndarray, points: int = PAIR_POINTS) -> np.ndarray:
    """A pair path's thresholds, highest first: ``points`` evenly spaced quantiles of stage k's own confidences on the
    calibration prompts (observed values, ties merged). They read no label, so they cannot select on the
    outcomes the walk tests; and a monotone rescaling of the confidences (raw token probabilities near 1, a
    verifier's narrow band) moves them with it, so the rules certified, and their cost, do not change. A fixed
    grid in confidence did not have that: GSM8K's confidences pushed through p -> sigmoid(2.5 logit p + 12), the
    range of an API's top-token probabilities, cost 1.16 -> 1.27 x hindsight at 5-fold with the grid sigmoid(8
    .. -8) used before (quantiles: 1.13 on either scale), and its steps in a narrow band were coarse (RouteLLM
    MMLU, 400 draws of 300 prompts: 7.74 with it, 7.47 with quantiles). The price: the thresholds depend on the
    sample's confidences, so the level holds as closely as the test's own, not exactly: the cheapest certified
    pair of 400 draws of 300 / 1,000 RouteLLM MMLU prompts at delta 0.1 was below the tolerance on all 14,037 in
    8.0% / 6.5% of draws (3.5% / 1.8% with the coarser fixed grid)."""
    levels = np.linspace(1.0, 0.0, points)
    return np.unique(np.quantile(np.asarray(conf, float), levels, method="inverted_cdf"))[::-1]


def pair_paths(cal: Arrays, ref: int, tol: float, delta: float, test: str = "betting",
               order: np.ndarray | None = None) -> list[tuple[CascadeRule, float]]:
    """Certified two-stage cascades tested on ALL of ``cal`` (no split). Each path k -> j (stop at k when its
    confidence >= t, t down ``pair_grid``: quantiles of its confidences, no label read, then k alone) is fixed
    before any outcome is seen, so fixed-sequence testing needs no fitting part. The paths into ``ref`` (every
    cheaper stage k) share ``delta`` equally; a path certified to its end (k alone meets the tolerance) hands
    its level on, split equally, to the paths i -> k of every cheaper stage i: cascades that never run ``ref``
    at all, which is where the money is when a middle stage is adequate on its own. A graphical weighted-
    Bonferroni procedure (Bretz et al. 2009; the level moves only along a tree, on rejection), so with
    probability >= 1 - delta every returned rule meets the tolerance. Returns (rule, mean cost on ``cal``)."""
    costs, correct = cal.costs, cal.correct.astype(float)
    q_ref = correct[:, ref]
    cheaper = lambda j: [k for k in range(j) if costs[k] < costs[j] - 1e-12]   # noqa: E731  (stages increase)
    queue = [(k, ref, delta / len(cheaper(ref))) for k in cheaper(ref)]
    out: list[tuple[CascadeRule, float]] = []
    while queue:
        k, j, level = queue.pop(0)
        conf = cal.conf[:, k]
        for t in (*pair_grid(conf), -np.inf):
            stop = conf >= t
            if not rejects(np.where(stop, correct[:, k], correct[:, j]), q_ref, tol, level, test, order):
                break
            rule = CascadeRule((k, j), np.array([t])) if np.isfinite(t) else CascadeRule((k,), np.zeros(0))
            out.append((rule, float(costs[k] + (~stop).mean() * costs[j])))
        else:
            queue += [(i, k, level / len(cheaper(k))) for i in cheaper(k)]
    return out


# the ex-ante router's fixed lambda sequence, in units of the dearest stage's cost (decisions are invariant to
# scaling every cost and lambda together): from 500 x (the best estimate nearly always wins) down to 0.05 x
ANTE_GRID = np.geomspace(500.0, 0.05, 161)
# its share of the whole-data budget where the replay has ex-ante estimates (the pair paths keep the rest).
# Measured (3 seeds x 5-fold and 10 draws of 300 prompts on 1,500-question MMLU-Pro ladders and the report
# sets): the 3- and 4-stage ladders where the router beat the served rule by 2-10% now cost at or below it
# (4 stages 9.20 -> 8.48 against 8.82); the sets where the confidence pairs win pay 0-3% (GSM8K 5-fold
# 1.138 -> 1.143 x hindsight). Ex-ante pairs ("k alone when e_k >= t, else the reference"), tried first at
# the same share, reached 8.80 there and cost the confidence pairs more: this one path routes among all stages
ANTE_SHARE = 0.25


def ante_path(cal: Arrays, ref: int, tol: float, delta: float, test: str = "betting",
              order: np.ndarray | None = None) -> list[tuple[ModelRule, float]]:
    """Certified ex-ante routers (optistop.policy.ante_rule) tested on ALL of ``cal``: lambda walks down the
    fixed ``ANTE_GRID`` (x the dearest cost), each tested at level ``delta`` until the first failure. The
    rule reads only the prompt-only estimates, fitted elsewhere (the predictor), so like the pair paths it
    needs no fitting part. Returns (rule, mean cost on ``cal``); none without ex-ante estimates."""
    from optistop.offline.policy_fit import router_outcomes  # policy_fit imports this module

    if cal.ex_ante is None:
        return []
    lams = ANTE_GRID * float(cal.costs.max())
    rule0 = ante_rule(cal.costs, 1.0)
    q, c = router_outcomes(cal, rule0.answer, lams)   # the rule's own plan and arithmetic, every lambda
    q_ref = cal.correct[:, ref].astype(float)
    out: list[tuple[ModelRule, float]] = []
    for i, lam in enumerate(lams):
        if not rejects(q[i], q_ref, tol, delta, test, order):
            break
        out.append((ante_rule(cal.costs, float(lam)), float(c[i].mean())))
    return out


def stage_of(rule: object) -> int | None:
    """k if ``rule`` always runs stage k alone (fixed:k, or a pair path's "k alone"), else None."""
    if isinstance(rule, FixedRule):
        return rule.k
    if isinstance(rule, CascadeRule) and len(rule.stages) == 1:
        return int(rule.stages[0])
    return None


def single_stage_guard(best: tuple, singles: Sequence[tuple], cost: np.ndarray, stage_costs: np.ndarray,
                       confidence: float) -> tuple:
    """The chosen candidate ``best`` (a (family, param, rule, ...) tuple), or the cheapest of ``singles``
    (the certified single stages of every path; the reference stage always among them) where ``best``
    mixes stages and is not surely cheaper. ``cost``: best's per-prompt cost on the testing part.

    A rule that runs different stages on different prompts was picked for its mean cost on a few hundred
    prompts, and the cheapest of many looks cheaper there than it is (MMLU-Pro Qwen fitted on 300: 3 of 20
    draws served a cascade costing 10.2-10.5 on the traffic, dearer than the 10.0 of the reference stage it
    was certified against). A single stage costs the same on any traffic, so it keeps its place unless the
    rule's mean cost is below it by z(confidence) standard errors: "never dearer than a certified single
    stage", held at the confidence the quality promise is stated at."""
    if stage_of(best[2]) is not None:
        return best
    single = min(singles, key=lambda c: float(stage_costs[stage_of(c[2])]))
    se = float(np.std(cost, ddof=1)) / math.sqrt(len(cost)) if len(cost) > 1 else 0.0
    if float(np.mean(cost)) + float(norm.ppf(confidence)) * se < float(stage_costs[stage_of(single[2])]):
        return best
    return single
