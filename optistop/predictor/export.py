"""Export the chosen predictor to ONNX with its JSON sidecar, check parity, write the tiny replay file.

$ python predictor_export/export_onnx.py --run artifacts/predictor --data artifacts/collected.jsonl \
      --out model_repository/quality_predictor/1 --replay artifacts/tiny_replay.jsonl        # ~10 s

Reads train.py's ``models.pt`` and ``report.json``; builds the served network (optistop.predictor.model.ModeSwitch:
the ``--arch`` output-aware net for post-hoc rows, the ``--arch`` prompt-only net for ex-ante rows);
exports it (opset 17, dynamic batch, onnx.checker); checks onnxruntime against torch on the whole test
split (both modes) plus 1,000 random vectors and exits non-zero, writing nothing, if the largest
difference exceeds 1e-5. Then writes ``model.onnx`` and ``model.json`` (optistop.predictor.onnx_export documents
the sidecar), loads them back through the serving class, and writes the val + test items in the replay
schema with, per stage, ``confidence`` (calibrated, output-aware) and ``ex_ante`` (calibrated, prompt-only),
and per item ``predictor_role``: "fit" or "calibration" (val items the predictor learnt from, so
in-sample) or "test" (out-of-sample: evaluate stopping rules on these).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optistop.features import EX_ANTE_SLOT, FEATURE_VERSION, SLOT_NAMES, STAGE_SLOTS
from optistop.predictor import evaluate as predictor_eval
from optistop.predictor.model import (
    ARCHS,
    ModeSwitch,
    assign_roles,
    build,
    build_rows,
    data_sha256,
    predict,
    read_jsonl,
)
from optistop.predictor.onnx_export import (
    OPSET,
    ParityError,
    check_parity,
    export_bytes,
    session,
    sha256_bytes,
    versions,
)
from optistop.serving.predictor_runtime import SIDECAR_FORMAT, QualityPredictor
from optistop.tensors import CONFIDENCE, FEATURES, N_FEATURES

MODE_OF = {"post_hoc": "output_aware", "ex_ante": "prompt_only"}


def served_model(states: dict[str, Any], arch: str) -> ModeSwitch:
    nets = {}
    for role, mode in MODE_OF.items():
        key = f"{arch}/{mode}"
        if key not in states:
            raise SystemExit(f"error: the training run has no {key} model; rerun train.py with it")
        nets[role] = build(arch)
        nets[role].load_state_dict(states[key])
    return ModeSwitch(nets["post_hoc"], nets["ex_ante"]).eval()


def sidecar(report: dict[str, Any], arch: str, onnx_bytes: bytes, parity: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": SIDECAR_FORMAT,
        "feature_version": FEATURE_VERSION, "n_features": N_FEATURES, "slot_names": list(SLOT_NAMES),
        "stage_slots": list(STAGE_SLOTS), "ex_ante_slot": EX_ANTE_SLOT, "input": FEATURES, "output": CONFIDENCE,
        "stages": report["stages"], "costs": report["costs"], "arch": arch, "modes": dict(MODE_OF),
        "onnx_sha256": sha256_bytes(onnx_bytes), "opset": OPSET,
        "calibration": {role: report["calibration"][f"{arch}/{mode}"] for role, mode in MODE_OF.items()},
        "training": report["training"], "metrics": report["metrics"], "acceptance": report["acceptance"],
        "metrics_distinct_prompts": report["metrics_distinct_prompts"],
        "acceptance_distinct_prompts": report["acceptance_distinct_prompts"],
        "parity": parity, "versions": versions(),
    }


def replay_records(records: list[dict[str, Any]], roles: list[str], qp: QualityPredictor) -> list[dict[str, Any]]:
    """Records with per-stage calibrated ``confidence`` and ``ex_ante`` from the served predictor, and the
    record's ``predictor_role`` (fit / calibration / test: only test items are out-of-sample for it)."""
    post = build_rows(records, "output_aware")
    ante = build_rows(records, "prompt_only")
    conf, prior = qp.predict(post.x), qp.predict(ante.x)
    out, k = [], 0
    for i, rec in enumerate(records):
        rec = json.loads(json.dumps(rec))  # deep copy
        rec["predictor_role"] = roles[i]
        for s, st in enumerate(rec["stages"]):
            assert post.item[k] == i and post.stage[k] == s  # build_rows is item-major, stage-minor
            st["confidence"] = round(float(conf[k]), 7)
            st["ex_ante"] = round(float(prior[k]), 7)
            k += 1
        out.append(rec)
    return out


