"""Remote stages: ``CascadeBackend`` over Triton's gRPC API, for the stages (and the quality predictor)
that the spec places on another tritonserver (``url = "host:port"``).

Same tensor contract as the BLS path (``stage_request`` / ``parse_stage_outputs`` from bls.py) and the
same fault semantics: whatever goes wrong with a remote call becomes a ``StageFailure`` for that stage,
so the cascade loop escalates past it or degrades exactly as for a local stage (README, "Faults").

Per endpoint, one ``tritonclient.grpc.aio`` client (one gRPC channel) is made on first use and reused by
every later call; it is made lazily because a grpc.aio channel belongs to the event loop it was created
on, and the Python backend only has a running loop inside ``execute``. Each call has a deadline (the
stage's ``timeout_s``; the spec's ``predictor_timeout_s`` for the predictor) that covers its retries;
only UNAVAILABLE (server down, connection refused, restarting) is retried, with exponential backoff,
because any other status (bad input, model missing, deadline) would fail the same way again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optistop import tensors as T
from optistop.cascade import GREEDY, GenerationOptions, StageFailure, StageOutput
from optistop.serving.bls import STAGE_OUTPUTS, BlsBackend, LocalPredictor, parse_stage_outputs, stage_request
from optistop.spec import CascadeSpec, SpecError

UNAVAILABLE = "StatusCode.UNAVAILABLE"
DEADLINE = "StatusCode.DEADLINE_EXCEEDED"
# tritonclient's own message-size options, plus a reconnect backoff capped at 1 s: gRPC's default grows to
# 120 s, so a stage server that comes back would stay unused for minutes after a few failed calls.
CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3                   # tries per call, first one included (UNAVAILABLE only)
    backoff_s: float = 0.05             # pause before the first retry; doubles after each


class RemoteError(RuntimeError):
    """A remote call that failed for good; ``status`` is tritonclient's gRPC status string."""

    def __init__(self, message: str, status: str | None, attempts: int) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class RemoteTriton:
    """One Triton gRPC endpoint with one reused channel."""

    def __init__(self, url: str, retry: RetryPolicy = RetryPolicy()) -> None:
        self.url = url
        self.retry = retry
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a channel cannot move between loops
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
            self._loop = loop
        return self._client

    async def infer(self, model: str, arrays: dict[str, np.ndarray], outputs: Sequence[str],
                    deadline_s: float) -> dict[str, np.ndarray]:
        """Call ``model`` with numpy inputs; returns the requested outputs. Raises ``RemoteError``."""
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        inputs = []
        for name, arr in arrays.items():
            inp = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        end = time.monotonic() + deadline_s
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self.client().infer(model, inputs, outputs=requested,
                                                   client_timeout=max(end - time.monotonic(), 1e-3))
                return {n: result.as_numpy(n) for n in outputs}
            except InferenceServerException as exc:
                status = exc.status()
                message = " ".join(str(exc.message()).split())  # one line, whatever gRPC put in it
                if status == DEADLINE:
                    raise RemoteError(f"timed out after {deadline_s:g}s", status, attempt) from None
                pause = self.retry.backoff_s * 2 ** (attempt - 1)
                if status != UNAVAILABLE or attempt >= self.retry.attempts or time.monotonic() + pause >= end:
                    tries = f" ({attempt} attempts)" if attempt > 1 else ""
                    raise RemoteError(f"[{status}] {message}{tries}", status, attempt) from None
                await asyncio.sleep(pause)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class RemoteBackend:
    """``CascadeBackend`` for the stages and predictor that have a ``url`` in the spec."""

    def __init__(self, spec: CascadeSpec, end_id: int, pad_id: int, retry: RetryPolicy = RetryPolicy()) -> None:
        self.spec, self.end_id, self.pad_id, self.retry = spec, end_id, pad_id, retry
        urls = [s.url for s in spec.stages if s.url] + ([spec.predictor_url] if spec.predictor_url else [])
        self.endpoints = {u: RemoteTriton(u, retry) for u in dict.fromkeys(urls)}  # one channel per server

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                       options: GenerationOptions = GREEDY) -> StageOutput:
        s = self.spec.stages[stage]
        if not s.url:
            raise ValueError(f"stage {s.name!r} has no url; it is served by BLS")
        arrays = stage_request(input_ids, max_tokens, self.end_id, self.pad_id, self.spec.stop_token_ids, options)
        try:
            out = await self.endpoints[s.url].infer(s.triton_model, arrays, STAGE_OUTPUTS, s.timeout_for(max_tokens))
        except RemoteError as exc:
            what = "timed out" if exc.status == DEADLINE else "failed"
            raise StageFailure(stage, f"stage '{s.triton_model}' at {s.url} {what}: {exc}") from None
        return parse_stage_outputs(out, max_tokens, self.end_id, self.spec.stop_token_ids)

    async def score(self, features: Sequence[Sequence[float]]) -> np.ndarray:
        url = self.spec.predictor_url
        if not url:
            raise ValueError("the predictor has no url; it is served by BLS")
        arrays = {T.FEATURES: np.ascontiguousarray(features, dtype=np.float32)}
        try:
            out = await self.endpoints[url].infer(self.spec.predictor_model, arrays, [T.CONFIDENCE],
                                                  self.spec.predictor_timeout_s)
        except RemoteError as exc:
            raise StageFailure(-1, f"quality predictor at {url} failed: {exc}") from None
        return out[T.CONFIDENCE].reshape(-1)

    async def close(self) -> None:
        for ep in self.endpoints.values():
            await ep.close()


class RoutedBackend:
    """Each stage (and the predictor) to BLS or to its remote server, as the spec says."""

    def __init__(self, local: BlsBackend, remote: RemoteBackend) -> None:
        self.local, self.remote, self.spec = local, remote, local.spec

    def not_ready(self) -> list[str]:
        return self.local.not_ready()

    async def self_test(self, probe_ids: Sequence[int]) -> str | None:
        """The BLS startup self-test, over this backend's own (local or remote) stage calls."""
        return await BlsBackend.self_test(self, probe_ids)  # type: ignore[arg-type]

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                       options: GenerationOptions = GREEDY) -> StageOutput:
        backend = self.remote if self.spec.stages[stage].url else self.local
        return await backend.generate(stage, input_ids, max_tokens, options)

    async def score(self, features: Sequence[Sequence[float]]) -> Sequence[float]:
        remote = self.spec.predictor_url and self.local.local is None
        return await (self.remote.score(features) if remote else self.local.score(features))


def backend_for(pb_utils: Any, spec: CascadeSpec, end_id: int, pad_id: int,
                local: LocalPredictor | None = None) -> BlsBackend | RoutedBackend:
    """The cascade model's backend: plain BLS unless the spec names a remote stage or predictor."""
    bls = BlsBackend(pb_utils, spec, end_id, pad_id, local)
    if not spec.remote:
        return bls
    if local is not None and spec.predictor_url:
        raise SpecError(f"cascade.predictor_url is {spec.predictor_url!r} but the cascade model scores "
                        f"in-process (predictor_in_process: \"true\"); choose one")
    return RoutedBackend(bls, RemoteBackend(spec, end_id, pad_id))
