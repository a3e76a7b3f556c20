"""The BLS adapter: ``CascadeBackend`` over Triton's ``InferenceRequest.async_exec``.

Stage engines are called non-decoupled (one response per request), which is how the embedded stand-ins
and the rendered TensorRT-LLM configs are set up. ``pb_utils`` is passed in so this module imports
without Triton.

A dead model (its backend stub killed, not loaded, being reloaded) is told apart from one that failed on
this request: tritonserver 2.51 answers ``Stub process '<model>_0_0' is not healthy`` only after about
a second, so after such an answer the model is marked down for ``DOWN_S`` and calls to it fail at once.
The cascade loop then degrades to the living stages (optistop/cascade.py) instead of every request
paying that second while the supervisor reloads the model (optistop/server/supervisor.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, Protocol

import numpy as np

from optistop import tensors as T
from optistop.cascade import GREEDY, GenerationOptions, StageFailure, StageOutput
from optistop.serving.streaming import stream_model
from optistop.spec import CascadeSpec

STAGE_OUTPUTS = [T.OUTPUT_IDS, T.SEQUENCE_LENGTH, T.OUTPUT_LOG_PROBS]
PROBE_PROMPT = "12+35="   # the first request's self-test: every stage answers it with a few tokens
PROBE_TOKENS = 4


class StageContractError(StageFailure):
    """The stage answered, but not as the cascade needs (no log-probs, or too few): a configuration
    fault that the first-request self-test reports, unlike an error or a timeout, which may pass."""


DOWN_S = 1.0
# Substrings of Triton's errors for a model that cannot serve at all (as opposed to a failed request)
DEAD_MARKERS = ("is not healthy", "is not ready", "unknown model", "no available versions", "is not found")


def is_dead_model_error(message: str) -> bool:
    return any(m in message for m in DEAD_MARKERS)


class LocalPredictor(Protocol):
    def score_trusted(self, rows: Sequence[Sequence[float]]) -> list[float]: ...


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
        self._cancels: set[asyncio.Task] = set()   # stop requests in flight (kept referenced until done)
        self._down: dict[str, tuple[float, str]] = {}  # model -> (monotonic time it is retried, why)

    def not_ready(self, streaming: bool = False) -> list[str]:
        """Names of the stage and predictor models of this server that are not ready; ``streaming``: the
        stages' streaming variants too. Remote ones (a ``url`` in the spec) are not: a dead one is a
        per-call fault, see remote.py."""
        names = [s.triton_model for s in self.spec.stages if not s.url]
        names += [] if self.spec.predictor_url else [self.spec.predictor_model]
        names += [stream_model(s.triton_model) for s in self.spec.stages if not s.url] if streaming else []
        return [n for n in names if not self.pb.is_model_ready(model_name=n)]

    def _check_down(self, model: str, what: str, stage: int) -> None:
        """A model found dead is not called again for DOWN_S: a dead stub answers only after ~1 s."""
        down = self._down.get(model)
        if down is not None and time.monotonic() < down[0]:
            raise StageFailure(stage, f"{what} is unavailable: {down[1]}")

    def _failed(self, model: str, what: str, stage: int, msg: str) -> StageFailure:
        if is_dead_model_error(msg):
            self._down[model] = (time.monotonic() + DOWN_S, msg)
            return StageFailure(stage, f"{what} is unavailable: {msg}")
        return StageFailure(stage, f"{what} failed: {msg}")

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                       options: GenerationOptions = GREEDY) -> StageOutput:
        pb = self.pb
        model = self.spec.stages[stage].triton_model
        arrays = stage_request(input_ids, max_tokens, self.end_id, self.pad_id, self.spec.stop_token_ids, options)
        inputs = [pb.Tensor(name, arr) for name, arr in arrays.items()]
        self._check_down(model, f"stage '{model}'", stage)
        request_id = uuid.uuid4().hex
        request = pb.InferenceRequest(model_name=model, inputs=inputs, request_id=request_id,
                                      requested_output_names=STAGE_OUTPUTS)
        try:
            resp = await request.async_exec()
        except asyncio.CancelledError:   # the cascade's timeout: stop the engine working on it too
            self._cancel(model, request_id)
            raise
        if resp.has_error():
            raise self._failed(model, f"stage '{model}'", stage, resp.error().message())
        self._down.pop(model, None)
        out = {n: pb.get_output_tensor_by_name(resp, n) for n in STAGE_OUTPUTS}
        missing = [n for n, t in out.items() if t is None]
        if missing:
            raise StageContractError(stage, f"stage '{model}' returned no {', '.join(missing)}; a TensorRT-LLM stage "
                               f"needs return_log_probs and runtime_top_k (sent) and normalize_log_probs false")
        result = parse_stage_outputs({n: t.as_numpy() for n, t in out.items()}, max_tokens, self.end_id,
                                     self.spec.stop_token_ids)
        if len(result.logprobs) != len(result.token_ids):
            raise StageContractError(stage, f"stage '{model}' returned {len(result.logprobs)} log-probs for "
                               f"{len(result.token_ids)} tokens")
        return result

    def _cancel(self, model: str, request_id: str) -> None:
        """Send ``stop`` for ``request_id``: TensorRT-LLM's C++ backend and the llmapi model both cancel
        the request with that id (tensorrtllm_backend v0.19.0 model_instance_state.cc handleStopRequest;
        tensorrt_llm_bls send_cancellation_request sends the same dummy inputs). Not awaited: the
        caller has already given up on the answer."""
        pb = self.pb
        inputs = [pb.Tensor(T.INPUT_IDS, np.zeros((1, 1), dtype=np.int32)),
                  pb.Tensor(T.INPUT_LENGTHS, np.zeros((1, 1), dtype=np.int32)),
                  pb.Tensor(T.REQUEST_OUTPUT_LEN, np.zeros((1, 1), dtype=np.int32)),
                  pb.Tensor(T.STOP, np.asarray([[True]], dtype=bool))]
        request = pb.InferenceRequest(model_name=model, inputs=inputs, request_id=request_id,
                                      requested_output_names=[])
        task = asyncio.ensure_future(request.async_exec())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def self_test(self, probe_ids: Sequence[int]) -> str | None:
        """Run a short greedy probe through every stage; return why a stage cannot serve the cascade
        (log-probs missing or all zero), or None. Errors, timeouts and empty answers prove nothing about
        the contract and are left to the per-request fallbacks. Called on the first request, because
        BLS calls are not allowed in initialize()."""
        for k, stage in enumerate(self.spec.stages):
            try:
                out = await asyncio.wait_for(self.generate(k, probe_ids, PROBE_TOKENS),
                                             timeout=stage.timeout_for(PROBE_TOKENS))
            except StageContractError as exc:
                return f"stage self-test failed: {exc}"
            except (StageFailure, asyncio.TimeoutError):
                continue
            if len(out.logprobs) >= 2 and not any(out.logprobs):
                return (f"stage self-test failed: stage '{stage.triton_model}' returned all-zero output_log_probs "
                        f"for {len(out.logprobs)} tokens; set its parameter normalize_log_probs to \"false\"")
        return None

    async def generate_stream(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                              options: GenerationOptions = GREEDY) -> AsyncIterator[tuple[list[int], list[float]]]:
        """The stage's decoupled streaming variant with ``streaming`` = true (as on TensorRT-LLM's
        decoupled tensorrt_llm): yields (new token ids, log-probs) per response as the engine sends them.
        Closing the generator early (a cancelled client) cancels the engine's request where the Python
        backend can (see the finally clause)."""
        pb = self.pb
        model = stream_model(self.spec.stages[stage].triton_model)
        arrays = stage_request(input_ids, max_tokens, self.end_id, self.pad_id, self.spec.stop_token_ids, options)
        arrays[T.STREAMING] = np.asarray([[True]], dtype=bool)
        inputs = [pb.Tensor(name, arr) for name, arr in arrays.items()]
        request = pb.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=STAGE_OUTPUTS)
        responses = await request.async_exec(decoupled=True)
        loop = asyncio.get_running_loop()
        finished = False
        try:
            while True:
                # The iterator's next() blocks until the engine sends; wait in a thread so this model's
                # event loop keeps serving its other requests meanwhile.
                resp = await loop.run_in_executor(None, next, responses, None)
                if resp is None:
                    finished = True
                    return
                if resp.has_error():
                    finished = True
                    raise StageFailure(stage, f"stage '{model}' failed: {resp.error().message()}")
                if not resp.output_tensors():   # the final flag may come as an empty response
                    continue
                out = {n: pb.get_output_tensor_by_name(resp, n).as_numpy() for n in STAGE_OUTPUTS}
                n = int(np.asarray(out[T.SEQUENCE_LENGTH]).reshape(-1)[0])
                # the family's one-token end words end the stream (stop_words_list) and are no text: drop
                # them, as parse_stage_outputs does for a whole answer
                ids = [int(t) for t in _first_row(out[T.OUTPUT_IDS])[:n]]
                lps = [float(x) for x in _first_row(out[T.OUTPUT_LOG_PROBS])[:n]]
                keep = [i for i, t in enumerate(ids) if t not in self.spec.stop_token_ids]
                yield [ids[i] for i in keep], [lps[i] for i in keep if i < len(lps)]
        finally:
            if not finished:
                # ResponseIterator.cancel() arrived after python_backend 24.10 (not in the embedded 2.51
                # stub): there the engine finishes this request (at most max_tokens) unread.
                getattr(responses, "cancel", lambda: None)()

    async def score(self, features: Sequence[Sequence[float]]) -> Sequence[float]:
        if self.local is not None:
            try:
                # the loop built these features itself (optistop.features): no request checks needed
                return self.local.score_trusted(features)
            except Exception as exc:  # a broken predictor is a fault the cascade handles, not a crash
                raise StageFailure(-1, f"quality predictor failed: {exc}") from exc
        pb, model, deadline = self.pb, self.spec.predictor_model, self.spec.predictor_timeout_s
        self._check_down(model, "quality predictor", -1)
        # the spec's deadline: the cascade stops waiting then (asyncio), and Triton gets it as the request's
        # timeout (us), which its scheduler honours where the model's queue policy lets requests set one
        request = pb.InferenceRequest(
            model_name=model, inputs=[pb.Tensor(T.FEATURES, np.ascontiguousarray(features, dtype=np.float32))],
            requested_output_names=[T.CONFIDENCE], timeout=int(deadline * 1e6))
        try:
            resp = await asyncio.wait_for(request.async_exec(), deadline)
        except asyncio.TimeoutError:
            raise StageFailure(-1, f"quality predictor timed out after {deadline:g}s") from None
        if resp.has_error():
            raise self._failed(model, "quality predictor", -1, resp.error().message())
        self._down.pop(model, None)
        return pb.get_output_tensor_by_name(resp, T.CONFIDENCE).as_numpy().reshape(-1)


def stage_request(input_ids: Sequence[int], max_tokens: int, end_id: int, pad_id: int,
                  stop_ids: Sequence[int] = (), options: GenerationOptions = GREEDY) -> dict[str, np.ndarray]:
    """A stage engine request for one prompt (batch dimension included): the one place its inputs are
    built, for the BLS cascade and for collection through tritonclient (optistop.pipeline.collect).
    ``stop_ids``: the family's one-token end words; ``options``: the request's sampling and stop words."""
    ids = np.asarray([input_ids], dtype=np.int32)                         # (1, L)
    arrays = {
        T.INPUT_IDS: ids,
        T.INPUT_LENGTHS: np.asarray([[ids.shape[1]]], dtype=np.int32),
        T.REQUEST_OUTPUT_LEN: np.asarray([[max_tokens]], dtype=np.int32),
        T.END_ID: np.asarray([[end_id]], dtype=np.int32),
        T.PAD_ID: np.asarray([[pad_id]], dtype=np.int32),
        T.RETURN_LOG_PROBS: np.asarray([[True]], dtype=bool),
        # Greedy all the same, but TensorRT-LLM returns output_log_probs only when a sampling
        # parameter is set (tensorrtllm_backend docs/model_config.md, PR #798).
        T.RUNTIME_TOP_K: np.asarray([[1]], dtype=np.int32),
    }
    if not options.greedy:   # top_k 0 (no limit) with top_p: TensorRT-LLM's sampling, seeded
        arrays[T.RUNTIME_TOP_K] = np.asarray([[0]], dtype=np.int32)
        arrays[T.RUNTIME_TOP_P] = np.asarray([[options.top_p]], dtype=np.float32)
        arrays[T.TEMPERATURE] = np.asarray([[options.temperature]], dtype=np.float32)
        arrays[T.RANDOM_SEED] = np.asarray([[options.seed]], dtype=np.uint64)
    words = [[t] for t in stop_ids] + [list(w) for w in options.stop_ids]
    if words:
        arrays[T.STOP_WORDS_LIST] = T.stop_words_list(words)[None]     # (1, 2, N)
    return arrays


def parse_stage_outputs(out: dict[str, np.ndarray], max_tokens: int, end_id: int,
                        stop_ids: Collection[int] = ()) -> StageOutput:
    """Beam 0 of a tensorrt_llm response, cut to ``sequence_length``.

    A trailing end token (``end_id`` or one of the one-token stop words ``stop_ids``) is dropped whether
    or not the engine counted it in ``sequence_length``, so the TensorRT-LLM engine and the CPU stand-in
    give the cascade the same tokens.
    """
    n = int(np.asarray(out[T.SEQUENCE_LENGTH]).reshape(-1)[0])
    ids = _first_row(out[T.OUTPUT_IDS])[:n]            # (batch=1, beams, T) -> beam 0: (T,)
    lps = _first_row(out[T.OUTPUT_LOG_PROBS])[:n]
    tokens = [int(t) for t in ids]
    ended = bool(tokens) and (tokens[-1] == end_id or tokens[-1] in stop_ids)
    if ended:
        tokens = tokens[:-1]
    return StageOutput(tuple(tokens), tuple(float(x) for x in lps[: len(tokens)]),
                       hit_max_tokens=not ended and len(tokens) >= max_tokens)


def _first_row(arr: np.ndarray) -> np.ndarray:
    """The last axis at index 0 of every leading axis (works for zero-length outputs too)."""
    a = np.asarray(arr)
    return a[(0,) * (a.ndim - 1)] if a.ndim > 1 else a
