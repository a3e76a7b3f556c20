"""The BLS adapter: ``CascadeBackend`` over Triton's ``InferenceRequest.async_exec``.

Stage engines are called non-decoupled (one response per request), which is how the embedded stand-ins
and the rendered TensorRT-LLM configs are set up. ``pb_utils`` is passed in so this module imports
without Triton.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from optistop import tensors as T
from optistop.cascade import StageFailure, StageOutput
from optistop.spec import CascadeSpec

STAGE_OUTPUTS = [T.OUTPUT_IDS, T.SEQUENCE_LENGTH, T.OUTPUT_LOG_PROBS]


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

    def not_ready(self) -> list[str]:
        """Names of the stage and predictor models of this server that are not ready (checked before first
        use). Remote ones (a ``url`` in the spec) are not: a dead one is a per-call fault, see remote.py."""
        names = [s.triton_model for s in self.spec.stages if not s.url]
        names += [] if self.spec.predictor_url else [self.spec.predictor_model]
        return [n for n in names if not self.pb.is_model_ready(model_name=n)]

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int) -> StageOutput:
        pb = self.pb
        model = self.spec.stages[stage].triton_model
        arrays = stage_request(input_ids, max_tokens, self.end_id, self.pad_id)
        inputs = [pb.Tensor(name, arr) for name, arr in arrays.items()]
        request = pb.InferenceRequest(model_name=model, inputs=inputs,
                                      requested_output_names=STAGE_OUTPUTS)
        resp = await request.async_exec()
        if resp.has_error():
            raise StageFailure(stage, f"stage '{model}' failed: {resp.error().message()}")
        out = {n: pb.get_output_tensor_by_name(resp, n).as_numpy() for n in STAGE_OUTPUTS}
        return parse_stage_outputs(out, max_tokens, self.end_id)

    async def score(self, features: np.ndarray) -> np.ndarray:
        if self.local is not None:
            try:
                return self.local.predict(np.ascontiguousarray(features, dtype=np.float32))
            except Exception as exc:  # a broken predictor is a fault the cascade handles, not a crash
                raise StageFailure(-1, f"quality predictor failed: {exc}") from exc
        pb = self.pb
        request = pb.InferenceRequest(
            model_name=self.spec.predictor_model,
            inputs=[pb.Tensor(T.FEATURES, np.ascontiguousarray(features, dtype=np.float32))],
            requested_output_names=[T.CONFIDENCE])
        resp = await request.async_exec()
        if resp.has_error():
            raise StageFailure(-1, f"quality predictor failed: {resp.error().message()}")
        return pb.get_output_tensor_by_name(resp, T.CONFIDENCE).as_numpy().reshape(-1)


def stage_request(input_ids: Sequence[int], max_tokens: int, end_id: int, pad_id: int) -> dict[str, np.ndarray]:
    """A stage engine request for one prompt (batch dimension included): the one place its inputs are
    built, for the BLS cascade and for collection through tritonclient (optistop.pipeline.collect)."""
    ids = np.asarray([input_ids], dtype=np.int32)                         # (1, L)
    return {
        T.INPUT_IDS: ids,
        T.INPUT_LENGTHS: np.asarray([[ids.shape[1]]], dtype=np.int32),
        T.REQUEST_OUTPUT_LEN: np.asarray([[max_tokens]], dtype=np.int32),
        T.END_ID: np.asarray([[end_id]], dtype=np.int32),
        T.PAD_ID: np.asarray([[pad_id]], dtype=np.int32),
        T.RETURN_LOG_PROBS: np.asarray([[True]], dtype=bool),
    }


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
