"""The served quality predictor: the offline class, the Triton model.py under a hand-written fake
``triton_python_backend_utils``, the config.pbtxt contract, and refusal of mismatched artifacts."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from optistop import calibration
from optistop.features import FEATURE_VERSION, ex_ante_features, stage_features
from optistop.serving.predictor_runtime import PredictorLoadError, QualityPredictor, check_features
from optistop.tensors import PREDICTOR
from tests import fake_pb_utils as pb

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "model_repository" / "quality_predictor"


def model_config_json() -> dict:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((MODEL_DIR / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return json.loads(json_format.MessageToJson(cfg, preserving_proto_field_name=True))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the committed model directory, safe to tamper with."""
    dst = tmp_path / "quality_predictor"
    shutil.copytree(MODEL_DIR, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def load_triton_model(repo: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("quality_predictor_model", repo / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(model_config_json()), "model_repository": str(repo),
                      "model_version": "1", "model_name": "quality_predictor"})
    return model


def good_features() -> np.ndarray:
    return np.stack([stage_features("4821+377=", "5198", [-0.01, -0.3, -1.2, -0.05], False, 0, 3),
                     ex_ante_features("4821+377=", 1, 3), stage_features("R:abc=", "cba", [-0.1] * 3, False, 2, 3)])


# --- tests ----------------------------------------------------------------------------------------------------

def test_config_pbtxt_matches_the_contract() -> None:
    cfg = model_config_json()
    assert cfg["name"] == "quality_predictor" and cfg["backend"] == "python"
    assert cfg["max_batch_size"] > 0 and "dynamic_batching" in cfg
    (inp,), (out,) = cfg["input"], cfg["output"]
    for got, want in ((inp, PREDICTOR.inputs[0]), (out, PREDICTOR.outputs[0])):
        assert (got["name"], got["data_type"], [int(d) for d in got["dims"]]) == (
            want.name, f"TYPE_{want.dtype}", list(want.dims))


def test_model_py_is_thin_glue() -> None:
    assert len((MODEL_DIR / "1" / "model.py").read_text().splitlines()) <= 80


def test_offline_predictor_is_calibrated_per_stage_and_mode() -> None:
    qp = QualityPredictor(MODEL_DIR / "1" / "model.onnx")
    x = good_features()
    out = qp.predict(x)
    assert out.dtype == np.float32 and out.shape == (3,)
    assert np.all((out >= calibration.P_MIN) & (out <= 1 - calibration.P_MIN))
    raw = qp.raw(x)
    cal = qp.sidecar["calibration"]
    want = [calibration.apply(cal["post_hoc"][0]["calibrator"], raw[:1])[0],
            calibration.apply(cal["ex_ante"][1]["calibrator"], raw[1:2])[0],
            calibration.apply(cal["post_hoc"][2]["calibrator"], raw[2:])[0]]
    np.testing.assert_allclose(out, want, atol=1e-6)
    np.testing.assert_array_equal(qp.predict(x[0]), out[:1])  # one vector is a batch of one
    assert qp.predict(np.zeros((0, 64), dtype=np.float32)).shape == (0,)


def test_bad_features_are_named() -> None:
    x = good_features()
    assert check_features(x, 3) is None
    assert "shape [batch, 64]" in check_features(x[:, :10], 3)
    assert "FP32" in check_features(x.astype(np.int32), 3)
    nan = x.copy()
    nan[0, 40] = np.nan
    assert "NaN" in check_features(nan, 3)
    two = x.copy()
    two[0, 5:9] = [1, 1, 0, 0]
    assert "one-hot" in check_features(two, 3)
    four = x.copy()
    four[0, 5:9] = [0, 0, 0, 1]
    assert "valid stages: 0..2" in check_features(four, 3)
    assert "missing" in check_features(None, 3)
    with pytest.raises(ValueError, match="one-hot"):
        QualityPredictor(MODEL_DIR / "1" / "model.onnx").predict(two)


def test_triton_model_answers_each_request(repo: Path, monkeypatch) -> None:
    model = load_triton_model(repo, monkeypatch)
    x = good_features()
    bad = np.zeros((1, 10), dtype=np.float32)
    responses = model.execute([pb.request(features=x[:2]), pb.request(features=bad), pb.request(),
                               pb.request(features=x[2:])])
    assert len(responses) == 4
    ok = QualityPredictor(repo / "1" / "model.onnx").predict(x)
    (t0,), (t3,) = responses[0].output_tensors(), responses[3].output_tensors()
    assert t0.name() == "confidence" and t0.as_numpy().dtype == np.float32 and t0.as_numpy().shape == (2, 1)
    np.testing.assert_array_equal(t0.as_numpy()[:, 0], ok[:2])
    np.testing.assert_array_equal(t3.as_numpy()[:, 0], ok[2:])
    for r, needle in ((responses[1], "shape [batch, 64]"), (responses[2], "missing input tensor 'features'")):
        assert r.has_error() and r.error().code() == pb.TritonError.INVALID_ARG and needle in r.error().message()
    assert not responses[0].has_error() and not responses[3].has_error()
    model.finalize()


def test_triton_model_hides_internal_failures(repo: Path, monkeypatch) -> None:
    model = load_triton_model(repo, monkeypatch)

    def broken(*args, **kwargs):
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(model.predictor, "raw", broken)
    pb.Logger.lines.clear()
    (r,) = model.execute([pb.request(features=good_features())])
    assert r.error().code() == pb.TritonError.INTERNAL and "Traceback" not in r.error().message()
    assert any("onnxruntime exploded" in line for line in pb.Logger.lines)


def test_refuses_another_feature_version(repo: Path, monkeypatch) -> None:
    side_path = repo / "1" / "model.json"
    side = json.loads(side_path.read_text())
    side["feature_version"] = FEATURE_VERSION + 1
    side_path.write_text(json.dumps(side))
    with pytest.raises(PredictorLoadError, match=f"feature version {FEATURE_VERSION + 1}.*make predictor"):
        load_triton_model(repo, monkeypatch)


def test_refuses_mismatched_or_broken_files(repo: Path) -> None:
    onnx_path, side_path = repo / "1" / "model.onnx", repo / "1" / "model.json"
    side = json.loads(side_path.read_text())
    side_path.write_text(json.dumps({**side, "slot_names": side["slot_names"][::-1]}))
    with pytest.raises(PredictorLoadError, match="slots differ"):
        QualityPredictor(onnx_path)
    side_path.write_text(json.dumps({k: v for k, v in side.items() if k != "calibration"}))
    with pytest.raises(PredictorLoadError, match="lacks"):
        QualityPredictor(onnx_path)
    bad_cal = json.loads(json.dumps(side))
    bad_cal["calibration"]["ex_ante"][0]["calibrator"] = {"method": "platt"}
    side_path.write_text(json.dumps(bad_cal))
    with pytest.raises(PredictorLoadError, match=r"calibration.ex_ante\[0\]"):
        QualityPredictor(onnx_path)
    side_path.write_text(json.dumps(side))
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(PredictorLoadError, match="sha256"):
        QualityPredictor(onnx_path)
    side_path.write_text("{not json")
    with pytest.raises(PredictorLoadError, match="not valid JSON"):
        QualityPredictor(onnx_path)
