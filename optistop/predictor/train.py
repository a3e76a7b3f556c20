"""Train the quality predictors on collected labels, calibrate them per stage, and score them.

$ python predictor_export/train.py --data artifacts/collected.jsonl --out artifacts/predictor   # ~1-2 min

Trains {linear, mlp32, mlp128} x {paper_b2, prompt_only, output_aware} (optistop.predictor.model), pooled over
stages (the stage one-hot tells them apart, as in the paper). Data roles (optistop.predictor.model.assign_roles):
fit on 2/3 of the val split's prompts (early stopping on 15% of those), calibrate per stage on the other
1/3, score per stage on the test split (optistop.predictor.evaluate). The train split is not used: the stage
models were trained on those very prompts, so their outputs there are not what serving sees
(``--fit-on train`` runs that naive protocol for comparison). Writes ``<out>/models.pt`` (state dicts)
and ``<out>/report.json`` (metric table, calibrators, training summary), which
optistop.predictor.export turns into the served files.
One torch thread: the same seed gives identical weights and metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optistop.features import FEATURE_VERSION
from optistop.offline import stats
from optistop.predictor import evaluate as predictor_eval
from optistop.predictor.model import (
    ARCHS,
    MODES,
    SPLITS,
    Rows,
    TrainConfig,
    assign_roles,
    build_rows,
    data_sha256,
    early_stopping_mask,
    predict,
    read_jsonl,
    train,
)


def check_splits(records: list[dict[str, Any]], fit_on: str = "val") -> None:
    splits = {rec.get("split") for rec in records}
    if not splits <= set(SPLITS):
        raise ValueError(f"unknown split(s) {sorted(map(str, splits - set(SPLITS)))}; valid: {SPLITS}")
    needed = ("val", "test") if fit_on == "val" else SPLITS  # fitting on val leaves the train split unused
    missing = [s for s in needed if s not in splits]
    if missing:
        raise ValueError(f"no records in split(s) {missing}; rerun `make collect`")


def scores(test: Rows, p_test: np.ndarray, cals: list[dict[str, Any]]) -> dict[str, Any]:
    pooled = stats.auroc(test.y, p_test)
    return {"cells": predictor_eval.score_cells(test, p_test, cals),
            "pooled_auroc": None if pooled is None else round(pooled, 6)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("artifacts/collected.jsonl"))
    ap.add_argument("--out", type=Path, default=Path("artifacts/predictor"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", action="append", choices=list(ARCHS), help="default: all")
    ap.add_argument("--mode", action="append", choices=list(MODES), help="default: all")
    ap.add_argument("--max-epochs", type=int, default=TrainConfig.max_epochs)
    ap.add_argument("--cal-share", type=float, default=1 / 3,
                    help="share of the val prompts kept for calibration when fitting on val (default 1/3)")
    ap.add_argument("--fit-on", choices=["val", "train"], default="val",
                    help="val: fit on 2/3 of the val prompts, calibrate on the rest (default); train: fit on "
                         "the stage models' own training prompts, calibrate on val (naive, for comparison)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # determinism (and the 2-core budget)
    if not args.data.exists():
        print(f"error: {args.data} not found; run `make collect` first", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    records = read_jsonl(args.data)
    check_splits(records, args.fit_on)
    stage_names = tuple(st["model"] for st in records[0]["stages"])
    cfg = TrainConfig(seed=args.seed, max_epochs=args.max_epochs)
    archs, modes = args.arch or list(ARCHS), args.mode or list(MODES)
    roles = np.array(assign_roles(records, args.fit_on, cal_share=args.cal_share, seed=cfg.seed))
    held = early_stopping_mask(records, cfg.holdout, cfg.seed) & (roles == "fit")
    first: dict[str, int] = {}
    for i, rec in enumerate(records):
        if roles[i] == "test":
            first.setdefault(rec["prompt"], i)
    distinct = np.zeros(len(records), dtype=bool)
    distinct[list(first.values())] = True  # first test item of each distinct prompt

    states: dict[str, dict[str, torch.Tensor]] = {}
    results: dict[tuple[str, str], dict[str, Any]] = {}
    results_distinct: dict[tuple[str, str], dict[str, Any]] = {}
    calibrations: dict[str, dict[str, Any]] = {}
    epochs: dict[str, Any] = {}
    positives: dict[str, dict[str, int]] = {}
    for mode in modes:
        rows = build_rows(records, mode)
        role = roles[rows.item]
        part = {r: rows.where(role == r) for r in ("fit", "calibration", "test")}
        fit_rows, stop_rows = rows.where((role == "fit") & ~held[rows.item]), rows.where(held[rows.item])
        positives = {r: {n: int(v.y[v.stage == i].sum()) for i, n in enumerate(stage_names)}
                     for r, v in part.items()}
        counts = {r: {n: (int(v.y[v.stage == i].sum()), int((v.stage == i).sum())) for i, n in enumerate(stage_names)}
                  for r, v in part.items() if r != "fit"}
        for arch in archs:
            key = f"{arch}/{mode}"
            model, log = train(arch, fit_rows, stop_rows, cfg)
            p_cal, p_test = predict(model, part["calibration"].x), predict(model, part["test"].x)
            cals = predictor_eval.calibrate_per_stage(part["calibration"], p_cal, stage_names, cfg.seed)
            results[(arch, mode)] = scores(part["test"], p_test, cals)
            once = distinct[part["test"].item]
            results_distinct[(arch, mode)] = scores(part["test"].where(once), p_test[once], cals)
            states[key] = model.state_dict()
            calibrations[key] = cals
            epochs[key] = log
            print(f"{key:22s} epochs {log['epochs_run']:2d} (best {log['best_epoch']:2d}) "
                  f"pooled test AUROC {results[(arch, mode)]['pooled_auroc']}", file=sys.stderr)

    table = predictor_eval.metric_table(results, stage_names)
    table_distinct = predictor_eval.metric_table(results_distinct, stage_names)
    can_accept = {"mlp32"} <= set(archs) and {"prompt_only", "output_aware"} <= set(modes)
    first_cal = counts["calibration"][stage_names[0]]
    accept = predictor_eval.acceptance(table, calibration=first_cal) if can_accept else None
    accept_distinct = predictor_eval.acceptance(table_distinct, calibration=first_cal) if can_accept else None
    few = predictor_eval.too_few(counts)
    for line in few:   # calibrate repeats these; the acceptance above says "not enough data" for stage 0
        print(f"warning: {line}: its calibration and metrics are not reliable; collect more prompts",
              file=sys.stderr)
    report = {
        "feature_version": FEATURE_VERSION,
        "stages": list(stage_names),
        "costs": [st["cost"] for st in records[0]["stages"]],
        "archs": archs, "modes": modes,
        "training": {
            "seed": cfg.seed, "config": cfg.to_dict(), "data_file": str(args.data),
            "data_sha256": data_sha256(records), "fit_on": args.fit_on, "cal_share": args.cal_share,
            "roles": {"fit": f"{args.fit_on} split" + (" (2/3 of its prompts)" if args.fit_on == "val" else ""),
                      "calibration": "val split" + (" (the other 1/3)" if args.fit_on == "val" else ""),
                      "test": "test split"},
            "n_items": {s: sum(r["split"] == s for r in records) for s in SPLITS},
            "n_items_by_role": {r: int((roles == r).sum()) for r in ("fit", "calibration", "test", "unused")},
            "n_items_early_stopping": int(held.sum()),
            "n_test_distinct_prompts": int(distinct.sum()),
            "positives_by_role": positives, "epochs": epochs, "torch_threads": 1,
            "too_few_examples": few,   # (role, stage) cells under MIN_EXAMPLES positives or negatives
        },
        "calibration": calibrations,
        "metrics": table,
        "acceptance": accept,
        # the same test split with each distinct prompt once: small cells (e.g. 1-digit addition has ~10
        # test prompts) repeat prompts, and a repeated prompt's error counts once per repeat above
        "metrics_distinct_prompts": table_distinct,
        "acceptance_distinct_prompts": accept_distinct,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(states, args.out / "models.pt")
    (args.out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(predictor_eval.format_table(table))
    if accept:
        print("acceptance (smallest stage, mlp32): " + json.dumps(accept))
        print("same, each distinct test prompt once: " + json.dumps(accept_distinct))
    print(f"wrote {args.out}/models.pt and report.json in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
