"""Scores of a probabilistic binary predictor: AUROC, Brier score, expected calibration error.

numpy only (no scikit-learn). Undefined values are ``None`` rather than NaN, so that they survive JSON:
AUROC needs both classes; every metric needs at least one example.
"""

from __future__ import annotations

import numpy as np


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
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    ranks = np.empty(p.size, dtype=np.float64)
    i = 0
    while i < sp.size:  # mid-rank over each run of equal scores
        j = i
        while j + 1 < sp.size and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
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
