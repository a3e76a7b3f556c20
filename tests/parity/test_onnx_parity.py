"""Golden parity: onnxruntime against torch, for fresh exports and for the committed model.onnx."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from optistop.features import ex_ante_features, stage_features
from optistop.predictor.model import ModeSwitch, build
from optistop.predictor.onnx_export import (
    OPSET,
    PARITY_TOL,
    ParityError,
    check_parity,
    export_bytes,
    max_abs_diff,
    random_vectors,
    session,
    torch_from_onnx,
)

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "model_repository" / "quality_predictor" / "1" / "model.onnx"


def fresh(arch: str, seed: int) -> ModeSwitch:
    torch.manual_seed(seed)
    return ModeSwitch(build(arch), build(arch)).eval()


def feature_rows() -> np.ndarray:
    rows = []
    for stage in range(3):
        rows.append(stage_features("4821+377=", "5198", [-0.01, -0.3, -1.2, -0.05], False, stage, 3))
        rows.append(stage_features("", "", [], True, stage, 3))
        rows.append(ex_ante_features("S:93715=", stage, 3))
    return np.stack(rows)


@pytest.mark.parametrize("arch", ["linear", "mlp32", "mlp128"])
def test_fresh_export_parity_and_dynamic_batch(arch: str) -> None:
    import onnx

    model = fresh(arch, 0)
    data = export_bytes(model)
    proto = onnx.load_from_string(data)
    assert proto.opset_import[0].version == OPSET >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("features", "confidence")
    assert inp.type.tensor_type.shape.dim[0].dim_param and inp.type.tensor_type.shape.dim[1].dim_value == 64
    report = check_parity(model, data, feature_rows(), n_random=1000, seed=0)
    assert report["max_abs_diff_test"] <= PARITY_TOL and report["max_abs_diff_random"] <= PARITY_TOL
    sess = session(data)
    for n in (1, 7, 64):
        x = random_vectors(n, seed=n)
        assert sess.run(["confidence"], {"features": x})[0].shape == (n, 1)
        assert max_abs_diff(model, sess, x) <= PARITY_TOL


def test_parity_failure_raises() -> None:
    a, b = fresh("mlp32", 0), fresh("mlp32", 1)
    with pytest.raises(ParityError, match="ONNX parity failed"):
        check_parity(a, export_bytes(b), feature_rows(), n_random=100)


def test_export_is_deterministic() -> None:
    assert export_bytes(fresh("mlp32", 5)) == export_bytes(fresh("mlp32", 5))


def test_random_vectors_have_valid_stage_and_mode() -> None:
    x = random_vectors(500, seed=0)
    assert x.dtype == np.float32 and x.shape == (500, 64)
    assert (x[:, 5:9].sum(axis=1) == 1).all() and set(np.unique(x[:, 29])) == {0.0, 1.0}


def test_committed_model_matches_its_sidecar_and_torch() -> None:
    assert COMMITTED.exists(), "model_repository/quality_predictor/1/model.onnx is committed; run `make predictor`"
    side = json.loads(COMMITTED.with_suffix(".json").read_text())
    data = COMMITTED.read_bytes()
    assert hashlib.sha256(data).hexdigest() == side["onnx_sha256"]
    model = torch_from_onnx(COMMITTED, side["arch"])
    sess = session(data)
    for x in (feature_rows(), random_vectors(1000, seed=0)):
        assert max_abs_diff(model, sess, x) <= PARITY_TOL
    assert side["parity"]["max_abs_diff_test"] <= PARITY_TOL and side["parity"]["max_abs_diff_random"] <= PARITY_TOL
    assert side["parity"]["n_random"] == 1000 and side["parity"]["n_test"] > 0
