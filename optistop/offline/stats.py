"""The project's one statistics module: predictor scores (AUROC, Brier, ECE) and paired comparisons.

numpy/scipy only (no scikit-learn). One rule for undefined values: ``None`` rather than NaN, so that
they survive JSON and print as "n/a". AUROC needs both classes; every metric needs at least one example.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats


def _arrays(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {p.shape[0]}")
    return y, p


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); None without both classes."""
    y, p = _arrays(y, p)
    n_pos = int((y > 0.5).sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = scipy.stats.rankdata(p)  # mid-ranks over ties
    u = ranks[y > 0.5].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def brier(y: np.ndarray, p: np.ndarray) -> float | None:
    """Mean squared error between the probability and the 0/1 outcome."""
    y, p = _arrays(y, p)
    return float(np.mean((p - y) ** 2)) if y.size else None


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float | None:
    """Expected calibration error over ``n_bins`` equal-width bins of [0, 1] (1.0 falls in the last)."""
    y, p = _arrays(y, p)
    if not y.size:
        return None
    bins = np.minimum((np.clip(p, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.sum() / y.size * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def summary(y: np.ndarray, p: np.ndarray, digits: int = 6) -> dict[str, float | int | None]:
    """{"auroc", "brier", "ece", "n", "positives"} rounded to ``digits`` (None where undefined)."""
    r = lambda x: None if x is None else round(x, digits)
    y_arr, _ = _arrays(y, p)
    return {"auroc": r(auroc(y, p)), "brier": r(brier(y, p)), "ece": r(ece(y, p)),
            "n": int(y_arr.size), "positives": int((y_arr > 0.5).sum())}


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired t-test of a - b and Cohen's d of the differences (mean / sd of the differences)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    sd = d.std(ddof=1) if len(d) > 1 else 0.0
    if sd == 0.0:
        p = 1.0 if d.mean() == 0 else 0.0
        return {"mean_diff": float(d.mean()), "p": p, "d": 0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())}
    res = scipy.stats.ttest_rel(a, b)
    return {"mean_diff": float(d.mean()), "p": float(res.pvalue), "d": float(d.mean() / sd)}


def fmt_p(p: float) -> str:
    return "<0.001" if p < 1e-3 else f"{p:.3f}"
