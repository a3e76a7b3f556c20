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
- ``paper``: section 5.3 verbatim: stages in order; after stage i < n-1 stop iff conf_i >=
  1/(1+lam) (1 - 0.5 c_i / c_{i+1}); the last stage answers. Inverted in lam (ERRATA 5): reproduction.
- ``fixed:k``; ``random`` (stop after stage i w.p. 1/(n-i): a uniform stopping stage).
- ``threshold``: start stage s, stop at the first stage whose raw confidence clears its threshold; the
  replay's hindsight reference only, never served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

CLIP = 8.0  # logit(conf) is clipped to [-8, 8]: confidences of exactly 0 or 1 stay finite
POLICY_NAMES = ("optimal", "router", "paper", "fixed:<k>", "random")


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


class Policy(Protocol):
    name: str
    uses_ex_ante: bool

    def decide(self, s: State) -> Decision: ...


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.clip(np.log(p / (1.0 - p)), -CLIP, CLIP)


def run_mask(conf: np.ndarray) -> np.ndarray:
    """(N,) int bitmask of the stages run (bit k set iff conf[:, k] is observed)."""
    return (~np.isnan(conf)).astype(np.int64) @ (1 << np.arange(conf.shape[1], dtype=np.int64))


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
    cols = [np.ones(len(rows))]
    if use_ex_ante:
        assert s.ex_ante is not None
        cols += [logit(s.ex_ante[rows, k]) for k in range(n)]
    for i in S:
        c = s.conf[rows, i]
        cols += [logit(c), c]
    if use_agree:
        assert s.resp is not None
        for a in range(len(S)):
            for b in range(a + 1, len(S)):
                ra, rb = s.resp[rows, S[a]], s.resp[rows, S[b]]
                cols.append(((ra == rb) & (ra >= 0)).astype(float))
    return np.column_stack(cols)


def _empty(N: int) -> Decision:
    return Decision(np.zeros(N, bool), np.full(N, -1), np.full(N, -1), np.ones(N))


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
    ``router_only`` stops after the one stage it picks from the prompt (the router, same code path)."""

    n: int
    costs: np.ndarray
    lam: float
    use_ex_ante: bool
    use_agree: bool
    answer: dict[int, np.ndarray]                                  # mask -> (n, d) weights
    cont: dict[int, dict[int, tuple[np.ndarray, np.ndarray, float]]] = field(default_factory=dict)
    router_only: bool = False
    name: str = "optimal"

    @property
    def uses_ex_ante(self) -> bool:
        return self.use_ex_ante

    def q_values(self, s: State, rows: np.ndarray, mask: int, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """(len(rows), K) Q(S, k) for the allowed next stages k (forward only), and those k."""
        if self.router_only:
            if mask == 0:
                return self.costs[None, :] + self.lam * (1 - sigmoid(x @ self.answer[0].T)), list(range(self.n))
            return np.zeros((len(rows), 0)), []
        ks = sorted(self.cont.get(mask, {}))
        q = np.empty((len(rows), len(ks)))
        for i, k in enumerate(ks):
            w_q, w_c, cmax = self.cont[mask][k]
            q[:, i] = self.costs[k] + cmax * sigmoid(x @ w_c) + self.lam * (1 - sigmoid(x @ w_q))
        return q, ks

    def decide(self, s: State) -> Decision:
        N = s.conf.shape[0]
        d = _empty(N)
        masks = run_mask(s.conf)
        for mask in (int(m) for m in np.unique(masks)):
            rows = np.flatnonzero(masks == mask)
            x = features(s, rows, mask, self.use_ex_ante, self.use_agree)
            q, ks = self.q_values(s, rows, mask, x)
            if mask == 0:                                   # nothing run yet: run the best first stage
                d.next_stage[rows] = np.asarray(ks)[np.argmin(q, axis=1)]
                continue
            S = stages_of(mask, self.n)
            p = sigmoid(x @ self.answer[mask][S].T)
            best = np.asarray(S)[np.argmax(p, axis=1)]
            qmin = q.min(axis=1) if q.shape[1] else np.full(len(rows), np.inf)
            stop = self.lam * (1 - p.max(axis=1)) <= qmin
            d.stop[rows] = stop
            d.answer_stage[rows[stop]] = best[stop]
            if q.shape[1]:
                d.next_stage[rows[~stop]] = np.asarray(ks)[np.argmin(q[~stop], axis=1)]
            # stop iff lam (1 - p) <= min Q, i.e. p >= 1 - min Q / lam: the threshold the best answer met
            d.threshold[rows] = np.clip(1 - qmin / max(self.lam, 1e-12), 0.0, 1.0)
        return d


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

    def decide(self, s: State) -> Decision:
        N, n = s.conf.shape
        d = _empty(N)
        last = last_run(s.conf)
        d.next_stage[last < 0] = 0
        for i in range(n):
            rows = np.flatnonzero(last == i)
            th = paper_threshold(i, self.lam, self.costs) if i < n - 1 else 0.0
            p = sigmoid(self.platt[i, 0] * logit(s.conf[rows, i]) + self.platt[i, 1])
            stop = (p >= th) | (i == n - 1)
            d.stop[rows], d.threshold[rows] = stop, th
            d.answer_stage[rows[stop]] = i
            d.next_stage[rows[~stop]] = i + 1
        return d


@dataclass
class ThresholdRule:
    """Reference only (tuned in hindsight): start at ``start``, stop at the first stage k whose raw
    confidence >= thresholds[k]; the last stage always answers. Also the rule the online learner tunes."""

    start: int
    thresholds: np.ndarray
    name: str = "threshold"
    uses_ex_ante: bool = False

    def decide(self, s: State) -> Decision:
        N, n = s.conf.shape
        d = _empty(N)
        last = last_run(s.conf)
        d.next_stage[last < 0] = self.start
        rows = np.flatnonzero(last >= 0)
        k = last[rows]
        th = np.append(self.thresholds[: n - 1], -np.inf)[k]    # the last stage always answers
        stop = s.conf[rows, k] >= th
        d.stop[rows], d.threshold[rows] = stop, np.where(np.isfinite(th), th, 0.0)
        d.answer_stage[rows[stop]] = k[stop]
        d.next_stage[rows[~stop]] = k[~stop] + 1
        return d


@dataclass
class FixedRule:
    k: int
    name: str = "fixed"
    uses_ex_ante: bool = False

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
