"""optistop.logistic: the one sigmoid and the one logistic fitter, and the calibrators built on them.

References are computed independently: the sigmoid in 60-digit decimal arithmetic, the fits by a general
minimiser (scipy's BFGS) on the objective written out here, isotonic regression by its min-max formula.
"""

from __future__ import annotations

import math
import warnings
from decimal import Decimal, localcontext

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

from optistop import calibration
from optistop.logistic import fit_logistic, sigmoid, sigmoid1

Z = np.concatenate([np.linspace(-800.0, 800.0, 1601), np.linspace(-40.0, 40.0, 801),
                    [-745.2, -745.0, -709.8, -709.0, -37.0, -1e-300, 0.0, 1e-300, 36.7, 37.0, 1e6, -1e6]])


def exact(z: float) -> float:
    """1 / (1 + e^-z) to 60 digits, correctly rounded to float64."""
    with localcontext() as ctx:
        ctx.prec = 60
        return float(1 / (1 + (-Decimal(z)).exp()))


def test_sigmoid_is_the_logistic_function_to_a_few_ulps_at_any_z() -> None:
    ref = np.array([exact(z) for z in Z])
    arr = sigmoid(Z)
    one = np.array([sigmoid1(float(z)) for z in Z])
    tol = 4 * np.spacing(ref)       # spacing of a subnormal is 5e-324: exact there too, to 4 of them
    assert np.all(np.abs(arr - ref) <= tol), Z[np.abs(arr - ref) > tol]
    assert np.all(np.abs(one - ref) <= tol), Z[np.abs(one - ref) > tol]
    assert arr.dtype == np.float64 and arr.shape == Z.shape


def test_limits_are_exact_and_nothing_warns() -> None:
    special = np.array([-np.inf, -1e6, -746.0, 37.0, 1e6, np.inf, np.nan])
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        arr = sigmoid(special)
        one = [sigmoid1(float(z)) for z in special]
        sigmoid(Z)
    expected = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]          # the documented limits: exactly 0 and 1
    assert arr[:6].tolist() == expected and one[:6] == expected
    assert math.isnan(arr[6]) and math.isnan(one[6])
    # and strictly inside (0, 1) where float64 can hold the value
    inside = sigmoid(np.array([-745.0, -700.0, -40.0, 36.0]))
    assert np.all((inside > 0) & (inside < 1))


def test_every_replaced_convention_agrees_to_1e_12_on_moderate_z() -> None:
    """The four sigmoids this module replaced, as they were written, on finite moderate z."""
    z = np.linspace(-50.0, 50.0, 20001)
    new = sigmoid(z)
    old_policy = 1.0 / (1.0 + np.exp(-np.minimum(np.maximum(z, -40.0), 40.0)))   # clip to +-40
    old_calibration = 0.5 * (1.0 + np.tanh(0.5 * z))                             # tanh form
    old_onnx = np.array([1.0 / (1.0 + math.exp(-v)) if v > -700.0 else 0.0 for v in z])
    for old in (old_policy, old_calibration, old_onnx):
        assert np.max(np.abs(new - old)) <= 1e-12
    assert np.max(np.abs(np.array([sigmoid1(float(v)) for v in z]) - old_policy)) <= 1e-12


def test_sigmoid_accepts_scalars_and_keeps_shape() -> None:
    assert sigmoid(0.0).shape == () and float(sigmoid(0.0)) == 0.5
    assert sigmoid(np.zeros((2, 3))).shape == (2, 3)
    assert sigmoid1(0.0) == 0.5 and sigmoid1(-2.0) == pytest.approx(1.0 - sigmoid1(2.0), abs=1e-15)


def _objective(w: np.ndarray, x: np.ndarray, y: np.ndarray, pen: np.ndarray) -> float:
    z = x @ w
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(pen * w * w))


def _data(n: int, d: int, seed: int, fractional: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(n), rng.normal(size=(n, d - 1))])
    p = 1 / (1 + np.exp(-(x @ rng.normal(size=d))))
    y = p if fractional else (rng.random(n) < p).astype(float)
    return x, y


@pytest.mark.parametrize("bias, fractional, l2", [(True, False, 1.0), (True, True, 3.0), (False, False, 0.5)])
def test_fit_is_the_minimiser_of_the_stated_objective(bias: bool, fractional: bool, l2: float) -> None:
    x, y = _data(300, 4, seed=1, fractional=fractional)
    pen = np.full(4, l2)
    if bias:
        pen[0] = 0.0
    w = fit_logistic(x, y, l2, bias=bias)
    ref = scipy.optimize.minimize(_objective, np.zeros(4), args=(x, y, pen), method="BFGS",
                                  options={"gtol": 1e-9}).x
    assert np.max(np.abs(w - ref)) < 1e-6


