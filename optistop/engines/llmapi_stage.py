"""A stage engine on TensorRT-LLM's LLM API (PyTorch backend) that serves the project's stage contract.

The cascade cannot tell it from a TensorRT engine or the CPU stand-in: token ids in (``optistop.tensors
.STAGE``); ``output_ids``, ``sequence_length``, ``cum_log_probs`` and one ``output_log_probs`` value per
generated token out, in the shapes of optistop.engines.stage.to_tensors. bls.py is unchanged.

What the LLM API is asked for (``SamplingParams``): ``max_tokens`` = request_output_len, ``end_id`` /
``pad_id``, ``top_k`` = runtime_top_k (1, greedy, unless sent), ``temperature`` when sent, one-token stop
words as ``stop_token_ids`` with ``include_stop_str_in_output`` (the stop token stays in the output, as
TensorRT-LLM's C++ backend and the CPU stage keep it), ``logprobs=1`` (the chosen token's log-prob per
position), ``detokenize=False``. Prompts go in as token ids.

Shapes checked against NVIDIA/TensorRT-LLM sources (the 1.x line: tensorrt_llm/sampling_params.py at
000a01de, version.py 1.0.0rc4; tensorrt_llm/executor/result.py at 005bc848; the triton_backend llmapi
model.py at 044a90d2): ``LLM.generate_async(inputs, sampling_params, streaming=...)`` returns a
``RequestOutput`` (async-iterable when streaming, ``await .aresult()`` otherwise; ``.abort()``), whose
``outputs[0]`` is a ``CompletionOutput`` with ``token_ids: list[int]``, ``logprobs``: either
``list[dict[int, Logprob]]`` (``Logprob(logprob, rank)``, computed after the runtime) or ``list[float]``
(straight from the executor), ``cumulative_logprob: float | None`` and ``finish_reason`` in
{'stop', 'length', 'timeout', 'cancelled', None}. Both log-prob shapes are read.
``logprobs=1`` holds the chosen token in every version read: the 1.x SamplingParams returns the top-K
per position (under greedy decoding the top-1 is the chosen token), and later examples document
"sampled token first + top-K" (``logprobs=0`` would return nothing where ``return_log_probs =
bool(logprobs)``). Sampling (runtime_top_k > 1) on a version of the first kind may leave the chosen token
out: that request fails naming it rather than returning a wrong log-prob.

Placement: ``CUDA_VISIBLE_DEVICES`` from the stage's GPU ids is set before tensorrt_llm is imported
(importing it initialises CUDA; the stock llmapi model does this only with more than one instance).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from optistop import tensors as T
from optistop.engines.runner import Generated
from optistop.engines.stage import _int, parse_prompt, to_tensors
from optistop.serving.request import RequestError

FINISH_REASONS = ("stop", "length", "timeout", "cancelled", None)


def set_visible_gpus(gpu_ids: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Show TensorRT-LLM only this stage's GPUs ("1,2"). Must run before tensorrt_llm is imported."""
    ids = [g.strip() for g in gpu_ids.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise ValueError(f"parameter gpu_device_ids is {gpu_ids!r}; expected GPU ids such as '0' or '1,2'")
    if "tensorrt_llm" in sys.modules and environ is os.environ:
        raise RuntimeError("tensorrt_llm is already imported: CUDA_VISIBLE_DEVICES would not apply")
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    environ["TRTLLM_VISIBLE_DEVICES"] = ",".join(ids)   # what TensorRT-LLM hands to its MPI workers


@dataclass(frozen=True)
class StageRequest:
    prompt_ids: list[int]
    max_tokens: int
    end_id: int
    pad_id: int
    top_k: int
    temperature: float | None
    stop_token_ids: list[int]
    log_probs: bool
    top_p: float | None = None
    seed: int | None = None


def parse(inputs: Mapping[str, np.ndarray | None], *, end_id: int, pad_id: int, max_seq_len: int,
          vocab_size: int) -> StageRequest:
    """One request's stage-contract inputs, or RequestError naming the bad one and what is valid."""
    tokens, out_len = parse_prompt(inputs, vocab_size=vocab_size, max_positions=max_seq_len,
                                   limit=f"max_seq_len {max_seq_len}")
    top_k = _int(inputs, T.RUNTIME_TOP_K, default=1)
    assert top_k is not None
    if top_k < 0:
        raise RequestError(f"input '{T.RUNTIME_TOP_K}' is {top_k}; valid: 0 (all) or more, 1 = greedy")
    temp = inputs.get(T.TEMPERATURE)
    temperature = None if temp is None else float(np.asarray(temp).reshape(-1)[0])
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise RequestError(f"input '{T.TEMPERATURE}' is {temperature}; valid: a finite value >= 0")
    top_p = _float(inputs, T.RUNTIME_TOP_P)
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise RequestError(f"input '{T.RUNTIME_TOP_P}' is {top_p}; valid range is (0, 1]")
    seed = _int(inputs, T.RANDOM_SEED)
    if seed is not None and seed < 0:
        raise RequestError(f"input '{T.RANDOM_SEED}' is {seed}; valid range is 0..2**64-1")
    try:
        words = T.parse_stop_words_list(inputs.get(T.STOP_WORDS_LIST))
    except ValueError as exc:
        raise RequestError(f"input {exc}") from None
    # SamplingParams.stop_token_ids ends at single tokens; with detokenize=False it has no stop on token
    # sequences. A longer stop word (a user's stop string) is cut by the cascade from the decoded text
    # (optistop.cascade.cut_at_stop), so here it only costs the tokens generated past it.
    lp = inputs.get(T.RETURN_LOG_PROBS)
    return StageRequest(tokens, out_len, _int(inputs, T.END_ID, default=end_id) or 0,
                        _int(inputs, T.PAD_ID, default=pad_id) or 0, top_k, temperature,
                        [w[0] for w in words if len(w) == 1],
                        True if lp is None else bool(np.asarray(lp).reshape(-1)[0]), top_p, seed)


def _float(inputs: Mapping[str, np.ndarray | None], name: str) -> float | None:
    arr = inputs.get(name)
    if arr is None:
        return None
    value = float(np.asarray(arr).reshape(-1)[0])
    if not math.isfinite(value):
        raise RequestError(f"input '{name}' is {value}; it must be a finite number")
    return value


def sampling_kwargs(req: StageRequest) -> dict[str, Any]:
    """``SamplingParams(**kwargs)`` for one request (field names of tensorrt_llm.SamplingParams)."""
    kw: dict[str, Any] = {
        "max_tokens": req.max_tokens, "end_id": req.end_id, "pad_id": req.pad_id, "n": 1,
        "top_k": req.top_k, "stop_token_ids": req.stop_token_ids or None,
        "include_stop_str_in_output": True,     # the stop token stays, as in the C++ backend
        "logprobs": 1,                          # the chosen token's log-prob at every position
        "detokenize": False, "exclude_input_from_output": True,
    }
    if req.temperature is not None:
        kw["temperature"] = req.temperature
    if req.top_p is not None:
        kw["top_p"] = req.top_p
    if req.seed is not None:
        kw["seed"] = req.seed
    return kw


def token_logprobs(out: Any) -> list[float]:
    """One float per entry of ``out.logprobs``: a float as is, a ``dict[int, Logprob]`` read at the chosen
    token (``out.token_ids`` at that position)."""
    lps = list(out.logprobs or [])
    values = []
    for i, lp in enumerate(lps):
        if isinstance(lp, dict):
            tok = out.token_ids[i] if i < len(out.token_ids) else None
            if tok not in lp:
                raise ValueError(f"logprobs[{i}] has no entry for the chosen token {tok}: {sorted(lp)[:5]}")
            lp = lp[tok]
        values.append(float(getattr(lp, "logprob", lp)))
    return values


def generated(out: Any, req: StageRequest) -> Generated:
    """The stage contract's view of a finished ``CompletionOutput``: the end token dropped (as the C++
    backend and the CPU stage do), stop tokens kept, one log-prob per returned token."""
    if out.finish_reason not in FINISH_REASONS:
        raise ValueError(f"finish_reason {out.finish_reason!r} is not one of {FINISH_REASONS}")
    ids = [int(t) for t in out.token_ids]
    lps = token_logprobs(out)
    if req.log_probs and len(lps) < len(ids):
        raise ValueError(f"the LLM API returned {len(lps)} log-probs for {len(ids)} tokens")
    if ids and ids[-1] == req.end_id and req.end_id not in req.stop_token_ids:
        ids = ids[:-1]
    lps = lps[:len(ids)] if req.log_probs else [0.0] * len(ids)
    return Generated(tuple(ids), tuple(lps), out.finish_reason == "length")


class LlmapiStage:
    """Serves stage-contract requests on one ``tensorrt_llm.LLM``; ``sampling_params`` is the
    SamplingParams class (a fake in the tests). Every call runs on the LLM's event loop."""

    def __init__(self, llm: Any, sampling_params: Callable[..., Any], *, end_id: int, pad_id: int,
                 max_seq_len: int, vocab_size: int) -> None:
        self.llm, self.sampling_params = llm, sampling_params
        self.end_id, self.pad_id, self.max_seq_len, self.vocab_size = end_id, pad_id, max_seq_len, vocab_size
        self.inflight: dict[str, Any] = {}     # request id -> RequestOutput, for `stop` (cancellation)

    def _parse(self, inputs: Mapping[str, np.ndarray | None]) -> StageRequest:
        return parse(inputs, end_id=self.end_id, pad_id=self.pad_id, max_seq_len=self.max_seq_len,
                     vocab_size=self.vocab_size)

    def _submit(self, inputs: Mapping[str, np.ndarray | None], request_id: str,
                streaming: bool) -> tuple[StageRequest, Any] | RequestError:
        """Parse and start one request on the LLM, registered under ``request_id`` for `stop`."""
        try:
            req = self._parse(inputs)
        except RequestError as exc:
            return exc
        result = self.llm.generate_async(req.prompt_ids, self.sampling_params(**sampling_kwargs(req)),
                                         streaming=streaming)
        if request_id:
            self.inflight[request_id] = result
        return req, result

    def _cancel(self, request_id: str) -> dict[str, np.ndarray]:
        running = self.inflight.get(request_id)
        if running is not None:
            running.abort()
        return to_tensors(Generated((), (), False))

    async def generate(self, inputs: Mapping[str, np.ndarray | None],
                       request_id: str = "") -> dict[str, np.ndarray] | RequestError:
        """One request, answered whole (the non-decoupled stage)."""
        if _int(inputs, T.STOP, default=0):
            return self._cancel(request_id)
        started = self._submit(inputs, request_id, streaming=False)
        if isinstance(started, RequestError):
            return started
        req, result = started
        try:
            done = await result.aresult()
            return to_tensors(generated(done.outputs[0], req))
        finally:
            self.inflight.pop(request_id, None)

    async def stream(self, inputs: Mapping[str, np.ndarray | None],
                     emit: Callable[[dict[str, np.ndarray]], Awaitable[bool] | bool],
                     request_id: str = "") -> RequestError | None:
        """One streaming request: ``emit`` gets the tokens new since the last response (tensorrt_llm's
        streaming shape; output_log_probs alike); False from it aborts the request. The caller sends the
        final flag. Tokens already sent are not taken back; the end token is never sent."""
        started = self._submit(inputs, request_id, streaming=True)
        if isinstance(started, RequestError):
            return started
        req, result = started
        sent = 0
        try:
            async for step in result:
                out = step.outputs[0]
                g = generated(out, req) if step.finished else _partial(out, req)
                new = Generated(g.token_ids[sent:], g.logprobs[sent:], False)
                if not new.token_ids:
                    continue
                sent = len(g.token_ids)
                ok = emit(to_tensors(new))
                if not (await ok if not isinstance(ok, bool) else ok):
                    result.abort()
                    break
        finally:
            self.inflight.pop(request_id, None)
        return None


def _partial(out: Any, req: StageRequest) -> Generated:
    """Tokens of an unfinished streaming step (no end token can be among them yet)."""
    ids = [int(t) for t in out.token_ids]
    lps = token_logprobs(out) if req.log_probs else [0.0] * len(ids)
    n = min(len(ids), len(lps))
    return Generated(tuple(ids[:n]), tuple(lps[:n]), False)
