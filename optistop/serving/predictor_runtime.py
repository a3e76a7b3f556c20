"""The quality predictor at serving time: ONNX network + per-stage, per-mode calibration from the sidecar.

Importable without Triton and without torch (numpy, onnx, onnxruntime only). Used by
model_repository/quality_predictor/1/model.py (thin glue), by the cascade (in its own process) and
offline, e.g. by replay code:

    qp = QualityPredictor("model_repository/quality_predictor/1/model.onnx")   # sidecar: model.json beside
    conf = qp.predict(features)        # (N, 64) float32 -> (N,) float32, calibrated

Engines (``ENGINES``) for the network: onnxruntime, or ``numpy``: the same ONNX graph compiled to a few
numpy operations (optistop.serving.onnx_numpy), cheaper per call than onnxruntime with the cold caches
the cascade calls it with. ``auto`` is numpy when the graph's operators are supported and the two agree
within PARITY_TOL on random inputs when the file loads, else onnxruntime (``engine_note`` says why).

Each row's stage comes from its stage one-hot slots and its mode (post-hoc vs ex-ante) from the ``ex_ante``
slot (see optistop.features); the calibration for that (stage, mode) is applied to the raw ONNX output.
Loading refuses (``PredictorLoadError``) a sidecar whose feature version or slot names differ from this
code's optistop.features, or whose recorded sha256 does not match the ONNX file.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optistop import calibration
from optistop import tensors as T
from optistop.features import EX_ANTE_SLOT, FEATURE_VERSION, MAX_STAGES, SLOT_NAMES, STAGE_SLOTS
from optistop.files import read_document
from optistop.serving.onnx_numpy import MlpGraph, UnsupportedGraph
from optistop.serving.request import RequestError
from optistop.tensors import CONFIDENCE, FEATURES, N_FEATURES

SIDECAR_FORMAT = "optistop.quality_predictor/1"
SIDECAR_KEYS: tuple[str, ...] = (
    "format", "feature_version", "n_features", "slot_names", "stage_slots", "ex_ante_slot", "input",
    "output", "stages", "costs", "arch", "modes", "onnx_sha256", "opset", "calibration", "training",
    "metrics", "acceptance", "parity", "versions",
)
CAL_MODES: tuple[str, ...] = ("post_hoc", "ex_ante")
ENGINES: tuple[str, ...] = ("onnxruntime", "numpy", "auto")
PARITY_TOL = 1e-5      # largest |numpy - onnxruntime| accepted on the load-time probe (as the export's check)
PARITY_ROWS = 512
# the stage one-hot as a slice (a view; fancy indexing copies): slots 5..8 are contiguous
_ONEHOT = slice(STAGE_SLOTS[0], STAGE_SLOTS[-1] + 1)
assert tuple(range(N_FEATURES))[_ONEHOT] == STAGE_SLOTS


def random_vectors(n: int, seed: int) -> np.ndarray:
    """(n, 64) float32: N(0, 1) values, a valid stage one-hot and the ex_ante flag at random."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[:, list(STAGE_SLOTS)] = 0.0
    x[np.arange(n), np.asarray(STAGE_SLOTS)[rng.integers(0, len(STAGE_SLOTS), n)]] = 1.0
    x[:, EX_ANTE_SLOT] = rng.integers(0, 2, n).astype(np.float32)
    return x


class PredictorLoadError(RuntimeError):
    """The ONNX file and its sidecar cannot be served by this code; the message says why and what to run."""