def served_gap(qp: QualityPredictor, test: list[dict[str, Any]]) -> float:
    """Largest |served - (per-stage, per-mode calibration of the raw ONNX output)| over the test rows."""
    gap = 0.0
    for role, mode in MODE_OF.items():
        rows = build_rows(test, mode)
        ref = predictor_eval.apply_per_stage(qp.sidecar["calibration"][role], rows.stage, qp.raw(rows.x))
        gap = max(gap, float(np.max(np.abs(qp.predict(rows.x) - ref))))
    return gap


def calibrated_gap(model: ModeSwitch, onnx_bytes: bytes, report: dict[str, Any], arch: str,
                   test: list[dict[str, Any]]) -> float:
    """Largest |calibrated torch - calibrated onnxruntime| on the test rows (isotonic steps amplify the
    raw difference; recorded for information, the raw parity is what must hold)."""
    sess = session(onnx_bytes)
    gap = 0.0
    for mode in MODE_OF.values():
        rows = build_rows(test, mode)
        cals = report["calibration"][f"{arch}/{mode}"]
        ort_raw = sess.run([CONFIDENCE], {FEATURES: rows.x})[0][:, 0]
        a = predictor_eval.apply_per_stage(cals, rows.stage, predict(model, rows.x))
        b = predictor_eval.apply_per_stage(cals, rows.stage, ort_raw)
        gap = max(gap, float(np.max(np.abs(a - b))))
    return gap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("artifacts/predictor"))
    ap.add_argument("--data", type=Path, default=Path("artifacts/collected.jsonl"))
    ap.add_argument("--out", type=Path, default=Path("model_repository/quality_predictor/1"))
    ap.add_argument("--replay", type=Path, default=Path("artifacts/tiny_replay.jsonl"))
    ap.add_argument("--arch", choices=list(ARCHS), default="mlp32", help="served architecture (paper's: mlp32)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    report = json.loads((args.run / "report.json").read_text())
    if report["feature_version"] != FEATURE_VERSION:
        print(f"error: {args.run} was trained on feature version {report['feature_version']}, the code is "
              f"version {FEATURE_VERSION}; rerun `make predictor`", file=sys.stderr)
        return 2
    records = read_jsonl(args.data)
    if data_sha256(records) != report["training"]["data_sha256"]:
        print(f"error: {args.data} is not the data {args.run} was trained on; rerun `make predictor`",
              file=sys.stderr)
        return 2
    model = served_model(torch.load(args.run / "models.pt", weights_only=True), args.arch)
    onnx_bytes = export_bytes(model)
    test = [r for r in records if r["split"] == "test"]
    test_x = np.concatenate([build_rows(test, m).x for m in MODE_OF.values()])
    try:
        parity = check_parity(model, onnx_bytes, test_x, n_random=1000, seed=report["training"]["seed"])
    except ParityError as exc:
        print(f"error: {exc}; nothing written", file=sys.stderr)
        return 1
    parity["max_abs_diff_calibrated_test"] = round(calibrated_gap(model, onnx_bytes, report, args.arch, test), 9)
    side = sidecar(report, args.arch, onnx_bytes, parity)
    side_text = json.dumps(side, indent=1, sort_keys=True) + "\n"
    with tempfile.TemporaryDirectory() as tmp:  # check the files as served before they replace anything
        (Path(tmp) / "model.onnx").write_bytes(onnx_bytes)
        (Path(tmp) / "model.json").write_text(side_text)
        gap = served_gap(QualityPredictor(Path(tmp) / "model.onnx"), test)
    if gap > 1e-6:
        print(f"error: served confidences differ from the sidecar's calibration of the ONNX outputs by "
              f"{gap:.3g}; nothing written", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.onnx").write_bytes(onnx_bytes)
    (args.out / "model.json").write_text(side_text)
    qp = QualityPredictor(args.out / "model.onnx")
    training = report["training"]
    roles = assign_roles(records, training["fit_on"], cal_share=training["cal_share"], seed=training["seed"])
    keep = [i for i, r in enumerate(records) if r["split"] in ("val", "test")]
    replay = replay_records([records[i] for i in keep], [roles[i] for i in keep], qp)
    args.replay.parent.mkdir(parents=True, exist_ok=True)
    with open(args.replay, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in replay)
    print(f"wrote {args.out / 'model.onnx'} ({len(onnx_bytes)} bytes, sha256 {side['onnx_sha256'][:12]}) "
          f"and model.json; parity max |diff| test {parity['max_abs_diff_test']:.2g}, random "
          f"{parity['max_abs_diff_random']:.2g}; wrote {args.replay} ({len(replay)} items)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
