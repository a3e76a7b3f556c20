"""Stop words and sampling options in the cascade loop and the streaming path (no Triton): the one rule
that cuts an answer (optistop.cascade.cut_at_stop), and what a stream holds back across chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np

from optistop.cascade import (
    CascadeRequest,
    GenerationOptions,
    StageOutput,
    cut_at_stop,
    find_stop,
    held_back,
    run_cascade,
)
from optistop.serving.streaming import StreamingBackend
from tests.unit.test_cascade import SPEC, make_policy

WORDS = ["ab", "c", "de", "f", "gh", "i", "j"]   # token id -> text: some tokens are two characters


def decode(ids: Sequence[int]) -> str:
    return "".join(WORDS[i] for i in ids)


class Backend:
    """Every stage answers ``tokens``, one per streamed response; records the options it was given."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens, self.options = list(tokens), []
        self.closed_early = False

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                       options: GenerationOptions | None = None) -> StageOutput:
        self.options.append(options)
        return StageOutput(tuple(self.tokens), tuple(-0.1 * (i + 1) for i in range(len(self.tokens))), True)

    async def generate_stream(self, stage: int, input_ids: Sequence[int], max_tokens: int,
                              options: GenerationOptions | None = None) -> AsyncIterator[tuple[list[int], list[float]]]:
        self.options.append(options)
        done = False
        try:
            for i, t in enumerate(self.tokens):
                yield [t], [-0.1 * (i + 1)]
            done = True
        finally:
            self.closed_early = not done

    async def score(self, features: np.ndarray) -> np.ndarray:
        return np.full(len(features), 0.99, dtype=np.float32)


def request(stop: tuple[str, ...], options: GenerationOptions | None = None) -> CascadeRequest:
    return CascadeRequest("1+1=", (1, 5, 5), 8, 10.0, make_policy("fixed:0", 3), True, stop,
                          options or GenerationOptions(stop_ids=tuple((len(w),) for w in stop)))


def test_find_stop_is_the_earliest_occurrence_of_any_word() -> None:
    assert find_stop("abcdefgh", ["fg", "cd"]) == 2 and find_stop("abc", ["x"]) == -1 and find_stop("abc", []) == -1
    assert find_stop("abcabc", ["bc"]) == 1


def test_held_back_is_the_longest_suffix_that_may_start_a_stop_word() -> None:
    assert held_back("xxab", ["abc"]) == 2 and held_back("xxa", ["abc", "ax"]) == 1
    assert held_back("xxab", ["b"]) == 0      # a whole word is a match, not a hold
    assert held_back("xyz", ["abc"]) == 0 and held_back("", ["abc"]) == 0


def test_cut_keeps_the_tokens_that_cover_the_text_before_the_stop() -> None:
    out = StageOutput((0, 1, 2, 3), (-1.0, -2.0, -3.0, -4.0), True)     # "ab" "c" "de" "f"
    cut, text, stopped = cut_at_stop(out, "abcdef", ["d"], decode)
    assert (text, stopped, cut.token_ids, cut.logprobs) == ("abc", True, (0, 1), (-1.0, -2.0))
    assert not cut.hit_max_tokens
    # the stop starts inside a token ("e" of "de"): that token stays, the text is cut exactly
    cut, text, _ = cut_at_stop(out, "abcdef", ["ef"], decode)
    assert (text, cut.token_ids) == ("abcd", (0, 1, 2))
    cut, text, stopped = cut_at_stop(out, "abcdef", ["ab"], decode)
    assert (text, cut.token_ids, stopped) == ("", (), True)
    assert cut_at_stop(out, "abcdef", ["zz"], decode) == (out, "abcdef", False)