def load_sidecar(path: str | Path) -> dict[str, Any]:
    """Read and validate a sidecar; raises PredictorLoadError naming the problem."""
    path = Path(path)
    regen = "regenerate it with `make predictor`"
    side = read_document(path, PredictorLoadError, missing=f"predictor sidecar not found; {regen}", fix=regen)
    missing = [k for k in SIDECAR_KEYS if k not in side]
    if missing:
        raise PredictorLoadError(f"{path}: sidecar lacks {missing}; {regen}")
    if side["format"] != SIDECAR_FORMAT:
        raise PredictorLoadError(f"{path}: sidecar format {side['format']!r}, expected {SIDECAR_FORMAT!r}")
    if side["feature_version"] != FEATURE_VERSION:
        raise PredictorLoadError(
            f"{path}: predictor was trained on feature version {side['feature_version']}, but "
            f"optistop.features is version {FEATURE_VERSION}; {regen}")
    if side["n_features"] != N_FEATURES or tuple(side["slot_names"]) != SLOT_NAMES:
        raise PredictorLoadError(f"{path}: feature slots differ from optistop.features "
                                 f"(same version {FEATURE_VERSION}: bump FEATURE_VERSION); {regen}")
    if tuple(side["stage_slots"]) != STAGE_SLOTS or side["ex_ante_slot"] != EX_ANTE_SLOT:
        raise PredictorLoadError(f"{path}: stage / ex_ante slot positions differ from optistop.features")
    n = len(side["stages"])
    if not 1 <= n <= MAX_STAGES:
        raise PredictorLoadError(f"{path}: {n} stages; the features encode 1..{MAX_STAGES}")
    for mode in CAL_MODES:
        entries = side["calibration"].get(mode)
        if not isinstance(entries, list) or len(entries) != n:
            raise PredictorLoadError(f"{path}: calibration.{mode} needs one entry per stage ({n})")
        for s, entry in enumerate(entries):
            try:
                calibration.validate(entry.get("calibrator"), f"calibration.{mode}[{s}]")
            except (ValueError, AttributeError) as exc:
                raise PredictorLoadError(f"{path}: {exc}") from None
    return side


def check_features(x: object, n_stages: int) -> str | None:
    """Why a request's features cannot be scored (None if they can): shape, dtype, finiteness, stage."""
    if not isinstance(x, np.ndarray):
        return f"missing input tensor {FEATURES!r}"
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        return f"input {FEATURES!r} must have shape [batch, {N_FEATURES}], got {list(x.shape)}"
    if x.dtype.kind != "f":
        return f"input {FEATURES!r} must be FP32, got {x.dtype}"
    if not np.isfinite(x).all():
        return f"input {FEATURES!r} contains NaN or infinite values"
    onehot = x[:, _ONEHOT]
    if not (((onehot == 0.0) | (onehot == 1.0)).all() and (onehot.sum(axis=1) == 1.0).all()):
        return (f"input {FEATURES!r}: slots {list(STAGE_SLOTS)} must be a one-hot stage encoding "
                f"(use optistop.features.stage_features / ex_ante_features)")
    stage = onehot.argmax(axis=1)
    if stage.max(initial=0) >= n_stages:
        return (f"input {FEATURES!r}: stage {int(stage.max())} is unknown to this predictor; "
                f"valid stages: 0..{n_stages - 1}")
    return None


