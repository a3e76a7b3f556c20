"""The predictor pipeline end to end on synthetic collected data: train -> calibrate -> export -> serve.

No LLM runs here: records in the replay schema are made up (labels correlated with level, stage and the
fake log-probs), so this checks the plumbing, the sidecar schema and determinism in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from optistop.features import FEATURE_VERSION, SLOT_NAMES
from optistop.predictor.model import ARCHS, build_rows, read_jsonl
from optistop.serving.predictor_runtime import SIDECAR_KEYS, QualityPredictor, load_sidecar
from optistop.tiny.tasks import generate_split, grade

ROOT = Path(__file__).resolve().parents[2]
STAGES = (("small", 1.0), ("medium", 4.5), ("large", 10.0))


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"predictor_export_{name}", ROOT / "predictor_export" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_records(per_cell: dict[str, int], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for split, n in per_cell.items():
        for it in generate_split(split, n, seed=seed):
            stages = []
            for s, (name, cost) in enumerate(STAGES):
                ok = rng.random() < min(0.95, 0.2 + 0.3 * s + 0.15 * (4 - it.level))
                resp = it.answer if ok else it.answer[::-1] + "7"
                p = rng.uniform(0.5, 1.0) if ok else rng.uniform(0.05, 0.8)
                lps = [math.log(p)] + [math.log(rng.uniform(0.8, 1.0)) for _ in resp[1:]]
                stages.append({"model": name, "cost": cost, "correct": grade(it.prompt, resp), "response": resp,
                               "token_ids": [4 + ord(c) % 40 for c in resp], "logprobs": lps,
                               "hit_max_tokens": False, "latency_ms": rng.uniform(1, 3), "batch_size": 8})
            records.append({"id": it.id, "prompt": it.prompt, "split": split, "family": it.family,
                            "level": it.level, "answer": it.answer, "stages": stages})
    return records


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("pipeline")
    data = d / "collected.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records({"train": 12, "val": 6, "test": 6})))
    train, export = script("train"), script("export_onnx")
    for name in ("run1", "run2"):
        assert train.main(["--data", str(data), "--out", str(d / name), "--max-epochs", "4"]) == 0
    for name in ("run1", "run2"):
        assert export.main(["--run", str(d / name), "--data", str(data), "--out", str(d / name / "qp" / "1"),
                            "--replay", str(d / name / "replay.jsonl")]) == 0
    return {"dir": d, "data": data, "run": d / "run1", "qp": d / "run1" / "qp" / "1"}


def test_metric_table_is_complete(run) -> None:
    report = json.loads((run["run"] / "report.json").read_text())
    table = report["metrics"]
    assert table["stages"] == [s for s, _ in STAGES] and table["ece_bins"] == 10
    for stage in table["stages"]:
        for arch in ARCHS:
            for mode in ("paper_b2", "prompt_only", "output_aware"):
                cell = table["per_stage"][stage][arch][mode]
                assert {"auroc", "brier", "ece", "brier_raw", "ece_raw", "calibration", "n"} <= set(cell)
                assert cell["n"] == 72 and 0 <= cell["brier"] <= 1 and 0 <= cell["ece"] <= 1
    assert set(table["pooled_auroc"]) == set(ARCHS)
    acc = report["acceptance"]
    assert acc["stage"] == "small" and acc["arch"] == "mlp32" and isinstance(acc["auroc_gain_met"], bool)


def test_same_seed_same_everything(run) -> None:
    r1, r2 = run["dir"] / "run1", run["dir"] / "run2"
    assert (r1 / "report.json").read_bytes() == (r2 / "report.json").read_bytes()
    s1, s2 = torch.load(r1 / "models.pt"), torch.load(r2 / "models.pt")
    assert all(torch.equal(s1[k][p], s2[k][p]) for k in s1 for p in s1[k])
    assert (r1 / "qp/1/model.onnx").read_bytes() == (r2 / "qp/1/model.onnx").read_bytes()
    assert (r1 / "qp/1/model.json").read_bytes() == (r2 / "qp/1/model.json").read_bytes()


def test_sidecar_schema(run) -> None:
    side = load_sidecar(run["qp"] / "model.json")
    assert set(SIDECAR_KEYS) <= set(side)
    assert side["feature_version"] == FEATURE_VERSION and side["slot_names"] == list(SLOT_NAMES)
    assert side["arch"] == "mlp32" and side["opset"] >= 17
    assert {"torch", "onnx", "onnxruntime"} <= set(side["versions"])
    assert len(side["training"]["data_sha256"]) == 64 and side["training"]["seed"] == 0
    assert side["parity"]["max_abs_diff_test"] <= 1e-5 and side["parity"]["max_abs_diff_random"] <= 1e-5
    assert side["parity"]["n_random"] == 1000 and side["parity"]["n_test"] == 2 * 72 * 3
    for mode in ("post_hoc", "ex_ante"):
        assert [e["name"] for e in side["calibration"][mode]] == [s for s, _ in STAGES]


def test_replay_matches_the_served_predictor(run) -> None:
    replay = read_jsonl(run["dir"] / "run1" / "replay.jsonl")
    records = [r for r in read_jsonl(run["data"]) if r["split"] in ("val", "test")]
    assert [r["id"] for r in replay] == [r["id"] for r in records]
    qp = QualityPredictor(run["qp"] / "model.onnx")
    post = qp.predict(build_rows(records, "output_aware").x).reshape(len(records), 3)
    ante = qp.predict(build_rows(records, "prompt_only").x).reshape(len(records), 3)
    for i, rec in enumerate(replay):
        assert set(rec) >= {"id", "prompt", "split", "family", "level", "answer", "stages", "predictor_role"}
        assert rec["predictor_role"] in (("test",) if rec["split"] == "test" else ("fit", "calibration"))
        for s, st in enumerate(rec["stages"]):
            assert st["model"] == STAGES[s][0] and 0 < st["confidence"] < 1 and 0 < st["ex_ante"] < 1
            assert st["confidence"] == pytest.approx(float(post[i, s]), abs=1e-6)
            assert st["ex_ante"] == pytest.approx(float(ante[i, s]), abs=1e-6)


def test_export_refuses_other_data(run, tmp_path) -> None:
    other = tmp_path / "other.jsonl"
    recs = read_jsonl(run["data"])
    recs[0]["stages"][0]["correct"] = not recs[0]["stages"][0]["correct"]
    other.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert script("export_onnx").main(["--run", str(run["run"]), "--data", str(other),
                                       "--out", str(tmp_path / "qp"), "--replay", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "qp").exists()


def test_export_fails_loudly_on_parity(run, tmp_path, monkeypatch, capsys) -> None:
    from optistop.predictor import export
    real = export.check_parity

    def perturbed(model, onnx_bytes, test_x, **kw):  # as if onnxruntime disagreed with torch by 1e-3
        with torch.no_grad():
            model.post_hoc.network[6].bias += 1e-3 / 0.25  # sigmoid slope <= 1/4
        return real(model, onnx_bytes, test_x, **kw)

    monkeypatch.setattr(export, "check_parity", perturbed)
    rc = export.main(["--run", str(run["run"]), "--data", str(run["data"]), "--out", str(tmp_path / "qp"),
                      "--replay", str(tmp_path / "r")])
    assert rc == 1 and "ONNX parity failed" in capsys.readouterr().err
    assert not (tmp_path / "qp").exists() and not (tmp_path / "r").exists()


def test_served_confidences_are_calibrated_per_stage_and_mode(run) -> None:
    qp = QualityPredictor(run["qp"] / "model.onnx")
    recs = read_jsonl(run["data"])[:5]
    x = build_rows(recs, "output_aware").x
    raw = qp.raw(x)
    side = qp.sidecar
    stage = np.argmax(x[:, 5:9], axis=1)
    from optistop import calibration

    want = [calibration.apply(side["calibration"]["post_hoc"][s]["calibrator"], np.array([r]))[0]
            for s, r in zip(stage, raw)]
    np.testing.assert_allclose(qp.predict(x), want, atol=1e-6)
