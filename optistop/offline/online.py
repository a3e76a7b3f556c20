"""Online learning of the stopping thresholds, and its regret (paper section 4.2, ERRATA item 7).

Run by `make report` (optistop.report.build) on each data set's cross-fitted confidences.

Class of policies: stage-order threshold rules. Stages run in order; at stage i < n-1 the rule stops and
returns that stage's answer when its calibrated post-hoc confidence >= theta_i; the last stage always
answers. theta ranges over a grid (``GRID`` per stage, so K = |GRID|^(n-1) rules). Loss of a rule on a
prompt: costs of the stages it ran + lam * (1 - q), divided by sum(costs) + lam so that it lies in [0, 1].

Learner: exponential weights (Hedge) over the K rules, anytime step size; its loss is the weighted mean
loss of the rules (the expectation over its own random choice of rule).

Feedback models (stated, because the regret means nothing without them):
- ``full``: after each request the grader's verdict on *every* stage's answer is observed, as if all
  stages were logged for free. Full information: Hedge's expected regret is O(sqrt(T log K)).
- ``explore``: with probability eps_t = min(1, t^(-1/3)) the request also runs every stage it did not
  run (that extra cost is charged to the learner) and the grader's verdicts on all stages are observed;
  otherwise nothing is learnt. Updates are importance-weighted (1/eps_t). This is label-efficient
  prediction: regret O(T^(2/3) (log K)^(1/3)), and no schedule does better in the worst case.

Comparator: the best single rule of the class in hindsight on the same stream (the same prompts, in
the same order). Regret(T) = learner's cumulative loss - the comparator's, over the first T prompts.
Streams: T prompts drawn i.i.d. (with replacement) from a data set's held-out confidences; averaged
over seeds. A fitted c * sqrt(T) log T curve is reported next to a fitted power law c * T^a.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from optistop import policy as K

GRID = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 21), 3))


def rule_outcomes(P: np.ndarray, correct: np.ndarray, costs: Sequence[float], lam: float,
                  grid: Sequence[float] = GRID) -> tuple[list[tuple[float, ...]], np.ndarray, np.ndarray]:
    """Every rule's normalised loss (N, K) and its extra exploration cost (N, K), also normalised."""
    N, n = P.shape
    c = np.asarray(costs, float)
    scale = c.sum() + lam
    rules = list(itertools.product(grid, repeat=n - 1))
    loss = np.zeros((N, len(rules)))
    extra = np.zeros((N, len(rules)))
    for j, th in enumerate(rules):
        # the kernel's threshold cascade from stage 0 (one implementation of the stage-order loop)
        ran, stop = K.simulate(K.ThresholdRule(0, np.asarray(th, float)), P)
        q = correct[np.arange(N), stop]
        paid = ran.astype(float) @ c
        loss[:, j] = (paid + lam * (1.0 - q)) / scale
        extra[:, j] = (c.sum() - paid) / scale
    return rules, loss, extra


def stream_regret(loss: np.ndarray, extra: np.ndarray, T: int, feedback: str, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(regret after each of the T rounds, learner's final weights) for one seeded stream."""
    if feedback not in ("full", "explore"):
        raise ValueError(f"unknown feedback {feedback!r}; valid: full, explore")
    rng = np.random.default_rng(seed)
    N, K = loss.shape
    order = rng.integers(0, N, T)
    u = rng.random(T)
    est = np.zeros(K)              # cumulative (estimated) loss per rule
    learner = np.zeros(T)
    logk = math.log(K)
    for t in range(T):
        eps = 1.0 if feedback == "full" else min(1.0, (t + 1) ** (-1.0 / 3.0))
        eta = math.sqrt(8.0 * logk / (t + 1)) if feedback == "full" else math.sqrt(eps * logk / (t + 1))
        z = -eta * (est - est.min())
        w = np.exp(z)
        w /= w.sum()
        row = loss[order[t]]
        explored = u[t] < eps
        learner[t] = w @ row + (w @ extra[order[t]] if explored and feedback == "explore" else 0.0)
        if feedback == "full":
            est += row
        elif explored:
            est += row / eps
    best = np.cumsum(loss[order], axis=0).min(axis=1)
    return np.cumsum(learner) - best, w


def fit_curves(t: np.ndarray, r: np.ndarray) -> dict:
    """Least squares c * sqrt(T) log T through the origin, and a power law c * T^a (log-log)."""
    t, r = np.asarray(t, float), np.asarray(r, float)
    g = np.sqrt(t) * np.log(t)
    c = float((r @ g) / (g @ g))
    ss = float(((r - r.mean()) ** 2).sum()) or 1.0
    out = {"sqrtT_logT": {"c": c, "r2": 1.0 - float(((r - c * g) ** 2).sum()) / ss}}
    pos = r > 0
    if pos.sum() >= 2:
        a, b = np.polyfit(np.log(t[pos]), np.log(r[pos]), 1)
        pred = np.exp(b) * t ** a
        out["power"] = {"c": float(np.exp(b)), "a": float(a), "r2": 1.0 - float(((r - pred) ** 2).sum()) / ss}
    return out


def regret_experiment(P: np.ndarray, correct: np.ndarray, costs: Sequence[float], lam: float,
                      T: int = 20000, seeds: int = 8, feedbacks: Sequence[str] = ("full", "explore"),
                      points: int = 24, grid: Sequence[float] = GRID) -> dict:
    """Regret curves (mean and sd over seeds) at ``points`` horizons, with fitted curves."""
    rules, loss, extra = rule_outcomes(P, correct, costs, lam, grid)
    ts = np.unique(np.geomspace(50, T, points).astype(int))
    out: dict = {"T": ts.tolist(), "K": len(rules), "lam": lam, "costs": list(map(float, costs)),
                 "seeds": seeds, "n_prompts": int(len(P)), "grid": list(grid), "loss_scale": float(sum(costs) + lam),
                 "best_rule_in_expectation": list(rules[int(np.argmin(loss.mean(axis=0)))]), "feedback": {}}
    for fb in feedbacks:
        curves = np.stack([stream_regret(loss, extra, T, fb, 7919 * s + 1)[0][ts - 1] for s in range(seeds)])
        mean = curves.mean(axis=0)
        out["feedback"][fb] = {"regret_mean": mean.tolist(), "regret_sd": curves.std(axis=0).tolist(),
                               "regret_per_round_final": float(mean[-1] / T), "fit": fit_curves(ts, mean)}
    return out
