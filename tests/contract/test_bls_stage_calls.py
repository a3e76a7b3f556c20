"""What the BLS sends to a TensorRT-LLM stage and what it makes of the answer, against a fake stage that
behaves as the tensorrtllm backend documents: output_log_probs only when a sampling parameter is set,
stop_words_list in its (2, N) layout, cancellation by `stop` with the same request id."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from optistop import tensors as T
from optistop.cascade import StageFailure
from optistop.serving.bls import BlsBackend
from optistop.spec import load_spec
from tests import fake_pb_utils as pb

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"
QWEN_END, QWEN_EOT = 151645, 151643   # <|im_end|> (end_id), <|endoftext|> (a stop word)


def trtllm_stage(answer: tuple[int, ...] = (7, 8, 9), zero: bool = False, log_probs: bool = True,
                 delay_s: float = 0.0):
    """A fake tensorrt_llm model: output_log_probs only with return_log_probs and runtime_top_k (or
    all zeros, as with normalize_log_probs true); `stop` requests are acknowledged at once."""
    async def run(inputs: dict[str, np.ndarray]) -> pb.InferenceResponse:
        if T.STOP in inputs:
            return pb.InferenceResponse([])
        await asyncio.sleep(delay_s)
        n = len(answer)
        outs = [pb.Tensor(T.OUTPUT_IDS, np.asarray(answer, np.int32).reshape(1, 1, n)),
                pb.Tensor(T.SEQUENCE_LENGTH, np.asarray([[n]], np.int32)),
                pb.Tensor(T.CUM_LOG_PROBS, np.asarray([[-1.0]], np.float32))]
        if log_probs and T.RETURN_LOG_PROBS in inputs and T.RUNTIME_TOP_K in inputs:
            lps = np.zeros(n) if zero else -0.1 * np.arange(1, n + 1)
            outs.append(pb.Tensor(T.OUTPUT_LOG_PROBS, lps.astype(np.float32).reshape(1, 1, n)))
        return pb.InferenceResponse(outs)
    return run


async def predictor(inputs: dict[str, np.ndarray]) -> pb.InferenceResponse:
    return pb.InferenceResponse([pb.Tensor("confidence", np.full((inputs["features"].shape[0], 1), 0.7,
                                                                  np.float32))])


@pytest.fixture()
def stages():
    spec = load_spec()
    pb.HANDLERS.clear()
    pb.SENT.clear()
    pb.HANDLERS["quality_predictor"] = predictor
    yield spec
    pb.HANDLERS.clear()
    pb.SENT.clear()


def cascade_model():
    sys.modules["triton_python_backend_utils"] = pb
    spec = importlib.util.spec_from_file_location("model_cascade_bls", REPO / "cascade" / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    model.initialize(pb.initialize_args(REPO / "cascade", "cascade"))
    return model


def ask(model, prompt: bytes = b"12+35=") -> pb.InferenceResponse:
    (resp,) = asyncio.run(model.execute([pb.request(text_input=np.array([[prompt]], dtype=object))]))
    return resp


def test_greedy_with_runtime_top_k_gets_log_probs_from_a_trtllm_stage(stages) -> None:
    for s in stages.stages:
        pb.HANDLERS[s.triton_model] = trtllm_stage()
    resp = ask(cascade_model())
    assert not resp.has_error(), resp.error().message()
    calls = [r for r in pb.SENT if r.model_name == "stage_small"]
    assert calls and all(r.input(T.RUNTIME_TOP_K).as_numpy().tolist() == [[1]] for r in calls)


def test_all_zero_log_probs_fail_the_startup_self_test_naming_the_fix(stages) -> None:
    for s in stages.stages:
        pb.HANDLERS[s.triton_model] = trtllm_stage(zero=s.name == "medium")
    model = cascade_model()
    for _ in range(2):   # and again on the next request: the cascade stays unavailable
        resp = ask(model)
        assert resp.error().code() == pb.TritonError.UNAVAILABLE
        msg = resp.error().message()
        assert "stage_medium" in msg and "normalize_log_probs" in msg and "\n" not in msg


def test_missing_log_probs_are_a_named_stage_failure_not_an_internal_error(stages) -> None:
    pb.HANDLERS["stage_small"] = trtllm_stage(log_probs=False)
    backend = BlsBackend(pb, stages, end_id=2, pad_id=0)
    with pytest.raises(StageFailure, match=r"stage 'stage_small' returned no output_log_probs"):
        asyncio.run(backend.generate(0, [1, 5, 6], 4))
    for s in stages.stages:
        pb.HANDLERS[s.triton_model] = trtllm_stage(log_probs=s.name != "small")
    resp = ask(cascade_model())
    assert resp.error().code() == pb.TritonError.UNAVAILABLE and "output_log_probs" in resp.error().message()


def test_stop_words_list_is_sent_in_trtllm_layout_and_the_stop_token_dropped(stages) -> None:
    spec = dataclasses.replace(stages, stop_token_ids=(QWEN_EOT,))
    pb.HANDLERS["stage_small"] = trtllm_stage(answer=(7, 8, QWEN_EOT))
    out = asyncio.run(BlsBackend(pb, spec, end_id=QWEN_END, pad_id=QWEN_END).generate(0, [1, 5], 8))
    assert out.token_ids == (7, 8) and out.logprobs == pytest.approx((-0.1, -0.2)) and not out.hit_max_tokens
    sent = pb.SENT[-1].input(T.STOP_WORDS_LIST).as_numpy()
    assert sent.dtype == np.int32 and sent.tolist() == [[[QWEN_EOT], [1]]]       # (batch 1, 2, N)
    assert pb.SENT[-1].input(T.END_ID).as_numpy().tolist() == [[QWEN_END]]


def test_stop_words_list_layout_round_trips() -> None:
    words = [[5], [7, 8, 9], [], [11]]
    arr = T.stop_words_list(words)
    assert arr.tolist() == [[5, 7, 8, 9, 11], [1, 4, 5, -1, -1]]
    assert T.parse_stop_words_list(arr[None]) == ((5,), (7, 8, 9), (11,))
    assert T.stop_words_list([]).tolist() == [[0], [-1]] and T.parse_stop_words_list(T.stop_words_list([])) == ()
    with pytest.raises(ValueError, match="offsets must increase"):
        T.parse_stop_words_list(np.asarray([[5, 6], [2, 1]], np.int32))


def test_a_timed_out_call_is_cancelled_at_the_engine(stages) -> None:
    pb.HANDLERS["stage_small"] = trtllm_stage(delay_s=5.0)
    backend = BlsBackend(pb, stages, end_id=2, pad_id=0)

    async def go() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(backend.generate(0, [1, 5, 6], 4), timeout=0.05)
        await asyncio.sleep(0.01)   # let the fire-and-forget stop request run

    asyncio.run(go())
    first, stop = pb.SENT
    assert first.request_id and stop.request_id == first.request_id and stop.model_name == "stage_small"
    assert stop.input(T.STOP).as_numpy().tolist() == [[True]]


def test_a_sampled_request_with_stop_words_sends_trtllms_sampling_inputs(stages) -> None:
    from optistop.cascade import GenerationOptions

    spec = dataclasses.replace(stages, stop_token_ids=(QWEN_EOT,))
    pb.HANDLERS["stage_small"] = trtllm_stage(answer=(7, 8))
    options = GenerationOptions(temperature=0.5, top_p=0.9, seed=2**64 - 1, stop_ids=((3, 4), (5,)))
    asyncio.run(BlsBackend(pb, spec, end_id=QWEN_END, pad_id=QWEN_END).generate(0, [1, 5], 8, options))
    sent = pb.SENT[-1]
    got = {n: sent.input(n).as_numpy() for n in (T.RUNTIME_TOP_K, T.RUNTIME_TOP_P, T.TEMPERATURE, T.RANDOM_SEED)}
    assert got[T.RUNTIME_TOP_K].tolist() == [[0]] and got[T.RANDOM_SEED].dtype == np.uint64
    assert got[T.RANDOM_SEED].tolist() == [[2**64 - 1]]
    assert got[T.RUNTIME_TOP_P].tolist() == [[pytest.approx(0.9)]] and got[T.TEMPERATURE].tolist() == [[0.5]]
    # the family's end word first, then the request's stop words, in one stop_words_list
    assert T.parse_stop_words_list(sent.input(T.STOP_WORDS_LIST).as_numpy()) == ((QWEN_EOT,), (3, 4), (5,))
    for name, arr in got.items():   # as declared in the stage contract (and so in every stage config.pbtxt)
        assert arr.dtype == np.dtype(T.NUMPY_DTYPE[T.STAGE.input(name).dtype]), name


def test_predictor_call_has_the_spec_deadline(stages) -> None:
    """A predictor that hangs costs the request the spec's predictor_timeout_s, not forever; Triton gets
    the same deadline as the request's timeout (in microseconds)."""
    async def hang(inputs: dict[str, np.ndarray]) -> pb.InferenceResponse:
        await asyncio.sleep(30)
        raise AssertionError("the deadline did not cut the call")

    pb.HANDLERS["quality_predictor"] = hang
    backend = BlsBackend(pb, dataclasses.replace(stages, predictor_timeout_s=0.2), 0, 0)
    t0 = time.monotonic()
    with pytest.raises(StageFailure, match=r"quality predictor timed out after 0\.2s"):
        asyncio.run(backend.score([[0.0] * 64]))
    assert time.monotonic() - t0 < 5.0
    assert [r.timeout for r in pb.SENT if r.model_name == "quality_predictor"] == [200_000]
