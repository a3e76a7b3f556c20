"""Stopping rules for the cascade: pure functions of confidences, costs and lambda (no I/O).

Units. ``costs[k]`` is paid whenever stage k runs (a cascade pays for every stage it runs). ``lam`` is the
price of one unit of quality in the same cost units (cascade.toml: units of the cheapest stage's cost).
The objective of every rule here is J = E[costs paid + lam * (1 - q)], q = 1 if the returned answer is
acceptable (paper/ERRATA.md, last section).

Policies (``make_policy``):

- ``paper``: the paper's sections 5.2/5.3 verbatim. Stages run in order; at stage i < n-1 it stops when
  the stage's confidence >= 1/(1+lam) * (1 - 0.5 * c_i / c_{i+1}); the last stage always answers. This is
  inverted in lam (ERRATA item 5): a higher lam lowers the thresholds and buys *less* quality. The paper
  feeds a prompt-only score (predictor.predict(prompt, stage=i)); here it gets whatever calibrated
  confidence the serving loop reports for the stage just run, which can only help it.
- ``optimal``: backward induction (see ``OptimalPolicy``). May skip stages, returns the best answer so far.
- ``fixed:k``: runs stage k only.
- ``random``: stops after each stage i with probability 1/(n-i), which makes the stopping stage uniform
  over 0..n-1 (stages run in order) with no per-request state. Seeded.
- ``oracle`` (cheapest correct stage) needs labels, so it lives in the offline replay, not here.
"""

from __future__ import annotations

import random as _random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

POLICY_NAMES = ("optimal", "paper", "fixed:<k>", "random", "oracle")
_SERVING_NAMES = "optimal, paper, fixed:0..{last}, random"


@dataclass(frozen=True)
class Decision:
    stop: bool
    next_stage: int | None     # stage to run next when stop is False (optimal may skip stages)
    answer_stage: int | None   # already-run stage whose answer to return when stop is True
    threshold: float           # confidence the best answer so far needed to stop here (0.0 if forced)


class Policy(Protocol):
    name: str
    needs_ex_ante: bool

    def decide(self, run: Sequence[tuple[int, float]], ex_ante: Sequence[float],
               costs: Sequence[float], lam: float) -> Decision: ...


