"""The predictor's graph compiled for numpy (optistop.serving.onnx_numpy) against onnxruntime, and the
engine choice of QualityPredictor: the compiled graph must give onnxruntime's outputs for the committed
artifacts and for graphs built here, refuse what it does not implement, and never be used when the
load-time comparison fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optistop.serving import predictor_runtime as PR
from optistop.serving.onnx_numpy import MlpGraph, UnsupportedGraph
from optistop.serving.predictor_runtime import PredictorLoadError, QualityPredictor, random_vectors
from optistop.tensors import FEATURES, N_FEATURES

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = [ROOT / "model_repository" / "quality_predictor" / "1" / "model.onnx",
             ROOT / "models" / "chat" / "predictor" / "model.onnx"]


def ort(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = onnxruntime.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0][:, 0]


@pytest.mark.parametrize("path", ARTIFACTS, ids=lambda p: p.parent.parent.name)
def test_committed_predictors_match_onnxruntime_by_row_and_in_mixed_batches(path: Path) -> None:
    g = MlpGraph.load(path)
    assert g.switch is not None and g.switch[0] == 29   # ModeSwitch: the ex_ante slot picks the network
    x = random_vectors(2000, seed=3)
    ref = ort(path, x)
    mixed = np.asarray(g(x.tolist()))                   # both modes interleaved: split, then put back in order
    assert np.abs(mixed - ref).max() < PR.PARITY_TOL
    one = np.asarray([g([row])[0] for row in x[:300].tolist()])
    assert np.abs(one - ref[:300]).max() < PR.PARITY_TOL
    ante = x[x[:, 29] > 0.5][:3]                        # the cascade's ex-ante call: one mode, three rows
    assert np.abs(np.asarray(g(ante.tolist())) - ort(path, ante)).max() < PR.PARITY_TOL
    assert g([]) == []


def _mlp(layers: list[tuple[int, int]], rng: np.random.Generator, name: str, src: str,
         act: str = "Relu", trans_b: int = 1, alpha: float = 1.0, beta: float = 1.0) -> tuple[list, list, str]:
    """Gemm layers with ``act`` between and a final Sigmoid, reading ``src``; (nodes, initializers, output)."""
    nodes, inits, x = [], [], src
    for i, (n_in, n_out) in enumerate(layers):
        w = rng.normal(size=(n_out, n_in) if trans_b else (n_in, n_out)).astype(np.float32)
        b = rng.normal(size=n_out).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}{i}.w"), numpy_helper.from_array(b, f"{name}{i}.b")]
        y = f"{name}{i}.y"
        nodes.append(helper.make_node("Gemm", [x, f"{name}{i}.w", f"{name}{i}.b"], [y], transB=trans_b,
                                      alpha=alpha, beta=beta))
        x = y
        if i < len(layers) - 1:
            nodes.append(helper.make_node(act, [x], [f"{name}{i}.a"]))
            x = f"{name}{i}.a"
    nodes.append(helper.make_node("Sigmoid", [x], [f"{name}.p"]))
    return nodes, inits, f"{name}.p"


def _graph(nodes: list, inits: list, out: str) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("layers, trans_b, alpha, beta", [
    ([(64, 1)], 1, 1.0, 1.0),                                # the linear ablation
    ([(64, 8), (8, 5), (5, 3), (3, 1)], 0, 0.5, 2.0),       # deeper, untransposed weights, scaled Gemm
])
def test_single_network_graphs_match_onnxruntime(layers, trans_b: int, alpha: float, beta: float) -> None:
    model = _graph(*_mlp(layers, np.random.default_rng(1), "n", FEATURES, trans_b=trans_b, alpha=alpha, beta=beta))
    onnx.checker.check_model(model)
    x = random_vectors(500, seed=4)
    g = MlpGraph(model)
    assert g.switch is None
    assert np.abs(np.asarray(g(x.tolist())) - ort(model, x)).max() < PR.PARITY_TOL


def test_saturated_outputs_are_the_sigmoid_limits() -> None:
    model = _graph(*_mlp([(64, 1)], np.random.default_rng(2), "n", FEATURES))
    g = MlpGraph(model)
    x = random_vectors(4, seed=0) * 1e4                        # logits far beyond exp's range
    assert all(p in (0.0, 1.0) for p in g(x.tolist()))


def test_graphs_it_does_not_implement_are_refused_by_name() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(UnsupportedGraph, match="expected Relu between Gemm layers, found Tanh"):
        MlpGraph(_graph(*_mlp([(64, 4), (4, 1)], rng, "n", FEATURES, act="Tanh")))
    nodes, inits, out = _mlp([(64, 1)], rng, "n", FEATURES)
    nodes[-1] = helper.make_node("Softplus", [nodes[-1].input[0]], [out])
    with pytest.raises(UnsupportedGraph, match="must end in Sigmoid, found Softplus"):
        MlpGraph(_graph(nodes, inits, out))
    # a ModeSwitch whose condition is not one input column against a constant
    a, ia, oa = _mlp([(64, 1)], rng, "a", FEATURES)
    b, ib, ob = _mlp([(64, 1)], rng, "b", FEATURES)
    cond = [helper.make_node("Greater", [oa, ob], ["c"]), helper.make_node("Where", ["c", oa, ob], ["y"])]
    with pytest.raises(UnsupportedGraph, match=r"expected Greater\(one input column, constant\)"):
        MlpGraph(_graph(a + b + cond, ia + ib, "y"))
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), n)
              for n, v in (("s", [9]), ("e", [11]), ("ax", [1]))] + [numpy_helper.from_array(np.float32(0.5), "t")]
    cond = [helper.make_node("Slice", [FEATURES, "s", "e", "ax"], ["col"]),   # two columns
            helper.make_node("Greater", ["col", "t"], ["c"]), helper.make_node("Where", ["c", oa, ob], ["y"])]
    with pytest.raises(UnsupportedGraph, match="does not slice one column"):
        MlpGraph(_graph(a + b + cond, ia + ib + consts, "y"))


def _copy_artifact(tmp_path: Path) -> Path:
    src = ARTIFACTS[0]
    for name in ("model.onnx", "model.json"):
        shutil.copy(src.parent / name, tmp_path / name)
    return tmp_path / "model.onnx"


def test_engines_give_the_same_calibrated_scores() -> None:
    path = ARTIFACTS[0]
    ref, fast = QualityPredictor(path), QualityPredictor(path, engine="auto")
    assert (ref.engine, fast.engine) == ("onnxruntime", "numpy") and "of onnxruntime" in fast.engine_note
    x = random_vectors(600, seed=7)
    x = x[x[:, 8] == 0.0]                                      # stages 0-2: this predictor has three
    assert np.abs(fast.predict(x) - ref.predict(x)).max() < 1e-4   # calibration can steepen 1e-7 differences
    for i in range(40):                                        # the cascade's calls: Python floats, float32-rounded
        rows = x[i:i + 1].tolist()
        assert ref.score_trusted(rows) == ref.predict(x[i:i + 1]).tolist()
        assert fast.score_trusted(rows) == pytest.approx(ref.score_trusted(rows), abs=1e-4)
        assert all(type(c) is float and c == np.float32(c) for c in fast.score_trusted(rows))


def test_engine_auto_keeps_onnxruntime_when_the_two_disagree(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(PR, "PARITY_TOL", -1.0)                # any difference at all is too much
    qp = QualityPredictor(_copy_artifact(tmp_path), engine="auto")
    assert qp.engine == "onnxruntime" and "differ by" in qp.engine_note
    with pytest.raises(PredictorLoadError, match="predictor engine numpy: numpy and onnxruntime differ by"):
        QualityPredictor(_copy_artifact(tmp_path), engine="numpy")


def test_unknown_engine_is_refused_in_one_line() -> None:
    with pytest.raises(PredictorLoadError, match="predictor engine 'tensorrt'; valid: onnxruntime, numpy, auto"):
        QualityPredictor(ARTIFACTS[0], engine="tensorrt")


def test_the_switch_compares_the_float32_input_as_the_graph_does() -> None:
    """Rows arrive as Python floats; the graph sees them as float32. 0.5 + 1e-12 rounds to 0.5, which is not
    > 0.5: the output-aware network, as onnxruntime decides."""
    path = ARTIFACTS[0]
    row = random_vectors(1, seed=5)[0].tolist()
    row[29] = 0.5 + 1e-12
    ref = ort(path, np.asarray([row], dtype=np.float32))
    assert abs(MlpGraph.load(path)([row])[0] - ref[0]) < PR.PARITY_TOL
    row[29] = 0.0
    assert abs(MlpGraph.load(path)([row])[0] - ref[0]) < PR.PARITY_TOL   # the same branch


def test_a_slice_without_axes_or_a_batch_shaped_bias_is_refused() -> None:
    rng = np.random.default_rng(0)
    a, ia, oa = _mlp([(64, 1)], rng, "a", FEATURES)
    b, ib, ob = _mlp([(64, 1)], rng, "b", FEATURES)
    consts = [numpy_helper.from_array(np.array([29], dtype=np.int64), "s"),
              numpy_helper.from_array(np.array([30], dtype=np.int64), "e"),
              numpy_helper.from_array(np.float32(0.5), "t")]
    cond = [helper.make_node("Slice", [FEATURES, "s", "e"], ["col"]),      # axes omitted: all axes, i.e. rows
            helper.make_node("Greater", ["col", "t"], ["c"]), helper.make_node("Where", ["c", oa, ob], ["y"])]
    with pytest.raises(UnsupportedGraph, match="does not slice one column"):
        MlpGraph(_graph(a + b + cond, ia + ib + consts, "y"))
    nodes, inits, out = _mlp([(64, 3), (3, 1)], rng, "n", FEATURES)
    inits[1] = numpy_helper.from_array(np.zeros((2, 3), dtype=np.float32), "n0.b")
    with pytest.raises(UnsupportedGraph, match=r"Gemm bias of shape \[2, 3\] for 3 outputs"):
        MlpGraph(_graph(nodes, inits, out))