def test_bias_column_is_unpenalised_only_with_bias() -> None:
    x, y = _data(200, 3, seed=2)
    w = fit_logistic(x, y, 1e9)                     # a huge penalty: only the intercept survives
    m = y.mean()
    assert abs(w[0] - math.log(m / (1 - m))) < 1e-6 and np.max(np.abs(w[1:])) < 1e-6
    assert np.max(np.abs(fit_logistic(x, y, 1e9, bias=False))) < 1e-6


def test_sparse_design_reaches_the_dense_solution() -> None:
    x, y = _data(400, 5, seed=3)
    dense = fit_logistic(x, y, 2.0)
    sparse = fit_logistic(sp.csr_matrix(x), y, 2.0)
    assert np.max(np.abs(dense - sparse)) < 1e-5
    with pytest.raises(TypeError, match="numpy array or a scipy.sparse matrix"):
        fit_logistic([[1.0, 2.0]], np.array([1.0]))


def test_platt_converges_on_scores_of_exactly_0_and_1() -> None:
    """Scores with lumps at exactly 0 and 1 (logit -13.8 / 13.8) and labels of both kinds there: the
    undamped Newton this fitter replaced left the curvature-free start with a ~ 1e9 and never came back."""
    rng = np.random.default_rng(4)
    n = 1500
    z = rng.normal(0.5, 1.5, n)
    p = 1 / (1 + np.exp(-z))
    y = (rng.random(n) < p).astype(float)
    p[rng.random(n) < 0.1] = 1.0
    p[rng.random(n) < 0.05] = 0.0
    cal = calibration.fit("platt", p, y)
    a, b = cal["a"], cal["b"]
    s = calibration.logit(p)
    n_pos, n_neg = y.sum(), n - y.sum()
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))   # Platt's targets
    q = 1 / (1 + np.exp(-(a * s + b)))
    grad = np.array([np.sum((q - t) * s) + 1e-6 * a, np.sum(q - t) + 1e-6 * b])
    assert abs(a) < 10 and np.max(np.abs(grad)) < 1e-6
    temp = calibration.fit("temperature", p, y)
    assert temp["method"] == "identity" or 0.01 < temp["t"] < 1e3


def _isotonic_reference(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct x and the isotonic fit there by the min-max formula: f_i = max_{j<=i} min_{k>=i} mean(j..k),
    means weighted by how many points share each x."""
    ux, inv = np.unique(x, return_inverse=True)
    S = np.concatenate([[0.0], np.cumsum(np.bincount(inv, weights=y))])
    C = np.concatenate([[0.0], np.cumsum(np.bincount(inv))])
    m = len(ux)
    f = np.array([max(np.min((S[i + 1:] - S[j]) / (C[i + 1:] - C[j])) for j in range(i + 1)) for i in range(m)])
    return ux, f


@pytest.mark.parametrize("seed", range(6))
def test_isotonic_knots_reproduce_the_isotonic_fit_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 120
    x = np.round(rng.random(n), 1 + seed % 2)            # many ties
    y = (rng.random(n) < x).astype(float)
    cal = calibration.fit("isotonic", x, y)
    kx, ky = np.array(cal["x"]), np.array(cal["y"])
    ux, f = _isotonic_reference(x, y)
    assert np.all(np.diff(kx) > 0) and np.all(np.diff(ky) >= 0)
    assert np.max(np.abs(np.interp(ux, kx, ky) - f)) < 1e-12
    # knots only at the ends of the level sets: each y value at most twice, and every level distinct
    levels, counts = np.unique(ky, return_counts=True)
    assert counts.max() <= 2 and len(levels) == len(np.unique(np.round(f, 12)))


def test_isotonic_worked_example() -> None:
    # x 0.1 (two, labels 1 and 0), 0.2 (0), 0.3 (two, 1 and 1), 0.4 (0): means 0.5, 0, 1, 0.
    # 0.5 > 0 pools 0.1..0.2 to 1/3; 1 > 0 pools 0.3..0.4 to 2/3; 1/3 < 2/3 stays.
    cal = calibration.fit("isotonic", np.array([0.1, 0.1, 0.2, 0.3, 0.3, 0.4]), np.array([1, 0, 0, 1, 1, 0.0]))
    assert cal["x"] == [0.1, 0.2, 0.3, 0.4]
    assert cal["y"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3], abs=1e-15)
