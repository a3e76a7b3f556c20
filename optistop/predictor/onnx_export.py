"""ONNX export of the served predictor, the torch-vs-onnxruntime parity check, and the JSON sidecar.

The exported graph is ``ModeSwitch``: (B, 64) float32 ``features`` -> (B, 1) float32 ``confidence`` (raw,
uncalibrated; the serving code applies the sidecar's per-stage calibration). Opset 17, dynamic batch axis,
``onnx.checker`` clean. Initializer names are the torch state-dict keys, so the weights can be read back
into torch (``torch_from_onnx``) to check a committed file without its training run.

Sidecar (``model.json`` beside ``model.onnx``), checked by ``optistop.serving.predictor_runtime.load_sidecar``:
    format, feature_version, n_features, slot_names, stage_slots, ex_ante_slot, input, output,
    stages, costs, arch, modes {post_hoc, ex_ante}, onnx_sha256, opset,
    calibration {post_hoc: [per stage], ex_ante: [per stage]}   (entries as predictor_eval.calibrate_per_stage)
    training {seed, config, data_file, data_sha256, n_items, n_rows, positives, epochs},
    metrics (predictor_eval.metric_table), acceptance, parity {max_abs_diff_test, ...}, versions.
"""

from __future__ import annotations

import hashlib
import io
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optistop.predictor.model import ModeSwitch, build
from optistop.serving.predictor_runtime import random_vectors
from optistop.tensors import CONFIDENCE, FEATURES, N_FEATURES

OPSET = 17
PARITY_TOL = 1e-5


class ParityError(RuntimeError):
    """onnxruntime and torch disagree beyond PARITY_TOL: the export must not ship."""


def export_bytes(model: ModeSwitch) -> bytes:
    """Serialized, checked ONNX model of ``model`` (eval mode, batch axis dynamic)."""
    import onnx

    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in favour of one needing onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, N_FEATURES),), buf, dynamo=False, opset_version=OPSET,
                          input_names=[FEATURES], output_names=[CONFIDENCE],
                          dynamic_axes={FEATURES: {0: "batch"}, CONFIDENCE: {0: "batch"}})
    data = buf.getvalue()
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    if proto.opset_import[0].version < 17:
        raise RuntimeError(f"exported opset {proto.opset_import[0].version} < 17")
    return data


def session(onnx_bytes_or_path: bytes | str | Path, threads: int = 1):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    src = onnx_bytes_or_path if isinstance(onnx_bytes_or_path, bytes) else str(onnx_bytes_or_path)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def max_abs_diff(model: torch.nn.Module, sess, x: np.ndarray) -> float:
    """Largest |torch - onnxruntime| over the rows of ``x`` (N, 64)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = sess.run([CONFIDENCE], {FEATURES: x})[0]
    if got.shape != ref.shape:
        raise ParityError(f"onnxruntime output shape {got.shape} != torch {ref.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if len(x) else 0.0


def check_parity(model: torch.nn.Module, onnx_bytes: bytes, test_x: np.ndarray, n_random: int = 1000,
                 seed: int = 0, tol: float = PARITY_TOL) -> dict[str, Any]:
    """Parity on the test rows plus ``n_random`` random vectors; raises ParityError beyond ``tol``."""
    sess = session(onnx_bytes)
    d_test = max_abs_diff(model, sess, test_x)
    d_rand = max_abs_diff(model, sess, random_vectors(n_random, seed))
    report = {"max_abs_diff_test": d_test, "n_test": int(len(test_x)), "max_abs_diff_random": d_rand,
              "n_random": n_random, "tolerance": tol}
    if not (d_test <= tol and d_rand <= tol):
        raise ParityError(f"ONNX parity failed: max |onnxruntime - torch| = {max(d_test, d_rand):.3g} "
                          f"> {tol} (test split {d_test:.3g}, random vectors {d_rand:.3g})")
    return report


def torch_from_onnx(path: str | Path, arch: str) -> ModeSwitch:
    """Rebuild the torch ModeSwitch of ``arch`` from an exported file's initializers."""
    import onnx
    from onnx import numpy_helper

    model = ModeSwitch(build(arch), build(arch))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state = {k: torch.from_numpy(np.array(inits[k])) for k in model.state_dict()}
    model.load_state_dict(state)
    return model.eval()


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
