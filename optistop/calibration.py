"""Post-hoc calibration of raw predictor scores, per stage and per mode (post-hoc vs ex-ante).

A calibrator is a plain JSON-able dict, stored in the predictor's sidecar and applied by the serving code:

    {"method": "identity"}
    {"method": "temperature", "t": T}          p' = sigmoid(logit(p) / T)
    {"method": "platt", "a": a, "b": b}         p' = sigmoid(a * logit(p) + b)
    {"method": "isotonic", "x": [...], "y": [...]}   p' = np.interp(p, x, y)   (x strictly increasing)

Every calibrated probability is clipped to [P_MIN, 1 - P_MIN]: finite data never justifies certainty,
and a stopping rule fed 0 or 1 would treat a stage as infallible or useless.
``select`` picks the method by k-fold cross-validated Brier score on the validation split (ties go to the
simpler method), then refits it on the whole split. Applying is numpy only (it runs inside Triton);
fitting uses optistop.logistic's fitter and scipy's PAV (imported when fitting). Deterministic.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from optistop.logistic import fit_logistic, sigmoid, sigmoid1

METHODS: tuple[str, ...] = ("identity", "temperature", "platt", "isotonic")  # simplest first
P_MIN = 1e-3
_EPS = 1e-6

Calibrator = dict[str, Any]


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [1e-6, 1 - 1e-6] (finite for 0 and 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply(cal: Calibrator, p: np.ndarray) -> np.ndarray:
    """Calibrated probabilities (float64, same shape as ``p``)."""
    return compiled(cal)(p)


def compiled(cal: Calibrator) -> Callable[[np.ndarray], np.ndarray]:
    """``apply`` with the calibrator's parameters read once: the served predictor keeps one per
    (stage, mode) and calls it per request."""
    f = _build(cal, logit, sigmoid, lambda x, y: lambda p: np.interp(p, np.asarray(x, dtype=np.float64),
                                                                       np.asarray(y, dtype=np.float64)))
    return lambda p: np.clip(f(np.asarray(p, dtype=np.float64)), P_MIN, 1 - P_MIN)


def compiled_scalar(cal: Calibrator) -> Callable[[float], float]:
    """``compiled`` for one probability on Python floats, the same formulas (tests/unit/test_predictor.py
    checks them against the array version): the served cascade calibrates one score per call, right
    after a stage call has left the CPU caches cold, where numpy's dispatch costs more than the math."""
    f = _build(cal, _logit1, sigmoid1, _interp1)
    return lambda p: min(max(f(float(p)), P_MIN), 1 - P_MIN)


def _build(cal: Calibrator, logit_f: Callable, sigmoid_f: Callable, interp_f: Callable) -> Callable:
    """The calibrator's map before clipping, written once over the given logit / sigmoid / interp."""
    method = cal.get("method")
    if method == "identity":
        return lambda p: p
    if method == "temperature":
        t = float(cal["t"])
        return lambda p: sigmoid_f(logit_f(p) / t)
    if method == "platt":
        a, b = float(cal["a"]), float(cal["b"])
        return lambda p: sigmoid_f(a * logit_f(p) + b)
    if method == "isotonic":
        return interp_f(cal["x"], cal["y"])
    raise ValueError(f"unknown calibration method {method!r}; valid methods: {', '.join(METHODS)}")


def _logit1(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p) - math.log1p(-p)


def _interp1(x: list, y: list) -> Callable[[float], float]:
    """np.interp for one value: constant outside the knots, linear between them."""
    xs, ys = [float(v) for v in x], [float(v) for v in y]

    def f(p: float) -> float:
        if p <= xs[0]:
            return ys[0]
        if p >= xs[-1]:
            return ys[-1]
        j = bisect.bisect_right(xs, p) - 1
        return (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]) * (p - xs[j]) + ys[j]
    return f


def validate(cal: object, where: str = "calibration") -> Calibrator:
    """Check a calibrator read from a file; raises ValueError naming ``where`` and the problem."""
    if not isinstance(cal, dict) or cal.get("method") not in METHODS:
        raise ValueError(f"{where}: expected a dict with method in {list(METHODS)}, got {cal!r:.120}")
    need = {"identity": (), "temperature": ("t",), "platt": ("a", "b"), "isotonic": ("x", "y")}
    missing = [k for k in need[cal["method"]] if k not in cal]
    if missing:
        raise ValueError(f"{where}: method {cal['method']!r} needs {missing}")
    if cal["method"] == "isotonic":
        x = np.asarray(cal["x"], dtype=np.float64)
        if x.ndim != 1 or x.size == 0 or x.size != len(cal["y"]) or np.any(np.diff(x) <= 0):
            raise ValueError(f"{where}: isotonic x must be strictly increasing and as long as y")
    if cal["method"] == "temperature" and not float(cal["t"]) > 0:
        raise ValueError(f"{where}: temperature must be > 0, got {cal['t']}")
    return cal