def test_the_cascade_cuts_every_stage_answer_and_says_why_it_ended() -> None:
    backend = Backend([0, 1, 2, 3, 4])   # "abcdefgh"
    r = asyncio.run(run_cascade(request(("f", "cd")), SPEC, backend, decode))
    assert r.text == "ab" and r.finish_reason == "stop" and r.token_ids == (0,) and r.logprobs == (-0.1,)
    assert backend.options[0].stop_ids == ((1,), (2,))
    r = asyncio.run(run_cascade(request(("zz",)), SPEC, Backend([0, 1]), decode))
    assert r.text == "abc" and r.finish_reason == "length"     # the fake's answers hit max_tokens


def test_greedy_requests_call_backends_without_options() -> None:
    """A plain request calls generate(stage, ids, max_tokens) as before: backends that take no options
    still serve it; any stop word or sampling is passed on."""
    b = Backend([0])
    asyncio.run(run_cascade(request((), GenerationOptions()), SPEC, b, decode))
    sampled = GenerationOptions(temperature=0.7, top_p=0.9, seed=5)
    asyncio.run(run_cascade(request((), sampled), SPEC, b, decode))
    assert b.options == [None, sampled]


def stream(tokens: Sequence[int], stop: tuple[str, ...]) -> tuple[list[str], str, Backend]:
    backend, got = Backend(tokens), []
    req = request(stop)

    async def send(text: str, stage: int) -> None:
        got.append(text)

    wrapped = StreamingBackend(backend, req, 3, decode, send)
    result = asyncio.run(run_cascade(req, SPEC, wrapped, decode))
    assert "".join(got) == result.text == wrapped.sent
    return got, result.text, backend


def test_a_stream_holds_back_a_partial_stop_word_and_ends_at_a_whole_one() -> None:
    # "ab" "c" "de" "f" "gh": stop "cdex" never matches, so "c", "de" wait until "f" proves it is no stop
    got, text, backend = stream([0, 1, 2, 3, 4], ("cdex",))
    assert got == ["ab", "cdef", "gh"] and text == "abcdefgh" and not backend.closed_early
    # stop "def": "de" waits, "f" completes the word; the stream ends there and closes the engine's
    got, text, backend = stream([0, 1, 2, 3, 4], ("def",))
    assert got == ["ab", "c"] and text == "abc" and backend.closed_early
    got, text, _ = stream([0, 1, 2], ("zz", "b"))
    assert got == ["a"] and text == "a"


def test_stage_engine_reads_sampling_as_tensorrt_llm_does() -> None:
    """Greedy when runtime_top_k is 1, temperature 0, or neither top_k nor top_p asks for sampling; what
    the BLS sends for a sampled request (optistop.serving.bls.stage_request) samples."""
    from optistop import tensors as T
    from optistop.engines.runner import Sampling
    from optistop.engines.stage import StageEngine
    from optistop.serving.bls import stage_request
    from optistop.serving.request import RequestError

    greedy = stage_request([1, 2], 4, 0, 0)
    assert StageEngine.sampling(greedy) is None and T.RANDOM_SEED not in greedy
    sent = stage_request([1, 2], 4, 0, 0, (9,), GenerationOptions(0.7, 0.9, 2**63 + 5, ((3, 4),)))
    assert StageEngine.sampling(sent) == Sampling(np.float32(0.7), 0, np.float32(0.9), 2**63 + 5)
    assert T.parse_stop_words_list(sent[T.STOP_WORDS_LIST]) == ((9,), (3, 4))
    f = lambda v: np.asarray([[v]], dtype=np.float32)
    assert StageEngine.sampling({T.TEMPERATURE: f(0.7)}) is None                        # no top_k / top_p
    assert StageEngine.sampling({T.TEMPERATURE: f(0.0), T.RUNTIME_TOP_P: f(0.5)}) is None
    assert StageEngine.sampling({T.RUNTIME_TOP_K: np.asarray([[5]], np.int32)}) == Sampling(1.0, 5, 1.0, 0)
    try:
        StageEngine.sampling({T.RUNTIME_TOP_P: f(1.5)})
        raise AssertionError("top_p 1.5 accepted")
    except RequestError as exc:
        assert "runtime_top_p" in str(exc)
