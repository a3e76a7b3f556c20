"""Small statistics used by the replay and the report: AUROC, calibration, paired tests, intervals."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); nan when only one class is present."""
    y = np.asarray(y, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(score)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width bins."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(total)


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