def _fit_scaling(z: np.ndarray, y: np.ndarray, with_bias: bool) -> tuple[float, float]:
    """P(y=1) = sigmoid(a z + b) (b = 0 without bias) fitted to Platt's smoothed targets: the project's one
    logistic fitter (optistop.logistic) with this fit's own settings: a penalty of 1e-6 on a and b alike,
    started from the identity map (a, b) = (1, 0), Newton steps to 1e-10."""
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    if with_bias:
        a, b = fit_logistic(np.column_stack([z, np.ones_like(z)]), t, 1e-6, bias=False,
                            w0=np.array([1.0, 0.0]), tol=1e-10, max_iter=100)
        return float(a), float(b)
    (a,) = fit_logistic(z[:, None], t, 1e-6, bias=False, w0=np.array([1.0]), tol=1e-10, max_iter=100)
    return float(a), 0.0


def _isotonic_knots(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Isotonic (non-decreasing) regression of y on x by scipy's PAV; returns interpolation knots: each
    block of pooled x values as (lowest x, mean y) and (highest x, mean y), one knot for a single x."""
    from scipy.optimize import isotonic_regression

    order = np.argsort(x, kind="mergesort")
    xs, ys = x[order], y[order]
    ux, start = np.unique(xs, return_index=True)  # pool ties first: one point per distinct x, weighted
    sums = np.add.reduceat(ys, start)
    counts = np.diff(np.append(start, xs.size)).astype(np.float64)
    edges = isotonic_regression(sums / counts, weights=counts).blocks
    # each block's mean as sum / count of its labels (not scipy's running weighted mean, which may differ
    # in the last bit), and adjacent blocks whose means are then not strictly increasing pooled too: the
    # maximal level sets, as a tie-pooling PAV on these sums defines them
    blocks: list[list[float]] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        blocks.append([float(sums[lo:hi].sum()), float(counts[lo:hi].sum()), float(ux[lo]), float(ux[hi - 1])])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s2, c2, _, top = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += c2
            blocks[-1][3] = top
    kx: list[float] = []
    ky: list[float] = []
    for s, c, lo_x, hi_x in blocks:
        for xv in ((lo_x,) if lo_x == hi_x else (lo_x, hi_x)):
            kx.append(xv)
            ky.append(s / c)
    return kx, ky


def fit(method: str, p: np.ndarray, y: np.ndarray) -> Calibrator:
    """Fit one calibration ``method`` on raw scores ``p`` and 0/1 labels ``y``."""
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if method == "identity" or y.size == 0:
        return {"method": "identity"}
    if method == "temperature":
        a, _ = _fit_scaling(logit(p), y, with_bias=False)
        return {"method": "temperature", "t": 1.0 / a} if a > 1e-3 else {"method": "identity"}
    if method == "platt":
        a, b = _fit_scaling(logit(p), y, with_bias=True)
        return {"method": "platt", "a": a, "b": b}
    if method == "isotonic":
        kx, ky = _isotonic_knots(p, y)
        return {"method": "isotonic", "x": kx, "y": ky}
    raise ValueError(f"unknown calibration method {method!r}; valid methods: {', '.join(METHODS)}")


def fit_platt(p: np.ndarray, y: np.ndarray) -> Calibrator:
    """Platt scaling p' = sigmoid(a logit(p) + b): the one Platt fit of the project (serving and replay)."""
    return fit("platt", p, y)


def select(p: np.ndarray, y: np.ndarray, seed: int = 0, k: int = 5,
           methods: tuple[str, ...] = METHODS) -> tuple[Calibrator, dict[str, float]]:
    """Choose a method by k-fold CV Brier score on (p, y), refit it on all of them.

    Returns (calibrator, {method: cv_brier}). With a single class or fewer than 2k examples, identity.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if y.size < 2 * k or y.min() == y.max():
        return {"method": "identity"}, {}
    folds = np.random.default_rng(seed).permutation(y.size) % k
    scores: dict[str, float] = {}
    for m in methods:
        pred = np.empty_like(p)
        for f in range(k):
            held = folds == f
            pred[held] = apply(fit(m, p[~held], y[~held]), p[held])
        scores[m] = round(float(np.mean((pred - y) ** 2)), 12)
    best = min(methods, key=lambda m: (scores[m], methods.index(m)))
    cal = fit(best, p, y)
    return cal, scores
