"""Streaming cascade requests: the logic behind model_repository/cascade_stream/1/model.py.

The loop is the cascade's own (optistop.cascade.run_cascade through ``CascadeService.handle``); only the
backend differs. ``StreamingBackend`` wraps the BLS backend for one request: a stage that is *terminal*
(the last stage, or the one a ``fixed:<k>`` policy names, so no stopping decision can reject its answer)
is called through its decoupled streaming variant and its text goes to the client token by token as the
engine chooses it. Any other stage runs whole, because the stopping rule may still reject its answer; if
it is accepted, its text goes out in one piece at the end. A client that goes away ends the request at
the next token or stage boundary: no further stage starts, and the streaming engine's request is
cancelled where the Python backend offers ``ResponseIterator.cancel()`` (not in the embedded 2.51 stub,
where the engine finishes that request, at most max_tokens, unread). A client of a ``*_stream`` stage
model itself that cancels its gRPC stream stops that engine's decoding at the next token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from optistop import tensors as T
from optistop.cascade import GREEDY, CascadeRequest, GenerationOptions, StageOutput, find_stop, held_back
from optistop.serving.cascade_service import CascadeService
from optistop.serving.request import RequestError

STREAM_SUFFIX = "_stream"


def stream_model(triton_model: str) -> str:
    """The Triton name of a stage engine's decoupled streaming variant (rendered by optistop.render.repo)."""
    return triton_model + STREAM_SUFFIX


class StreamingStageBackend(Protocol):
    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                       options: GenerationOptions = GREEDY) -> StageOutput: ...

    def generate_stream(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                        options: GenerationOptions = GREEDY) -> AsyncIterator[tuple[list[int], list[float]]]:
        """(new token ids, their log-probs) per engine response, as they are generated."""
        ...

    async def score(self, features: Sequence[Sequence[float]]) -> Sequence[float]: ...


class Cancelled(RequestError):
    def __init__(self) -> None:
        super().__init__("request cancelled by the client", code="CANCELLED")


def is_terminal(policy_name: str, stage: int, n_stages: int) -> bool:
    """True when nothing can run after ``stage``: whatever it answers is the answer (or a fault)."""
    return stage == n_stages - 1 or policy_name.startswith("fixed")


class StreamingBackend:
    """One request's backend: ``send(delta_text, stage)`` gets text as it becomes final."""

    def __init__(self, inner: StreamingStageBackend, req: CascadeRequest, n_stages: int,
                 decode: Callable[[Sequence[int]], str], send: Callable[[str, int], Awaitable[None]],
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        self.inner, self.req, self.n, self.decode = inner, req, n_stages, decode
        self.send, self.cancelled = send, cancelled
        self.sent = ""   # all text sent so far (what the client has)

    async def emit(self, text: str, stage: int) -> None:
        if text:
            await self.send(text, stage)
            self.sent += text

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                       options: GenerationOptions = GREEDY) -> StageOutput:
        if self.cancelled():
            raise Cancelled()
        kw = {} if options == GREEDY else {"options": options}   # as the cascade loop calls it
        if not is_terminal(self.req.policy.name, stage, self.n):
            return await self.inner.generate(stage, input_ids, max_tokens, **kw)
        tokens: list[int] = []
        lps: list[float] = []
        streamed = ""   # decoded text of this stage sent so far
        stop = self.req.stop
        async for new_ids, new_lps in self.inner.generate_stream(stage, input_ids, max_tokens, **kw):
            if self.cancelled():
                raise Cancelled()   # leaving the loop closes the generator, which cancels the engine call
            tokens += new_ids
            lps += new_lps
            # Re-decode the whole sequence (tensorrtllm's accumulate_tokens): a multi-byte character
            # split across tokens decodes to U+FFFD until its last piece arrives, so hold that back.
            text = self.decode(tokens)
            if text.endswith("\ufffd") or not text.startswith(streamed):
                continue
            # A stop word ends the answer before it; text that may be the start of one waits for the next
            # token. The cascade loop cuts the returned output by the same rule (cascade.cut_at_stop).
            at = find_stop(text, stop) if stop else -1
            final = text[:at] if at >= 0 else text[:len(text) - held_back(text, stop)] if stop else text
            if not streamed and not self.req.exclude_input_in_output and not self.sent:
                await self.emit(self.req.prompt, stage)
            if len(final) > len(streamed):
                await self.emit(final[len(streamed):], stage)
                streamed = final
            if at >= 0:
                break   # leaving the loop closes the generator: the engine stops where it can
        return StageOutput(tuple(tokens), tuple(lps), hit_max_tokens=len(tokens) >= max_tokens)

    async def score(self, features: Sequence[Sequence[float]]) -> Sequence[float]:
        return await self.inner.score(features)


def rest_of_answer(outputs: Mapping[str, np.ndarray], sent: str) -> str:
    """What the client still needs of the final text, given what it has. A streamed stage that failed
    after sending part of its answer, with the answer then coming from another stage, cannot be taken
    back: that request fails (UNAVAILABLE) rather than glue two answers together."""
    text = bytes(np.asarray(outputs[T.TEXT_OUTPUT]).reshape(-1)[0]).decode("utf-8")
    if not text.startswith(sent):
        raise RequestError("the streamed stage failed after sending part of its answer; retry the request",
                           code="UNAVAILABLE")
    return text[len(sent):]


async def handle_stream(service: CascadeService, inputs: Mapping[str, np.ndarray | None],
                        backend: StreamingStageBackend, send: Callable[[dict[str, np.ndarray]], None],
                        cancelled: Callable[[], bool] = lambda: False) -> dict[str, np.ndarray] | RequestError:
    """Serve one streaming request: ``send`` gets a response of {text_output, stage} per piece of text as
    it becomes final; the return value is the last response (the rest of the text and every metadata
    output of the cascade contract) or the request's error."""
    holder: list[StreamingBackend] = []

    async def send_text(text: str, stage: int) -> None:
        send(T.CASCADE.cast_outputs({T.TEXT_OUTPUT: [[text]], T.STAGE_INDEX: [[stage]]}))

    def wrap(req: CascadeRequest) -> StreamingBackend:
        holder.append(StreamingBackend(backend, req, len(service.spec.stages), service.decode, send_text,
                                       cancelled))
        return holder[0]

    out = await service.handle(inputs, backend, wrap)
    if isinstance(out, RequestError):
        return out
    try:
        rest = rest_of_answer(out, holder[0].sent)
    except RequestError as exc:
        return exc
    return {**out, **T.CASCADE.cast_outputs({T.TEXT_OUTPUT: [[rest]]})}
