"""One policy kernel on arrays: every stopping rule is ``decide(state) -> Decision`` over N prompts.

A served request is N = 1; the replay passes thousands; both call the same ``decide`` (``simulate`` is only
a loop that reveals the next stage's recorded confidence and calls ``decide`` again, so the backward
induction exists once, here). numpy only; no I/O.

State: ``conf`` (N, n) calibrated confidences, NaN for stages not run; ``ex_ante`` (N, n) prompt-only
estimates or None; ``resp`` (N, n) answer ids (equal ids = answers that agree; -1 = none) or None.
Costs c_k are paid for every stage run; the objective is J = E[costs paid + lam (1 - q)] with lam in
units of the cheapest stage's cost (paper/ERRATA.md, last section).

Rules (``POLICIES``; a served request names one, the replay evaluates all):
- ``optimal``: backward induction with a fitted model of later stages (``ModelRule``). Histories are the
  sets S of stages run, forward only (the first stage may be any stage, later ones may be skipped), so
  the class contains every ``fixed:k`` and every prompt-only router.
- ``router``: prompt only: before generating pick k = argmin_k c_k + lam (1 - P(correct_k | prompt)).
- ``ante``: the same with P the predictor's own ex-ante estimate e_k as it is (``ante_rule``; nothing fitted
  on calibration labels, so its lambda sequence is certified on every calibration prompt).
- ``paper``: section 5.3 verbatim: stages in order; after stage i < n-1 stop iff conf_i >=
  1/(1+lam) (1 - 0.5 c_i / c_{i+1}); the last stage answers. Inverted in lam (ERRATA 5): reproduction.
- ``fixed:k``; ``random`` (stop after stage i w.p. 1/(n-i): a uniform stopping stage).
- ``threshold``: start stage s, stop at the first stage whose raw confidence clears its threshold; the
  replay's hindsight reference only, never served.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import mul
from typing import NamedTuple, Protocol

import numpy as np

from optistop.logistic import sigmoid, sigmoid1

CLIP = 8.0  # logit(conf) is clipped to [-8, 8]: confidences of exactly 0 or 1 stay finite
POLICY_NAMES = ("optimal", "router", "ante", "paper", "fixed:<k>", "random")


@dataclass
class State:
    conf: np.ndarray                     # (N, n) float, NaN = not run
    ex_ante: np.ndarray | None = None    # (N, n) float in [0, 1]
    resp: np.ndarray | None = None       # (N, n) int, -1 = no answer / not run


@dataclass
class Decision:
    stop: np.ndarray          # (N,) bool
    next_stage: np.ndarray    # (N,) int, -1 when stopping
    answer_stage: np.ndarray  # (N,) int, -1 when continuing
    threshold: np.ndarray     # (N,) confidence the best answer needed to stop here (1.0 before any stage)


class One(NamedTuple):
    """A decision for one prompt, on Python scalars (the served case: no arrays to build or index)."""

    stop: bool
    next_stage: int      # -1 when stopping
    answer_stage: int    # -1 when continuing
    threshold: float


class Policy(Protocol):
    name: str
    uses_ex_ante: bool

    def decide(self, s: State) -> Decision: ...

    def decide_one(self, conf: Sequence[float], ex_ante: Sequence[float] | None,
                   resp: Sequence[int] | None) -> One:
        """``decide`` for one prompt: confidences (NaN = not run), ex-ante estimates, answer ids (-1 none)."""
        ...


def one_by_arrays(rule: Policy, conf: Sequence[float], ex_ante: Sequence[float] | None,
                  resp: Sequence[int] | None) -> One:
    """``decide_one`` through the rule's array ``decide`` (N = 1): for the rules that are not served often
    enough to need a scalar path of their own."""
    d = rule.decide(State(np.array([conf], dtype=float), None if ex_ante is None else np.array([ex_ante], dtype=float),
                          None if resp is None else np.array([resp], dtype=int)))
    return One(bool(d.stop[0]), int(d.next_stage[0]), int(d.answer_stage[0]), float(d.threshold[0]))


def _clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    # np.clip's Python-level dispatch costs more than the arithmetic on the few values a served decision
    # has; minimum(maximum()) is the same operation (NaN passes through both)
    return np.minimum(np.maximum(x, lo), hi)


def logit(p: np.ndarray) -> np.ndarray:
    p = _clip(p, 1e-6, 1.0 - 1e-6)
    return _clip(np.log(p / (1.0 - p)), -CLIP, CLIP)


_BITS = 1 << np.arange(16, dtype=np.int64)


def run_mask(conf: np.ndarray) -> np.ndarray:
    """(N,) int bitmask of the stages run (bit k set iff conf[:, k] is observed)."""
    return (~np.isnan(conf)) @ _BITS[:conf.shape[1]]


def stages_of(mask: int, n: int) -> list[int]:
    return [k for k in range(n) if mask >> k & 1]


def last_run(conf: np.ndarray) -> np.ndarray:
    """(N,) index of the last stage run, -1 when none."""
    ran = ~np.isnan(conf)
    n = conf.shape[1]
    return np.where(ran.any(1), n - 1 - np.argmax(ran[:, ::-1], axis=1), -1)


def features(s: State, rows: np.ndarray, mask: int, use_ex_ante: bool, use_agree: bool) -> np.ndarray:
    """x_S for history S = mask: [1, logit r_k for every k (with ex-ante), (logit conf_i, conf_i) for i in S,
    1[answers of i and i' agree] for pairs in S (with answers)]. Both logit and raw confidence, so one
    logistic layer can bend a miscalibrated score (over-confidence) back into a probability."""
    n = s.conf.shape[1]
    S = stages_of(mask, n)
    pairs = [(a, b) for i, a in enumerate(S) for b in S[i + 1:]] if use_agree else []
    x = np.empty((len(rows), 1 + (n if use_ex_ante else 0) + 2 * len(S) + len(pairs)))
    x[:, 0] = 1.0
    j = 1
    if use_ex_ante:
        assert s.ex_ante is not None
        x[:, 1:1 + n] = logit(s.ex_ante[rows])
        j += n
    if S:
        c = s.conf[rows][:, S]
        x[:, j:j + 2 * len(S):2] = logit(c)
        x[:, j + 1:j + 2 * len(S):2] = c
        j += 2 * len(S)
    if pairs:
        assert s.resp is not None
        r = s.resp[rows]
        for a, b in pairs:
            x[:, j] = (r[:, a] == r[:, b]) & (r[:, a] >= 0)
            j += 1
    return x


def _empty(N: int) -> Decision:
    return Decision(np.zeros(N, bool), np.full(N, -1), np.full(N, -1), np.ones(N))


def _stop_above(conf: np.ndarray, start: int, thresholds: np.ndarray,
                score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Decision:
    """The threshold rules' decision: a prompt with no stage run starts at ``start``; one whose last run
    stage is k stops there when ``score(rows, k) >= thresholds[k]``, else goes on to k + 1. The last stage
    always answers; its recorded threshold, like an infinite one, is 0."""
    N, n = conf.shape
    d = _empty(N)
    last = last_run(conf)
    d.next_stage[last < 0] = start
    rows = np.flatnonzero(last >= 0)
    k = last[rows]
    th = np.append(np.asarray(thresholds, dtype=float)[: n - 1], 0.0)[k]
    stop = (score(rows, k) >= th) | (k == n - 1)
    d.stop[rows], d.threshold[rows] = stop, np.where(np.isfinite(th), th, 0.0)
    d.answer_stage[rows[stop]] = k[stop]
    d.next_stage[rows[~stop]] = k[~stop] + 1
    return d


@dataclass(frozen=True)
class _Plan:
    """One history's models stacked into one matrix, so a decision is one matmul and one sigmoid."""

    S: np.ndarray      # stages run
    ks: np.ndarray     # allowed next stages (K)
    w: np.ndarray      # (d, |S| + 2K): answer models of S, then w_q of each k, then w_c of each k
    cost: np.ndarray   # (K,) c_k
    cmax: np.ndarray   # (K,)
    cols: tuple[tuple[float, ...], ...]   # the columns of w as Python floats (decide_one), and the rest:
    S_list: list[int]
    ks_list: list[int]
    cost_list: list[float]
    cmax_list: list[float]


@dataclass
class ModelRule:
    """Backward induction over histories S with a fitted model (optistop.offline.policy_fit):

        V(S, x_S) = min( lam (1 - max_{j in S} P(correct_j | x_S)),  min_{k > max S} Q(S, k; x_S) )
        Q(S, k; x_S) = c_k + E[costs after S+k | x_S] + lam (1 - E[q_final | x_S])

    P(correct_j | x_S) is ``answer[S][j]``, logistic in x_S; for j not in S it is the model of later stages,
    which sees the confidences and agreement so far (hard prompts stay hard for every stage). Q is
    fitted-Q: both expectations are logistic regressions on x_S of the *realised* outcomes of running k and
    then following this rule on calibration prompts (``cont[S][k] = (w_q, w_c, cmax)``), fitted from the
    deepest histories back to S = {}: the law of future confidences is learned, not assumed independent.
    ``router_only`` stops after the one stage it picks from the prompt (the router, same code path): its
    Q(0, k) = c_k + lam (1 - P(correct_k | prompt))."""

    n: int
    costs: np.ndarray
    lam: float
    use_ex_ante: bool
    use_agree: bool
    answer: dict[int, np.ndarray]                                  # mask -> (n, d) weights
    cont: dict[int, dict[int, tuple[np.ndarray, np.ndarray, float]]] = field(default_factory=dict)
    router_only: bool = False
    name: str = "optimal"
    _plans: dict[int, tuple[tuple[int, int, bool], _Plan]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def uses_ex_ante(self) -> bool:
        return self.use_ex_ante

    def plan(self, mask: int) -> _Plan:
        """The stacked models of history ``mask``, built on first use and rebuilt when ``cont[mask]`` is
        replaced or grows (policy_fit fills ``cont`` while it simulates the rule, deepest histories first)."""
        cont = self.cont.get(mask, {})
        sig = (id(cont), len(cont), self.router_only)
        hit = self._plans.get(mask)
        if hit is not None and hit[0] == sig:
            return hit[1]
        S = stages_of(mask, self.n)
        answer = self.answer[mask]
        d = answer.shape[1]
        if self.router_only:
            ks = list(range(self.n)) if mask == 0 else []
            parts = [(answer[k], np.zeros(d), 0.0) for k in ks]
        else:
            ks = sorted(cont)
            parts = [cont[k] for k in ks]
        w = np.column_stack([*(answer[j] for j in S), *(p[0] for p in parts), *(p[1] for p in parts)]) \
            if S or ks else np.zeros((d, 0))
        cost, cmax = self.costs[ks].astype(float), np.asarray([p[2] for p in parts], dtype=float)
        out = _Plan(np.asarray(S, dtype=int), np.asarray(ks, dtype=int), w, cost, cmax,
                    tuple(tuple(col) for col in w.T.tolist()), list(S), list(ks), cost.tolist(), cmax.tolist())
        self._plans[mask] = (sig, out)
        return out

    def decide(self, s: State) -> Decision:
        N = s.conf.shape[0]
        if N == 1:
            o = self.decide_one(s.conf[0].tolist(), None if s.ex_ante is None else s.ex_ante[0].tolist(),
                                None if s.resp is None else s.resp[0].tolist())
            return Decision(np.array([o.stop]), np.array([o.next_stage]), np.array([o.answer_stage]),
                            np.array([o.threshold]))
        d = _empty(N)
        masks = run_mask(s.conf)
        for mask in (int(m) for m in np.unique(masks)):
            rows = np.flatnonzero(masks == mask)
            pl = self.plan(mask)
            nS, K = len(pl.S), len(pl.ks)
            z = sigmoid(features(s, rows, mask, self.use_ex_ante, self.use_agree) @ pl.w)
            q = pl.cost + pl.cmax * z[:, nS + K:] + self.lam * (1 - z[:, nS:nS + K])
            if mask == 0:                                   # nothing run yet: run the best first stage
                d.next_stage[rows] = pl.ks[np.argmin(q, axis=1)]
                continue
            p = z[:, :nS]
            qmin = q.min(axis=1) if K else np.full(len(rows), np.inf)
            stop = self.lam * (1 - p.max(axis=1)) <= qmin
            d.stop[rows] = stop
            d.answer_stage[rows[stop]] = pl.S[np.argmax(p[stop], axis=1)]
            if K:
                d.next_stage[rows[~stop]] = pl.ks[np.argmin(q[~stop], axis=1)]
            # stop iff lam (1 - p) <= min Q, i.e. p >= 1 - min Q / lam: the threshold the best answer met;
            # NaN when no stage is left to escalate to (the answer stands whatever p: no threshold applied,
            # where 0.0 read as "a confidence of 0 was enough")
            d.threshold[rows] = np.clip(1 - qmin / max(self.lam, 1e-12), 0.0, 1.0) if K else np.nan
        return d

    def decide_one(self, conf: Sequence[float], ex_ante: Sequence[float] | None,
                   resp: Sequence[int] | None) -> One:
        """``decide`` for one prompt (the served case) on Python floats: the same plan, features and
        arithmetic as the array path (tests/unit/test_policy.py: equal decisions on random states, for
        every rule of both committed artifacts). In the server each decision follows a stage call that
        leaves the CPU caches cold, and there numpy's per-call dispatch, not arithmetic, was most of a
        decision's time (first call 157 us, repeated at once 63 us, measured inside the cascade); building
        and indexing the (1,)-arrays of a ``Decision`` alone cost ~60 us of that."""
        mask = sum(1 << k for k, c in enumerate(conf) if c == c)   # NaN != NaN: not run
        pl = self.plan(mask)
        S = pl.S_list
        x = [1.0]
        if self.use_ex_ante:
            assert ex_ante is not None
            x += [_logit1(r) for r in ex_ante]
        for i in S:
            x += [_logit1(conf[i]), conf[i]]
        if self.use_agree and len(S) > 1:
            assert resp is not None
            x += [float(resp[a] == resp[b] and resp[a] >= 0) for j, a in enumerate(S) for b in S[j + 1:]]
        z = [sigmoid1(sum(map(mul, x, col))) for col in pl.cols]   # the generator's sum, in C
        nS, ks = len(S), pl.ks_list
        K = len(ks)
        q = [c + m * zc + self.lam * (1 - zq)
             for c, m, zq, zc in zip(pl.cost_list, pl.cmax_list, z[nS:nS + K], z[nS + K:])]
        if mask == 0:                                       # nothing run yet: run the best first stage
            return One(False, ks[min(range(K), key=q.__getitem__)], -1, 1.0)
        p = z[:nS]
        qmin = min(q) if K else math.inf
        best = max(range(nS), key=p.__getitem__)
        th = min(max(1 - qmin / max(self.lam, 1e-12), 0.0), 1.0) if K else math.nan   # as in decide()
        if self.lam * (1 - p[best]) <= qmin:
            return One(True, -1, S[best], th)
        return One(False, ks[min(range(K), key=q.__getitem__)], -1, th)


def ante_rule(costs: np.ndarray, lam: float) -> ModelRule:
    """The ex-ante router ("ante"): the one stage argmin_k c_k + lam (1 - e_k), e_k the predictor's own
    prompt-only estimate that stage k answers right, read as it is (no model fitted on calibration labels,
    so a fixed lambda sequence can be certified on every calibration prompt: optistop.offline.ltt.ante_path).
    A router whose answer model for the empty history is the identity on the logit(e_k) features."""
    n = len(costs)
    answer = {m: np.zeros((n, 1 + n + 2 * bin(m).count("1"))) for m in range(1 << n)}   # features' width
    answer[0][np.arange(n), 1 + np.arange(n)] = 1.0
    return ModelRule(n, np.asarray(costs, float), float(lam), True, False, answer, {}, router_only=True,
                     name="ante")


def _logit1(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return min(max(math.log(p / (1.0 - p)), -CLIP), CLIP)


def paper_threshold(stage: int, lam: float, costs: Sequence[float]) -> float:
    """compute_threshold of section 5.3: 1/(1+lam) * (1 - 0.5 / (c[i+1] / c[i]))."""
    return 1.0 / (1.0 + lam) * (1.0 - 0.5 / (costs[stage + 1] / costs[stage]))


@dataclass
class PaperRule:
    """The paper's rule on confidences mapped by per-stage Platt scaling (a, b): identity (1, 0) when the
    confidences are already calibrated, as the served predictor's are."""

    costs: np.ndarray
    lam: float
    platt: np.ndarray            # (n, 2)
    name: str = "paper"
    uses_ex_ante: bool = False

    decide_one = one_by_arrays

    def decide(self, s: State) -> Decision:
        n = s.conf.shape[1]
        th = np.array([paper_threshold(i, self.lam, self.costs) for i in range(n - 1)])
        return _stop_above(s.conf, 0, th, lambda rows, k: sigmoid(
            self.platt[k, 0] * logit(s.conf[rows, k]) + self.platt[k, 1]))


@dataclass
class ThresholdRule:
    """Reference only (tuned in hindsight): start at ``start``, stop at the first stage k whose raw
    confidence >= thresholds[k]; the last stage always answers. Also the rule the online learner tunes."""

    start: int
    thresholds: np.ndarray
    name: str = "threshold"
    uses_ex_ante: bool = False

    decide_one = one_by_arrays

    def decide(self, s: State) -> Decision:
        return _stop_above(s.conf, self.start, self.thresholds, lambda rows, k: s.conf[rows, k])


@dataclass
class FixedRule:
    k: int
    name: str = "fixed"
    uses_ex_ante: bool = False

    decide_one = one_by_arrays

    def decide(self, s: State) -> Decision:
        d = _empty(s.conf.shape[0])
        ran = ~np.isnan(s.conf).all(axis=1)
        d.stop[:] = ran
        d.next_stage[~ran] = self.k
        d.answer_stage[ran] = self.k
        d.threshold[ran] = 0.0
        return d


@dataclass
class RandomRule:
    seed: int = 0
    name: str = "random"
    uses_ex_ante: bool = False

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    decide_one = one_by_arrays

    def decide(self, s: State) -> Decision:
        N, n = s.conf.shape
        d = _empty(N)
        last = last_run(s.conf)
        u = self._rng.random(N)
        stop = (last >= 0) & ((last == n - 1) | (u < 1.0 / np.maximum(n - last, 1)))
        d.stop[:], d.threshold[:] = stop, 0.0
        d.answer_stage[stop] = last[stop]
        d.next_stage[~stop] = last[~stop] + 1
        return d


def simulate(rule: Policy, conf: np.ndarray, ex_ante: np.ndarray | None = None,
             resp: np.ndarray | None = None, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full episodes on complete replay arrays: reveal conf[:, k] when the rule runs k and call ``decide``
    again until every prompt stopped. Returns (ran (N, n) bool, answer (N,) int); at most n + 1 calls.
    ``start`` (N, n) bool: stages already revealed (fitted-Q rolls out from a history)."""
    N, n = conf.shape
    obs = np.where(start, conf, np.nan) if start is not None else np.full((N, n), np.nan)
    r_obs = None if resp is None else (np.where(start, resp, -1) if start is not None else np.full((N, n), -1))
    answer = np.full(N, -1)
    active = np.arange(N)
    for _ in range(n + 1):
        if active.size == 0:
            break
        d = rule.decide(State(obs[active], None if ex_ante is None else ex_ante[active],
                              None if r_obs is None else r_obs[active]))
        answer[active[d.stop]] = d.answer_stage[d.stop]
        go, k = active[~d.stop], d.next_stage[~d.stop]
        if np.any(~np.isnan(obs[go, k])):
            raise RuntimeError(f"{rule.name}: chose a stage that already ran")
        obs[go, k] = conf[go, k]
        if r_obs is not None and resp is not None:
            r_obs[go, k] = resp[go, k]
        active = go
    if active.size:
        raise RuntimeError(f"{rule.name}: {active.size} prompts did not stop within {n} stages")
    return ~np.isnan(obs), answer
