"""The project's one logistic function and one logistic-regression fitter.

``sigmoid`` (arrays) and ``sigmoid1`` (one Python float) compute 1 / (1 + exp(-z)) without clipping z,
in the overflow-free two-branch form (exponents never positive). One convention for every caller, chosen because
each of the four it replaces bent the function somewhere: the policy's clip of z to [-40, 40] floored
it at 4.2e-18; the calibrators' 0.5 (1 + tanh(z / 2)) lost all relative precision below z ~ -20 and
reached 0 at z ~ -37; the ONNX runtime's cut-off returned 0 below z = -700. Here the result is exact to
a few ulps everywhere, never warns, and is 0.0 or 1.0 only where float64 holds nothing else: 1.0 from
z ~ 36.7 (1 + e^-z rounds to 1), 0.0 below z ~ -745.1 (e^z underflows), and at -inf / +inf; NaN stays
NaN. Clipping a probability, where a caller wants one, is that caller's (calibration.P_MIN, policy.CLIP).

Why not ``scipy.special.expit``: this module is imported inside Triton (the calibrators, the policy, the
ONNX runtime), where importing scipy.special costs every backend process ~0.1 s, and on one Python float
(the per-request calls) a ufunc call costs several times ``sigmoid1``; ``python -m
optistop.perf.sigmoid_bench`` prints both, and the array case, side by side.

``fit_logistic`` minimises  sum_i [log(1 + e^(x_i w)) - y_i x_i w] + l2 / 2 * |w_pen|^2  with y in [0, 1]
(fractional targets: Platt's smoothed labels, cost shares). With ``bias`` (default) column 0 is an
unpenalised intercept; without, every column is penalised. Dense X: Newton's method (IRLS) with step
halving, the solver for the project's small designs (policy models, calibrators). Sparse X (scipy.sparse, the hashed
text verifier with ~10^4 columns): the same objective (divided by n) by trust-region Newton-CG with exact
Hessian-vector products, since a dense Hessian of that width is not an option.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def sigmoid(z: Any) -> np.ndarray:
    """1 / (1 + exp(-z)), element-wise, float64; see the module docstring for the limits."""
    z = np.asarray(z, dtype=np.float64)
    # e^min(z, 0) / (1 + e^-|z|): both exponents <= 0, so nothing overflows; the same two branches as
    # sigmoid1 (z >= 0: 1 / (1 + e^-z); z < 0: e^z / (1 + e^z)) without np.where, which costs more here
    return np.exp(np.minimum(z, 0.0)) / (1.0 + np.exp(np.minimum(z, -z)))


def sigmoid1(z: float) -> float:
    """``sigmoid`` for one Python float (the served per-request paths), the same two branches."""
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)                            # NaN takes this branch and stays NaN
    return e / (1.0 + e)


def fit_logistic(X: Any, y: np.ndarray, l2: float = 1.0, *, bias: bool = True, w0: np.ndarray | None = None,
                 tol: float = 1e-7, max_iter: int = 25) -> np.ndarray:
    """Ridge logistic regression of y (in [0, 1]) on the columns of X; returns the weights (d,).

    Dense: Newton from ``w0`` (default: the intercept at logit of mean y, the rest 0) until the largest
    step is below ``tol`` or ``max_iter`` steps. Sparse: trust-region Newton-CG to a gradient norm of 1e-6
    (``tol``, ``max_iter`` and ``w0`` are the dense solver's)."""
    y = np.asarray(y, dtype=np.float64)
    if not isinstance(X, np.ndarray):
        return _fit_sparse(X, y, l2, bias)
    d = X.shape[1]
    pen = np.full(d, float(l2))
    if bias:
        pen[0] = 0.0
    if w0 is None:
        w = np.zeros(d)
        if bias:
            m = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
            w[0] = np.log(m / (1 - m))
    else:
        w = np.array(w0, dtype=np.float64)
    z = X @ w
    f = _objective(z, y, w, pen)
    for _ in range(max_iter):
        p = sigmoid(z)
        g = X.T @ (p - y) + pen * w
        # the 1e-9 weight and 1e-8 ridge keep the system solvable on separable or collinear columns; they
        # change the path, not the solution (g = 0 does not involve them)
        H = (X * (p * (1 - p) + 1e-9)[:, None]).T @ X + np.diag(pen + 1e-8)
        step = np.linalg.solve(H, g)
        # step halving (as R's glm.fit): a Newton step that raises the objective is halved until it does
        # not. Without it a start where the curvature is nearly 0 (scores of exactly 0 or 1, logit +-13.8,
        # with labels of both kinds there) sends w to ~1e9, and Newton never comes back
        t = 1.0
        while True:
            w_new = w - t * step
            z_new = X @ w_new
            f_new = _objective(z_new, y, w_new, pen)
            if f_new <= f + 1e-10 * (1.0 + f) or t < 1e-9:
                break
            t *= 0.5
        w, z, f = w_new, z_new, f_new
        if np.abs(step).max() < tol:
            break
    return w


def _objective(z: np.ndarray, y: np.ndarray, w: np.ndarray, pen: np.ndarray) -> float:
    return float(_softplus(z).sum() - y @ z + 0.5 * (pen * w) @ w)


def _softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + e^z) = max(z, 0) + log(1 + e^-|z|), without overflow; np.logaddexp(0, z) is the same to an
    ulp but ~10x slower here (no SIMD loop)."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _fit_sparse(x: Any, y: np.ndarray, l2: float, bias: bool) -> np.ndarray:
    import scipy.optimize
    import scipy.sparse as sp

    if not sp.issparse(x):
        raise TypeError(f"fit_logistic: X must be a numpy array or a scipy.sparse matrix, got {type(x).__name__}")
    n = x.shape[0]
    pen = np.full(x.shape[1], l2 / n)
    if bias:
        pen[0] = 0.0

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        loss = _softplus(z).sum() - y @ z
        return loss / n + 0.5 * (pen * w) @ w, x.T @ (sigmoid(z) - y) / n + pen * w

    def hessp(w: np.ndarray, v: np.ndarray) -> np.ndarray:
        p = sigmoid(x @ w)
        return x.T @ (p * (1.0 - p) * (x @ v)) / n + pen * v

    w0 = np.zeros(x.shape[1])
    if bias:
        base = np.clip(y.mean(), 1e-3, 1 - 1e-3)
        w0[0] = math.log(base / (1 - base))
    res = scipy.optimize.minimize(f, w0, jac=True, hessp=hessp, method="trust-ncg",
                                  options={"gtol": 1e-6, "maxiter": 200})
    return res.x