def _check(run: Sequence[tuple[int, float]], costs: Sequence[float], lam: float) -> None:
    if not costs:
        raise ValueError("costs: at least one stage is required")
    if not (lam >= 0 and np.isfinite(lam)):
        raise ValueError(f"lambda must be finite and >= 0, got {lam!r}")
    for k, p in run:
        if not 0 <= k < len(costs):
            raise ValueError(f"stage index {k} out of range 0..{len(costs) - 1}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"confidence of stage {k} must be in [0, 1], got {p!r}")


def _best(run: Sequence[tuple[int, float]]) -> tuple[int, float]:
    """(stage, confidence) of the most confident answer so far; ties go to the later-run stage."""
    best_k, best_p = run[0]
    for k, p in run[1:]:
        if p >= best_p:
            best_k, best_p = k, p
    return best_k, best_p


# ---------------------------------------------------------------- paper (sections 5.2 / 5.3 verbatim)

def paper_threshold(stage: int, lam: float, costs: Sequence[float]) -> float:
    """compute_threshold of section 5.3: 1/(1+lam) * (1 - 0.5 / (c[i+1] / c[i]))."""
    base_threshold = 1.0 / (1.0 + lam)
    cost_ratio = costs[stage + 1] / costs[stage]
    return base_threshold * (1.0 - 0.5 / cost_ratio)


class PaperPolicy:
    name = "paper"
    needs_ex_ante = False

    def decide(self, run: Sequence[tuple[int, float]], ex_ante: Sequence[float],
               costs: Sequence[float], lam: float) -> Decision:
        _check(run, costs, lam)
        if not run:
            return Decision(False, 0, None, 1.0)
        i, conf = run[-1]
        if i >= len(costs) - 1:
            return Decision(True, None, i, 0.0)
        theta = paper_threshold(i, lam, costs)
        if conf >= theta:
            return Decision(True, None, i, theta)
        return Decision(False, i + 1, None, theta)


# ---------------------------------------------------------------- optimal (backward induction)

def _outcomes(r: float, s: float) -> tuple[tuple[float, float], ...]:
    """Three-point law of a stage's future post-hoc confidence p given its ex-ante estimate r.

    (value, probability) pairs {0: s(1-r), r: 1-s, 1: s r}: mean r, variance s r (1-r)."""
    return ((0.0, s * (1.0 - r)), (r, 1.0 - s), (1.0, s * r))


def _value(m: float, unrun: tuple[tuple[float, float, float], ...], lam: float) -> float:
    """V(h): expected cost-to-go with best confidence m and the (cost, r, s) of the stages still allowed."""
    best = lam * (1.0 - m)
    for j, (c, r, s) in enumerate(unrun):
        if c >= best:          # running it costs more than stopping now: cannot win
            continue
        rest = unrun[j + 1:]
        ev = sum(w * _value(max(m, p), rest, lam) for p, w in _outcomes(r, s) if w > 0.0)
        best = min(best, c + ev)
    return best


def _continue_value(m: float, unrun: tuple[tuple[float, float, float], ...], lam: float
                    ) -> tuple[float, int]:
    """min over next stage k of c_k + E V(h + y_k), and the position in ``unrun`` of the best k."""
    best, arg = float("inf"), -1
    for j, (c, r, s) in enumerate(unrun):
        rest = unrun[j + 1:]
        ev = sum(w * _value(max(m, p), rest, lam) for p, w in _outcomes(r, s) if w > 0.0)
        if c + ev < best:
            best, arg = c + ev, j
    return best, arg


def _stop_threshold(unrun: tuple[tuple[float, float, float], ...], lam: float) -> float:
    """Smallest best-so-far confidence m at which stopping is optimal (bisection; the gap
    continue(m) - stop(m) is nondecreasing in m because V has slope in [-lam, 0] in m)."""
    if not unrun:
        return 0.0
    gap = lambda m: _continue_value(m, unrun, lam)[0] - lam * (1.0 - m)
    if gap(0.0) >= 0.0:
        return 0.0
    lo, hi = 0.0, 1.0          # gap(1) = min c_k > 0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if gap(mid) >= 0.0:
            hi = mid
        else:
            lo = mid
    return hi


class OptimalPolicy:
    """Backward induction on J = E[costs paid + lam (1 - q)] (paper/ERRATA.md, last section).

    State h: the stages run so far with calibrated post-hoc confidences p_j, so m = max_j p_j is the
    probability that the best answer so far is acceptable; ex-ante estimates r_k for stages not run.

        V(h) = min( lam (1 - m),  min_{k allowed} [ c_k + E V(h + y_k) ] )

    Stop when the first term wins and return argmax_j p_j; otherwise run the minimising k.

    Approximations, stated plainly:
    1. E V(h + y_k) needs the law of p_k, the post-hoc confidence stage k will get once run. Calibration
       gives its mean, E[p_k | prompt] = r_k. We use a three-point law with that mean,
       p_k in {0, r_k, 1} with probabilities {s_k (1 - r_k), 1 - s_k, s_k r_k}, variance s_k r_k (1 - r_k).
       The resolution s_k in [0, 1] is the share of the outcome's Bernoulli variance that the post-hoc
       confidence resolves, s_k = E[(p_k - r_k)^2] / E[r_k (1 - r_k)] (the replay fits it on training
       data). s_k = 0 (default) is certainty-equivalence: after the last-but-one stage the rule is then
       exactly ERRATA's "stop iff max p >= r_n - c_n / lam". s_k = 1 is perfect information.
    2. Outcomes of different stages are treated as independent given the prompt: r_k is not updated by
       what earlier stages returned, and p_j of a run stage is not updated by later stages' answers.
    3. Stages are only run forward: after stage j, the allowed k are those after the last stage run (the
       policy may skip stages, including the first, but never goes back to a cheaper stage it passed;
       under approximation 2 going back would be overvalued).

    Because V(h) has slope in [-lam, 0] in m, stopping is optimal exactly when m >= theta(h); theta is
    unitless, lies in [0, 1), and never falls as lam rises (costs weigh less against quality). With
    lam < min c_k of the allowed stages, stopping always wins (it costs at most lam).
    """

    name = "optimal"
    needs_ex_ante = True

    def __init__(self, resolution: float | Sequence[float] = 0.0) -> None:
        self.resolution = resolution

    def _s(self, k: int) -> float:
        s = self.resolution
        v = float(s) if isinstance(s, (int, float)) else float(s[k])
        return min(max(v, 0.0), 1.0)

    def _unrun(self, after: int, ex_ante: Sequence[float], costs: Sequence[float]
               ) -> tuple[tuple[float, float, float], ...]:
        return tuple((float(costs[k]), min(max(float(ex_ante[k]), 0.0), 1.0), self._s(k))
                     for k in range(after + 1, len(costs)))

    def threshold(self, after: int, ex_ante: Sequence[float], costs: Sequence[float], lam: float) -> float:
        """theta after the last run stage ``after``: stop iff best confidence so far >= theta."""
        return _stop_threshold(self._unrun(after, ex_ante, costs), lam)

    def decide(self, run: Sequence[tuple[int, float]], ex_ante: Sequence[float],
               costs: Sequence[float], lam: float) -> Decision:
        _check(run, costs, lam)
        if len(ex_ante) != len(costs):
            raise ValueError(f"optimal needs one ex-ante estimate per stage: got {len(ex_ante)} for "
                             f"{len(costs)} stages")
        if not run:
            unrun = self._unrun(-1, ex_ante, costs)
            _, j = _continue_value(0.0, unrun, lam)
            return Decision(False, j, None, 1.0)
        last = max(k for k, _ in run)
        best_k, m = _best(run)
        unrun = self._unrun(last, ex_ante, costs)
        if not unrun:
            return Decision(True, None, best_k, 0.0)
        theta = _stop_threshold(unrun, lam)
        cont, j = _continue_value(m, unrun, lam)
        if lam * (1.0 - m) <= cont:
            return Decision(True, None, best_k, theta)
        return Decision(False, last + 1 + j, None, theta)


# ---------------------------------------------------------------- baselines

class FixedPolicy:
    needs_ex_ante = False

    def __init__(self, stage: int) -> None:
        self.stage = stage
        self.name = f"fixed:{stage}"

    def decide(self, run: Sequence[tuple[int, float]], ex_ante: Sequence[float],
               costs: Sequence[float], lam: float) -> Decision:
        _check(run, costs, lam)
        if not run:
            return Decision(False, self.stage, None, 1.0)
        return Decision(True, None, run[-1][0], 0.0)


class RandomPolicy:
    name = "random"
    needs_ex_ante = False

    def __init__(self, seed: int = 0) -> None:
        self._rng = _random.Random(seed)
        self._lock = threading.Lock()

    def decide(self, run: Sequence[tuple[int, float]], ex_ante: Sequence[float],
               costs: Sequence[float], lam: float) -> Decision:
        _check(run, costs, lam)
        if not run:
            return Decision(False, 0, None, 1.0)
        i, n = run[-1][0], len(costs)
        if i >= n - 1:
            return Decision(True, None, i, 0.0)
        with self._lock:
            u = self._rng.random()
        if u < 1.0 / (n - i):
            return Decision(True, None, i, 0.0)
        return Decision(False, i + 1, None, 0.0)


def make_policy(name: str, n_stages: int, seed: int = 0, *,
                resolution: float | Sequence[float] = 0.0) -> Policy:
    """Build a serving policy by name; ValueError (one line, naming the valid choices) otherwise."""
    valid = _SERVING_NAMES.format(last=n_stages - 1)
    if n_stages < 1:
        raise ValueError(f"n_stages must be >= 1, got {n_stages}")
    if name == "optimal":
        return OptimalPolicy(resolution)
    if name == "paper":
        return PaperPolicy()
    if name == "random":
        return RandomPolicy(seed)
    if name == "oracle":
        raise ValueError(f"policy 'oracle' needs correctness labels and exists only in the offline replay; "
                         f"valid: {valid}")
    if isinstance(name, str) and name.startswith("fixed:"):
        raw = name[len("fixed:"):]
        if raw.isdigit() and int(raw) < n_stages:
            return FixedPolicy(int(raw))
        raise ValueError(f"bad stage in policy {name!r}: fixed:<k> needs k in 0..{n_stages - 1}")
    raise ValueError(f"unknown policy {name!r}; valid: {valid}")


# ---------------------------------------------------------------- helpers for plots

def paper_thresholds(lams: Sequence[float], costs: Sequence[float]) -> np.ndarray:
    """(len(lams), n-1): the paper's threshold at each non-final stage, per lambda."""
    return np.array([[paper_threshold(i, lam, costs) for i in range(len(costs) - 1)] for lam in lams])


def optimal_thresholds(lams: Sequence[float], costs: Sequence[float], ex_ante: Sequence[float],
                       resolution: float | Sequence[float] = 0.0) -> np.ndarray:
    """(len(lams), n-1): optimal theta after each non-final stage (stages run in order so far)."""
    pol = OptimalPolicy(resolution)
    return np.array([[pol.threshold(i, ex_ante, costs, lam) for i in range(len(costs) - 1)]
                     for lam in lams])
