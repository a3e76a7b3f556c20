"""The BLS adapter: ``CascadeBackend`` over Triton's ``InferenceRequest.async_exec``.

Stage engines are called non-decoupled (one response per request), which is how the embedded stand-ins
and the rendered TensorRT-LLM configs are set up. ``pb_utils`` is passed in so this module imports
without Triton.

A dead model (its backend stub killed, not loaded, being reloaded) is told apart from one that failed on
this request: tritonserver 2.51 answers ``Stub process '<model>_0_0' is not healthy`` only after about
a second, so after such an answer the model is marked down for ``DOWN_S`` and calls to it fail at once.
The cascade loop then degrades to the living stages (optistop/cascade.py) instead of every request
paying that second while the supervisor reloads the model (optistop/serving/supervisor.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from optistop import tensors as T
from optistop.cascade import StageFailure, StageOutput
from optistop.spec import CascadeSpec

STAGE_OUTPUTS = [T.OUTPUT_IDS, T.SEQUENCE_LENGTH, T.OUTPUT_LOG_PROBS]
DOWN_S = 1.0
# Substrings of Triton's errors for a model that cannot serve at all (as opposed to a failed request)
DEAD_MARKERS = ("is not healthy", "is not ready", "unknown model", "no available versions", "is not found")


def is_dead_model_error(message: str) -> bool:
    return any(m in message for m in DEAD_MARKERS)


class LocalPredictor(Protocol):
    def predict(self, features: np.ndarray) -> np.ndarray: ...


class BlsBackend:
    """Stage engines through BLS; the predictor through BLS too, unless ``local`` scores in-process
    (optistop.serving.predictor_runtime.QualityPredictor over the same ONNX file and sidecar)."""

    def __init__(self, pb_utils: Any, spec: CascadeSpec, end_id: int, pad_id: int,
                 local: LocalPredictor | None = None) -> None:
        self.pb = pb_utils
        self.local = local
        self.spec = spec
        self.end_id = end_id
        self.pad_id = pad_id
        self._down: dict[str, tuple[float, str]] = {}  # model -> (monotonic time it is retried, why)

    async def _exec(self, model: str, what: str, stage: int, inputs: list, outputs: list[str]):
        """One BLS call; a dead model raises ``StageFailure`` saying so, and is not retried for DOWN_S."""
        down = self._down.get(model)
        if down is not None and time.monotonic() < down[0]:
            raise StageFailure(stage, f"{what} is unavailable: {down[1]}")
        request = self.pb.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs)
        resp = await request.async_exec()
        if resp.has_error():
            msg = resp.error().message()
            if is_dead_model_error(msg):
                self._down[model] = (time.monotonic() + DOWN_S, msg)
                raise StageFailure(stage, f"{what} is unavailable: {msg}")
            raise StageFailure(stage, f"{what} failed: {msg}")
        self._down.pop(model, None)
        return resp

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int) -> StageOutput:
        pb = self.pb
        model = self.spec.stages[stage].triton_model
        ids = np.asarray([input_ids], dtype=np.int32)                     # (1, L)
        inputs = [
            pb.Tensor(T.INPUT_IDS, ids),
            pb.Tensor(T.INPUT_LENGTHS, np.asarray([[ids.shape[1]]], dtype=np.int32)),
            pb.Tensor(T.REQUEST_OUTPUT_LEN, np.asarray([[max_tokens]], dtype=np.int32)),
            pb.Tensor(T.END_ID, np.asarray([[self.end_id]], dtype=np.int32)),
            pb.Tensor(T.PAD_ID, np.asarray([[self.pad_id]], dtype=np.int32)),
            pb.Tensor(T.RETURN_LOG_PROBS, np.asarray([[True]], dtype=bool)),
        ]
        resp = await self._exec(model, f"stage '{model}'", stage, inputs, STAGE_OUTPUTS)
        out = {n: pb.get_output_tensor_by_name(resp, n).as_numpy() for n in STAGE_OUTPUTS}
        return parse_stage_outputs(out, max_tokens, self.end_id)

    async def score(self, features: np.ndarray) -> np.ndarray:
        if self.local is not None:
            try:
                return self.local.predict(np.ascontiguousarray(features, dtype=np.float32))
            except Exception as exc:  # a broken predictor is a fault the cascade handles, not a crash
                raise StageFailure(-1, f"quality predictor failed: {exc}") from exc
        pb = self.pb
        resp = await self._exec(self.spec.predictor_model, "quality predictor", -1,
                                [pb.Tensor(T.FEATURES, np.ascontiguousarray(features, dtype=np.float32))],
                                [T.CONFIDENCE])
        return pb.get_output_tensor_by_name(resp, T.CONFIDENCE).as_numpy().reshape(-1)


def parse_stage_outputs(out: dict[str, np.ndarray], max_tokens: int, end_id: int) -> StageOutput:
    """Beam 0 of a tensorrt_llm response, cut to ``sequence_length``.

    A trailing end token is dropped whether or not the engine counted it in ``sequence_length``, so the
    TensorRT-LLM engine and the CPU stand-in give the cascade the same tokens.
    """
    n = int(np.asarray(out[T.SEQUENCE_LENGTH]).reshape(-1)[0])
    ids = _first_row(out[T.OUTPUT_IDS])[:n]            # (batch=1, beams, T) -> beam 0: (T,)
    lps = _first_row(out[T.OUTPUT_LOG_PROBS])[:n]
    tokens = [int(t) for t in ids]
    ended = bool(tokens) and tokens[-1] == end_id
    if ended:
        tokens = tokens[:-1]
    return StageOutput(tuple(tokens), tuple(float(x) for x in lps[: len(tokens)]),
                       hit_max_tokens=not ended and len(tokens) >= max_tokens)


def _first_row(arr: np.ndarray) -> np.ndarray:
    """The last axis at index 0 of every leading axis (works for zero-length outputs too)."""
    a = np.asarray(arr)
    return a[(0,) * (a.ndim - 1)] if a.ndim > 1 else a
