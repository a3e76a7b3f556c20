"""optistop.serving.streaming without Triton: which stage streams, what the client receives, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from optistop import tensors as T
from optistop.cascade import CascadeRequest, StageFailure, StageOutput, run_cascade
from optistop.serving.request import RequestError
from optistop.serving.streaming import Cancelled, StreamingBackend, is_terminal, rest_of_answer
from optistop.spec import load_spec
from tests.unit.test_cascade import make_policy

SPEC = load_spec(check_paths=False)
ALPHA = "abcdefghij"


class StreamingFake:
    """Stage k answers ``answers[k]``; ``generate_stream`` yields one token per response and records
    whether the caller closed it early (what cancels the engine request in the BLS adapter)."""

    def __init__(self, answers: dict[int, Sequence[int]], conf: float, fail_after: int | None = None) -> None:
        self.answers, self.conf, self.fail_after = answers, conf, fail_after
        self.whole: list[int] = []
        self.streamed: list[int] = []
        self.closed_early = False

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int) -> StageOutput:
        self.whole.append(stage)
        return StageOutput(tuple(self.answers[stage]), tuple(-0.1 for _ in self.answers[stage]), False)

    async def generate_stream(self, stage: int, input_ids: Sequence[int],
                              max_tokens: int) -> AsyncIterator[tuple[list[int], list[float]]]:
        self.streamed.append(stage)
        done = False
        try:
            for j, t in enumerate(self.answers[stage]):
                if self.fail_after is not None and j == self.fail_after:
                    raise StageFailure(stage, "engine died")
                yield [t], [-0.1]
            done = True
        finally:
            self.closed_early = not done

    async def score(self, features: np.ndarray) -> np.ndarray:
        return np.full(len(features), self.conf, dtype=np.float32)


def decode(ids: Sequence[int]) -> str:
    return "".join(ALPHA[i] for i in ids)


def run(fake: StreamingFake, policy: str, cancel_after: int | None = None, exclude: bool = True):
    req = CascadeRequest("1+1=", (1, 5, 5), 8, 15.0, make_policy(policy, 3, 15.0), exclude)
    got: list[tuple[str, int]] = []

    async def send(text: str, stage: int) -> None:
        got.append((text, stage))

    backend = StreamingBackend(fake, req, 3, decode, send,
                               cancelled=lambda: cancel_after is not None and len(got) >= cancel_after)
    result = asyncio.run(run_cascade(req, SPEC, backend, decode))
    return result, got, backend


def test_terminal_stages_are_the_last_one_and_a_fixed_policys() -> None:
    assert [is_terminal("optimal", k, 3) for k in range(3)] == [False, False, True]
    assert all(is_terminal("fixed:0", k, 3) for k in range(3))


def test_fixed_stage_streams_token_by_token() -> None:
    fake = StreamingFake({0: [0, 1, 2]}, conf=0.9)
    result, got, backend = run(fake, "fixed:0")
    assert fake.streamed == [0] and fake.whole == []
    assert got == [("a", 0), ("b", 0), ("c", 0)] and backend.sent == result.text == "abc"


def test_an_accepted_earlier_stage_is_not_streamed() -> None:
    fake = StreamingFake({0: [3, 4], 1: [5], 2: [6]}, conf=0.99)   # confident: stops at the first stage run
    result, got, backend = run(fake, "paper")
    assert result.stages_run == [0] and fake.streamed == [] and got == [] and backend.sent == ""
    out = T.CASCADE.cast_outputs({T.TEXT_OUTPUT: [[result.text]]})
    assert rest_of_answer(out, backend.sent) == "de"   # the accepted answer goes out whole, at the end


def test_escalation_to_the_last_stage_streams_only_that_stage() -> None:
    fake = StreamingFake({0: [0], 1: [1], 2: [7, 8]}, conf=0.01)   # never confident: runs every stage
    result, got, _ = run(fake, "paper")
    assert result.stages_run == [0, 1, 2] and fake.whole == [0, 1] and fake.streamed == [2]
    assert got == [("h", 2), ("i", 2)]


def test_prompt_is_sent_first_when_input_is_included() -> None:
    result, got, _ = run(StreamingFake({0: [0, 1]}, conf=0.9), "fixed:0", exclude=False)
    assert "".join(t for t, _ in got) == result.text == "1+1=ab"


def test_cancel_closes_the_engine_stream_and_raises() -> None:
    fake = StreamingFake({0: [0, 1, 2, 3]}, conf=0.9)
    with pytest.raises(Cancelled):
        run(fake, "fixed:0", cancel_after=2)
    assert fake.closed_early


def test_a_stream_broken_midway_cannot_be_glued_to_another_answer() -> None:
    fake = StreamingFake({0: [0], 1: [1], 2: [7, 8, 9]}, conf=0.01, fail_after=2)
    result, got, backend = run(fake, "paper")   # large fails after "hi": falls back to an earlier answer
    assert result.degraded and backend.sent == "hi" and result.text != "hi"
    with pytest.raises(RequestError, match="streamed stage failed"):
        rest_of_answer(T.CASCADE.cast_outputs({T.TEXT_OUTPUT: [[result.text]]}), backend.sent)