class QualityPredictor:
    """Calibrated confidences from an exported predictor (model.onnx + model.json sidecar)."""

    def __init__(self, onnx_path: str | Path, sidecar_path: str | Path | None = None, threads: int = 1,
                 engine: str = "onnxruntime") -> None:
        import onnxruntime as ort

        if engine not in ENGINES:
            raise PredictorLoadError(f"predictor engine {engine!r}; valid: {', '.join(ENGINES)}")

        self.onnx_path = Path(onnx_path)
        self.sidecar_path = Path(sidecar_path) if sidecar_path else self.onnx_path.with_suffix(".json")
        self.sidecar = load_sidecar(self.sidecar_path)
        try:
            data = self.onnx_path.read_bytes()
        except FileNotFoundError:
            raise PredictorLoadError(f"{self.onnx_path}: ONNX file not found; run `make predictor`") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sidecar["onnx_sha256"]:
            raise PredictorLoadError(f"{self.onnx_path}: sha256 {digest[:12]}... does not match the sidecar's "
                                     f"{self.sidecar['onnx_sha256'][:12]}...; the two files are from different "
                                     f"runs of `make predictor`")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        self.engine, self.engine_note = "onnxruntime", ""
        self._graph: MlpGraph | None = None
        if engine != "onnxruntime":
            self._graph, self.engine_note = self._numpy_engine(data)
            if self._graph is not None:
                self.engine = "numpy"
            elif engine == "numpy":
                raise PredictorLoadError(f"{self.onnx_path}: predictor engine numpy: {self.engine_note}")
        self.stages: tuple[str, ...] = tuple(self.sidecar["stages"])
        # (stage, mode) -> its calibrator, parameters read once; key = 2 * stage + (1 if ex-ante else 0)
        cals = [self.sidecar["calibration"][mode][stage]["calibrator"]
                for stage in range(len(self.stages)) for mode in CAL_MODES]
        self._cal = [calibration.compiled(c) for c in cals]          # batches (the quality_predictor model)
        self._cal1 = [calibration.compiled_scalar(c) for c in cals]  # one score at a time (the cascade)

    def _numpy_engine(self, data: bytes) -> tuple[MlpGraph | None, str]:
        """The graph compiled for numpy, checked against onnxruntime on random rows of both modes, as one
        mixed batch and one row at a time (the cascade's calls); (None, why) when it cannot be used."""
        try:
            graph = MlpGraph.load(data)
        except UnsupportedGraph as exc:
            return None, f"the graph is not supported ({exc})"
        probe = random_vectors(PARITY_ROWS, seed=0)
        ref = self.session.run([CONFIDENCE], {FEATURES: probe})[0][:, 0].tolist()
        rows = probe.tolist()
        mine = graph(rows) + [graph([row])[0] for row in rows[::7]]
        diff = max(abs(a - b) for a, b in zip(mine, ref + ref[::7]))
        if not diff <= PARITY_TOL:
            return None, f"numpy and onnxruntime differ by {diff:.3g} > {PARITY_TOL} on random inputs"
        return graph, f"numpy within {diff:.2g} of onnxruntime on {PARITY_ROWS} random rows"

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated network outputs (N,) float32 for valid (N, 64) features."""
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        if self._graph is not None:
            return np.asarray(self._graph(np.asarray(x, dtype=np.float32).tolist()), dtype=np.float32)
        out = self.session.run([CONFIDENCE], {FEATURES: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return out[:, 0]

    def calibrate(self, x: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Apply each row's (stage, mode) calibrator to its raw score; (N,) float32."""
        if len(x) <= MAX_STAGES:   # a few rows: one score at a time
            return np.array(self._calibrate_rows(x.tolist(), raw.tolist()), dtype=np.float32)
        key = x[:, _ONEHOT].argmax(axis=1) * 2 + (x[:, EX_ANTE_SLOT] > 0.5)
        out = np.empty(len(x), dtype=np.float64)
        for k in np.unique(key):
            rows = key == k
            out[rows] = self._cal[int(k)](raw[rows])
        return out.astype(np.float32)

    def _calibrate_rows(self, rows: Sequence[Sequence[float]], raw: list[float]) -> list[float]:
        keys = [row[_ONEHOT].index(1.0) * 2 + (row[EX_ANTE_SLOT] > 0.5) for row in rows]
        return [self._cal1[k](r) for k, r in zip(keys, raw)]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Calibrated confidences (N,) float32 for (N, 64) features; ValueError for invalid input."""
        x = np.asarray(features)
        if x.ndim == 1:
            x = x[None, :]
        if x.dtype.kind == "f":
            x = x.astype(np.float32, copy=False)
        error = check_features(x, self.n_stages)
        if error:
            raise ValueError(error)
        return self.calibrate(x, self.raw(x))

    def score_trusted(self, rows: Sequence[Sequence[float]]) -> list[float]:
        """``predict`` for the in-process cascade: a few rows of 64 Python floats it built with
        optistop.features, so the checks that guard external requests are skipped; Python floats out,
        rounded to float32 as ``predict`` and the quality_predictor model return them. Written for the
        cold caches it runs in, where each distinct numpy operation costs 10-50 us: with the numpy
        engine, one array in, three matmuls, two maxima, one list out."""
        if self._graph is not None:
            raw = self._graph(rows)
        else:
            raw = self.raw(np.asarray(rows, dtype=np.float32)).tolist()
        return array("f", self._calibrate_rows(rows, raw)).tolist()

    def predict_requests(self, batches: list[np.ndarray | None]) -> list[np.ndarray | RequestError]:
        """One result per request: (b, 1) float32 confidences, or a RequestError for that request only.

        Valid requests are scored in one onnxruntime call (dynamic batching gathers them).
        """
        errors = [check_features(b, self.n_stages) for b in batches]
        good = [i for i, e in enumerate(errors) if e is None]
        results: dict[int, np.ndarray | RequestError] = {i: RequestError(e) for i, e in enumerate(errors) if e}
        if good:
            x = np.concatenate([np.asarray(batches[i], dtype=np.float32) for i in good], axis=0)
            conf = self.calibrate(x, self.raw(x))
            start = 0
            for i in good:
                n = len(batches[i])  # type: ignore[arg-type]
                results[i] = T.PREDICTOR.cast_outputs({T.CONFIDENCE: conf[start:start + n, None]})[T.CONFIDENCE]
                start += n
        return [results[i] for i in range(len(batches))]
