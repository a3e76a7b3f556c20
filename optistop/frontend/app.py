"""The OpenAI-compatible front end: a small ASGI app (Starlette) over tritonclient's asyncio gRPC client.

$ optistop openai          # embedded tritonserver + this app on http://127.0.0.1:9000/v1

Non-streaming requests call the ``cascade`` model (non-decoupled, dynamically batched: the path
tritonclient ``infer`` and perf_analyzer use); ``stream: true`` calls ``cascade_stream`` (decoupled) over
one gRPC stream and relays each of its responses as an SSE chunk the moment it arrives, so the client
sees the terminal stage's tokens as the stage engine generates them. A client that disconnects closes
the SSE generator, which cancels the gRPC stream; Triton then flags the request cancelled, and the
cascade ends it at the next token or stage boundary (optistop.serving.streaming says what stops).
Why not Triton's own OpenAI frontend: see README "OpenAI-compatible API".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from optistop import tensors as T
from optistop.frontend import protocol as P
from optistop.spec import CascadeSpec

log = logging.getLogger("optistop.frontend")
STREAM_MODEL = "cascade_stream"
OUTPUTS = [t.name for t in T.CASCADE.outputs]
# gRPC status of a failed unary call -> (HTTP status, OpenAI error type)
STATUS = {"StatusCode.INVALID_ARGUMENT": (400, "invalid_request_error"),
          "StatusCode.UNAVAILABLE": (503, "service_unavailable_error"),
          "StatusCode.CANCELLED": (499, "cancelled"), "StatusCode.DEADLINE_EXCEEDED": (504, "timeout")}


class TritonCascade:
    """The cascade models over one asyncio gRPC channel; every failure comes out as ``ApiError``."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc.aio as grpc_aio

        self.mod, self.url = grpc_aio, url
        self._client: Any = None

    @property
    def client(self) -> Any:
        # made on first use: a grpc.aio channel belongs to the event loop it was created on (uvicorn's)
        if self._client is None:
            self._client = self.mod.InferenceServerClient(self.url)
        return self._client

    def _inputs(self, values: dict[str, np.ndarray]) -> list[Any]:
        out = []
        for name, arr in values.items():
            inp = self.mod.InferInput(name, list(arr.shape), T.CASCADE.input(name).dtype)
            inp.set_data_from_numpy(arr)
            out.append(inp)
        return out

    @staticmethod
    def _error(exc: Exception) -> P.ApiError:
        status = getattr(exc, "status", lambda: None)()
        code, kind = STATUS.get(str(status), (500, "server_error"))
        msg = getattr(exc, "message", lambda: str(exc))() or str(exc)
        return P.ApiError(code, msg, kind, code="service_unavailable" if code == 503 else None)

    async def infer(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        try:
            res = await self.client.infer("cascade", self._inputs(values),
                                          outputs=[self.mod.InferRequestedOutput(n) for n in OUTPUTS])
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return {n: res.as_numpy(n) for n in OUTPUTS}

    async def stream(self, values: dict[str, np.ndarray]) -> AsyncIterator[dict[str, np.ndarray]]:
        """cascade_stream's responses as they arrive; the one holding ``cost`` is the last."""
        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": STREAM_MODEL, "inputs": self._inputs(values)}

        it = self.client.stream_infer(requests())
        done = False
        try:
            async for result, error in it:
                if error is not None:
                    # In-band stream errors carry no status code. The front end already ran the
                    # cascade's own request checks, so what remains is the cascade unable to answer.
                    done = True
                    raise P.unavailable(error.message() if hasattr(error, "message") else str(error))
                names = [o.name for o in result.get_response().outputs]
                out = {n: result.as_numpy(n) for n in names}
                yield out
                if T.COST in out:
                    done = True
                    return
        except P.ApiError:
            raise
        except Exception as exc:  # the channel itself failed (server gone, ...)
            done = True
            raise P.unavailable(f"cascade_stream failed: {exc}") from None
        finally:
            if not done:
                it.cancel()   # the client went away: cancel the request inside Triton

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready("cascade")
                        and await self.client.is_model_ready(STREAM_MODEL))
        except Exception:
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def build_app(grpc_url: str, spec_path: Path | None = None, repository: Path | None = None) -> Starlette:
    """The app for a Triton server at ``grpc_url`` serving ``repository`` (default: the embedded one), made
    for ``spec_path``; its policy artifact lets the app check policy and lambda as the server does."""
    from optistop import ROOT
    from optistop.policy_artifact import FILE_NAME, PolicyArtifactError, load_policy
    from optistop.serving.tokenizers import PromptEncoder
    from optistop.spec import load_spec

    spec = load_spec(spec_path) if spec_path else load_spec()
    repo = repository or ROOT / "model_repository"
    where = repo / spec.predictor_model / "1" / FILE_NAME
    policies = load_policy(where)
    # a policy calibrated for another cascade would check policy and lambda against the wrong stages
    policies.check_matches(spec.stage_names, spec.costs, str(where))
    if policies.art.get("spec", spec.name) != spec.name:
        raise PolicyArtifactError(f"{where}: calibrated for cascade {policies.art['spec']!r}, but the spec "
                                  f"{spec.source} is cascade {spec.name!r}; pass the repository that serves it")
    return create_app(TritonCascade(grpc_url), spec, PromptEncoder.for_spec(spec), policies)


