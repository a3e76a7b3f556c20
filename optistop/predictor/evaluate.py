"""Per-stage calibration and the metric table of the quality predictor.

Protocol: every (architecture, feature mode) model is calibrated per stage on the validation split
(``calibration.select``: method by 5-fold CV Brier) and scored per stage on the test split. AUROC is that
of the raw scores (calibration is monotone; isotonic ties could only blur it); Brier and ECE (10 equal
bins) are reported calibrated (``brier``, ``ece``) and raw (``brier_raw``, ``ece_raw``). The pooled AUROC
over all stages' test rows is the number comparable with the paper's (0.72 / 0.85 / 0.87).

Table layout (the sidecar's ``metrics``):
    {"split": "test", "calibrated_on": "val", "ece_bins": 10, "stages": [names],
     "per_stage": {stage: {arch: {mode: {auroc, brier, ece, brier_raw, ece_raw, calibration, n, positives}}}},
     "pooled_auroc": {arch: {mode: auroc}}}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optistop import calibration
from optistop.offline import stats
from optistop.predictor.model import Rows

ECE_BINS = 10


def calibrate_per_stage(val: Rows, p_val: np.ndarray, stage_names: tuple[str, ...],
                        seed: int) -> list[dict[str, Any]]:
    """One calibrator per stage, fitted on that stage's validation rows."""
    out = []
    for s, name in enumerate(stage_names):
        mask = val.stage == s
        cal, cv = calibration.select(p_val[mask], val.y[mask], seed=seed + s)
        out.append({"stage": s, "name": name, "calibrator": cal, "cv_brier": cv,
                    "n_val": int(mask.sum()), "positives_val": int(val.y[mask].sum())})
    return out


def apply_per_stage(cals: list[dict[str, Any]], stage: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Calibrated scores: each row by its stage's calibrator."""
    out = np.empty(p.shape, dtype=np.float64)
    for entry in cals:
        mask = stage == entry["stage"]
        out[mask] = calibration.apply(entry["calibrator"], p[mask])
    return out


def score_cells(test: Rows, p_test: np.ndarray, cals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{stage name: metrics} on the test rows."""
    p_cal = apply_per_stage(cals, test.stage, p_test)
    cells: dict[str, dict[str, Any]] = {}
    for entry in cals:
        mask = test.stage == entry["stage"]
        y = test.y[mask]
        raw, cal = stats.summary(y, p_test[mask]), stats.summary(y, p_cal[mask])
        cells[entry["name"]] = {
            "auroc": raw["auroc"], "brier": cal["brier"], "ece": cal["ece"],
            "brier_raw": raw["brier"], "ece_raw": raw["ece"],
            "calibration": entry["calibrator"]["method"], "n": raw["n"], "positives": raw["positives"],
        }
    return cells


def metric_table(results: dict[tuple[str, str], dict[str, Any]], stage_names: tuple[str, ...]) -> dict[str, Any]:
    """Assemble the table from {(arch, mode): {"cells": score_cells(...), "pooled_auroc": x}}."""
    per_stage: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in stage_names}
    pooled: dict[str, dict[str, Any]] = {}
    for (arch, mode), res in sorted(results.items()):
        for name in stage_names:
            per_stage[name].setdefault(arch, {})[mode] = res["cells"][name]
        pooled.setdefault(arch, {})[mode] = res["pooled_auroc"]
    return {"split": "test", "calibrated_on": "val", "ece_bins": ECE_BINS, "stages": list(stage_names),
            "per_stage": per_stage, "pooled_auroc": pooled}


MIN_EXAMPLES = 10   # fewer positive or negative examples than this: no AUROC or ECE verdict


def too_few(counts: dict[str, dict[str, tuple[int, int]]], minimum: int = MIN_EXAMPLES) -> list[str]:
    """One line per (role, stage) whose (positives, n) has fewer than ``minimum`` positive or negative
    examples: an AUROC from one positive is noise and a calibration map from it is a guess."""
    return [f"stage {stage}: {pos} positive and {n - pos} negative {role} examples (fewer than {minimum})"
            for role, by_stage in counts.items() for stage, (pos, n) in by_stage.items()
            if min(pos, n - pos) < minimum]


def acceptance(table: dict[str, Any], arch: str = "mlp32", min_gain: float = 0.05,
               max_ece: float = 0.05, calibration: tuple[int, int] | None = None,
               minimum: int = MIN_EXAMPLES) -> dict[str, Any]:
    """Issue 3's targets on the smallest (first) stage, from measured numbers. ``calibration``: that
    stage's (positives, n) in the calibration role. With fewer than ``minimum`` positive or negative
    examples in the test cell or the calibration, the verdict is "not enough data" and nothing is met."""
    first = table["stages"][0]
    cell = table["per_stage"][first][arch]
    post, prior = cell["output_aware"]["auroc"], cell["prompt_only"]["auroc"]
    gain = None if post is None or prior is None else round(post - prior, 6)
    ece = cell["output_aware"]["ece"]
    counts = {"test": {first: (cell["output_aware"]["positives"], cell["output_aware"]["n"])}}
    if calibration is not None:
        counts["calibration"] = {first: calibration}
    few = too_few(counts, minimum)
    gain_met = not few and gain is not None and gain >= min_gain
    ece_met = not few and ece is not None and ece <= max_ece
    return {"stage": first, "arch": arch, "auroc_output_aware": post, "auroc_prompt_only": prior,
            "auroc_gain": gain, "auroc_gain_target": min_gain, "auroc_gain_met": gain_met,
            "ece_output_aware_calibrated": ece, "ece_target": max_ece, "ece_met": ece_met,
            "verdict": "not enough data" if few else ("met" if gain_met and ece_met else "not met"),
            "too_few_examples": few}


def format_table(table: dict[str, Any]) -> str:
    """Plain-text rendering: one line per stage x arch, AUROC / Brier / ECE per mode."""
    modes = sorted({m for st in table["per_stage"].values() for a in st.values() for m in a})
    f = lambda x: "  -  " if x is None else f"{x:.3f}"
    head = f"{'stage':8s} {'arch':7s} " + " ".join(f"{m + ' auroc/brier/ece':>33s}" for m in modes)
    lines = [head]
    for stage in table["stages"]:
        for arch, cells in table["per_stage"][stage].items():
            lines.append(f"{stage:8s} {arch:7s} " + " ".join(
                f"{f(cells[m]['auroc'])} / {f(cells[m]['brier'])} / {f(cells[m]['ece'])}".rjust(33)
                for m in modes))
    for arch, by_mode in table["pooled_auroc"].items():
        lines.append(f"{'pooled':8s} {arch:7s} " + " ".join(f"{f(by_mode.get(m))}".rjust(33) for m in modes))
    return "\n".join(lines)