def create_app(triton: TritonCascade, spec: CascadeSpec, encoder: Any, policies: Any) -> Starlette:
    """``encoder``: the cascade's PromptEncoder: the same prompt checks and token counts as the server."""
    created = int(time.time())
    tokenizer = encoder.tokenizer
    encode = encoder.encode

    def token_text(token_id: int) -> str:   # one answer token as text, for log-probs
        return tokenizer.decode([token_id])

    def error(exc: P.ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": P.OWNER} for m in P.model_ids(spec)]})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in P.model_ids(spec):
            return error(P.ApiError(404, f"model {name!r} does not exist", param="model", code="model_not_found"))
        return JSONResponse({"id": name, "object": "model", "created": created, "owned_by": P.OWNER})

    async def health(_: Request) -> Response:
        ok = await triton.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def complete(request: Request, chat: bool) -> Response:
        try:
            call = P.parse_call(P.parse_body(await request.body()), spec, encode, policies, chat=chat)
            if call.stream:
                return await stream(call)
            # a completions list: each prompt is its own cascade request, run side by side
            outs = await asyncio.gather(*(triton.infer(c.inputs) for c in call.batch or [call]))
        except P.ApiError as exc:
            return error(exc)
        answers = [P.answer(out, bytes(out[T.TEXT_OUTPUT].reshape(-1)[0]).decode("utf-8")) for out in outs]
        return JSONResponse(P.completion(call, answers, token_text))

    async def stream(call: P.Call) -> Response:
        events = triton.stream(call.inputs)
        try:
            first = await events.__anext__()   # an error before any text is still a plain HTTP error
        except StopAsyncIteration:
            raise P.unavailable("cascade_stream ended without a response") from None

        async def body() -> AsyncIterator[bytes]:
            text, ev, start = "", first, True
            try:
                while True:
                    piece = bytes(ev[T.TEXT_OUTPUT].reshape(-1)[0]).decode("utf-8")
                    if piece or start:
                        yield P.sse(P.chunk(call, piece, first=start))
                        text, start = text + piece, False
                    if T.COST in ev:
                        a = P.answer(ev, text)
                        yield P.sse(P.chunk(call, None if call.chat else "", reason=a.finish_reason, meta=a.meta,
                                            logprobs=P.logprobs_of(call, a, token_text)))
                        if call.include_usage:
                            yield P.sse(P.chunk(call, None, usage_=P.usage(call, len(a.token_ids))))
                        break
                    ev = await events.__anext__()
            except P.ApiError as exc:   # after the 200 went out, errors travel in the stream
                yield P.sse(exc.body())
            except StopAsyncIteration:
                yield P.sse(P.unavailable("cascade_stream ended without its final response").body())
            finally:
                await events.aclose()
            yield P.sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def chat_route(request: Request) -> Response:
        return await complete(request, chat=True)

    async def completions_route(request: Request) -> Response:
        return await complete(request, chat=False)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(P.ApiError(exc.status_code, f"{exc.detail}; endpoints: /v1/chat/completions, "
                                "/v1/completions, /v1/models", kind))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await triton.close()

    routes = [Route("/v1/models", models), Route("/v1/models/{name:path}", model), Route("/health", health),
              Route("/v1/chat/completions", chat_route, methods=["POST"]),
              Route("/v1/completions", completions_route, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
