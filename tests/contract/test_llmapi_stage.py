"""The PyTorch-backend stage (optistop.engines.llmapi_stage, llmapi_host and its model.py) against a
hand-written fake of TensorRT-LLM's LLM API.

The fake's shape is pinned to the TensorRT-LLM sources read for this (NVIDIA/TensorRT-LLM, 1.x line):
tensorrt_llm/sampling_params.py at 000a01de (version.py 1.0.0rc4): the SamplingParams fields;
tensorrt_llm/executor/result.py at 005bc848: CompletionOutput's fields, ``Logprob(logprob, rank)`` and
``logprobs`` as ``list[dict[int, Logprob]]`` (post-runtime) or ``list[float]`` (from the executor), and
finish_reason in {'stop', 'length', 'timeout', 'cancelled'}; the llmapi model.py at 044a90d2:
``generate_async(inputs, sampling_params, streaming=...)``, ``await result.aresult()``, ``async for`` when
streaming, ``result.abort()``. The fake refuses any SamplingParams keyword or output field not there.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pytest

from optistop import tensors as T
from optistop.engines.llmapi_stage import LlmapiStage, set_visible_gpus
from optistop.render import repo as render
from optistop.spec import DEFAULT_SPEC
from tests import fake_pb_utils as pb

ROOT = DEFAULT_SPEC.parent
LLMAPI = ROOT / "build" / "qwen2.5-llmapi.toml"

# tensorrt_llm/sampling_params.py (000a01de): the init fields of SamplingParams.
UPSTREAM_SAMPLING_FIELDS = {
    "end_id", "pad_id", "max_tokens", "bad", "bad_token_ids", "stop", "stop_token_ids",
    "include_stop_str_in_output", "embedding_bias", "logits_processor", "apply_batched_logits_processor", "n",
    "best_of", "use_beam_search", "top_k", "top_p", "top_p_min", "top_p_reset_ids", "top_p_decay", "seed",
    "temperature", "min_tokens", "beam_search_diversity_rate", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "length_penalty", "early_stopping", "no_repeat_ngram_size", "min_p",
    "beam_width_array", "logprobs", "prompt_logprobs", "return_context_logits", "return_generation_logits",
    "exclude_input_from_output", "return_encoder_output", "return_perf_metrics", "additional_model_outputs",
    "lookahead_config", "guided_decoding", "ignore_eos", "detokenize", "add_special_tokens",
    "truncate_prompt_tokens", "skip_special_tokens", "spaces_between_special_tokens"}
# tensorrt_llm/executor/result.py (005bc848): CompletionOutput's init fields.
UPSTREAM_COMPLETION_FIELDS = {"index", "text", "token_ids", "cumulative_logprob", "logprobs", "prompt_logprobs",
                              "finish_reason", "stop_reason", "generation_logits", "disaggregated_params"}
END, PAD, STOP_TOKEN, VOCAB = 2, 0, 7, 50


@dataclass(slots=True)
class Logprob:                       # result.py: Logprob(logprob: float, rank: Optional[int] = None)
    logprob: float
    rank: int | None = None


@dataclass(slots=True)
class CompletionOutput:              # result.py: the fields the stage reads, with upstream names
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None


class SamplingParams:
    def __init__(self, **kwargs: object) -> None:
        unknown = set(kwargs) - UPSTREAM_SAMPLING_FIELDS
        assert not unknown, f"not a SamplingParams field: {unknown}"
        self.kwargs = kwargs


class RequestOutput:
    """Steps are (token ids so far, log-probs so far, finish_reason); the last one is final."""

    def __init__(self, steps: list[tuple[list[int], list, str | None]]) -> None:
        self.steps, self.aborted = steps, False
        self.outputs: list[CompletionOutput] = []
        self.finished = False

    def _at(self, k: int) -> RequestOutput:
        ids, lps, reason = self.steps[k]
        self.outputs = [CompletionOutput(0, token_ids=list(ids), logprobs=list(lps), finish_reason=reason,
                                         cumulative_logprob=None)]
        self.finished = k == len(self.steps) - 1
        return self

    async def aresult(self) -> RequestOutput:
        return self._at(len(self.steps) - 1)

    def __aiter__(self):
        async def gen():
            for k in range(len(self.steps)):
                if self.aborted:
                    return
                yield self._at(k)
        return gen()

    def abort(self) -> None:
        self.aborted = True


class FakeLLM:
    """Records every generate_async call; answers with the scripted steps (or a default by prompt)."""

    def __init__(self, script=None) -> None:
        self.calls: list[tuple[list[int], dict, bool]] = []
        self.script = script or (lambda ids, kw: [([5, 6, END], [Logprob_dict(5, -0.5), Logprob_dict(6, -0.25),
                                                                  Logprob_dict(END, -0.125)], "stop")])
        self.results: list[RequestOutput] = []

    def generate_async(self, inputs, sampling_params, streaming=False):
        assert isinstance(inputs, list) and all(type(t) is int for t in inputs), "token ids in"
        self.calls.append((inputs, sampling_params.kwargs, streaming))
        self.results.append(RequestOutput(self.script(inputs, sampling_params.kwargs)))
        return self.results[-1]


def Logprob_dict(tok: int, lp: float) -> dict[int, Logprob]:  # noqa: N802 - a LogprobResults entry
    return {tok: Logprob(lp, 1), tok + 1: Logprob(lp - 3.0, 2)}


def stage(llm: FakeLLM) -> LlmapiStage:
    return LlmapiStage(llm, SamplingParams, end_id=END, pad_id=PAD, max_seq_len=64, vocab_size=VOCAB)


def request(ids=(3, 4, 5), max_tokens=8, **extra) -> dict[str, np.ndarray]:
    from optistop.serving.bls import stage_request

    arrays = stage_request(list(ids), max_tokens, END, PAD, stop_ids=(STOP_TOKEN,))
    arrays.update(extra)
    return arrays


def test_fake_matches_the_upstream_shapes() -> None:
    assert {f.name for f in fields(CompletionOutput)} <= UPSTREAM_COMPLETION_FIELDS
    assert {f.name for f in fields(Logprob)} == {"logprob", "rank"}


def test_one_request_maps_the_stage_contract_to_sampling_params() -> None:
    llm = FakeLLM()
    out = asyncio.run(stage(llm).generate(request(), "r1"))
    (ids, kw, streaming), = llm.calls
    assert ids == [3, 4, 5] and streaming is False
    assert kw == {"max_tokens": 8, "end_id": END, "pad_id": PAD, "n": 1, "top_k": 1, "stop_token_ids": [STOP_TOKEN],
                  "include_stop_str_in_output": True, "logprobs": 1, "detokenize": False,
                  "exclude_input_from_output": True}
    assert isinstance(out, dict)
    # the stage contract: names and dtypes of optistop.tensors.STAGE, shapes (1, beams=1, n), end token dropped;
    # pinned literally too: they are TensorRT-LLM's tensorrt_llm model's, which bls.py reads from every stage
    assert {k: v.dtype.name for k, v in out.items()} == {"output_ids": "int32", "sequence_length": "int32",
                                                         "cum_log_probs": "float32", "output_log_probs": "float32"}
    assert set(out) == {t.name for t in T.STAGE.outputs}
    for t in T.STAGE.outputs:
        assert out[t.name].dtype == np.dtype(T.NUMPY_DTYPE[t.dtype]), t.name
    assert out[T.OUTPUT_IDS].tolist() == [[[5, 6]]] and out[T.SEQUENCE_LENGTH].tolist() == [[2]]
    assert out[T.OUTPUT_LOG_PROBS].tolist() == [[[-0.5, -0.25]]]          # the chosen token's entry
    assert out[T.CUM_LOG_PROBS].tolist() == [[-0.75]]


@pytest.mark.parametrize("shape", ["floats", "dicts"])
def test_log_prob_length_follows_the_tokens_and_both_upstream_shapes_read(shape: str) -> None:
    toks = [9, 10, 11, STOP_TOKEN]
    lps = [-0.5, -1.0, -2.0, -0.25]
    entries = lps if shape == "floats" else [Logprob_dict(t, v) for t, v in zip(toks, lps)]
    llm = FakeLLM(lambda ids, kw: [(toks, entries, "stop")])
    out = asyncio.run(stage(llm).generate(request()))
    n = int(out[T.SEQUENCE_LENGTH][0, 0])
    assert n == 4 and out[T.OUTPUT_IDS].shape == out[T.OUTPUT_LOG_PROBS].shape == (1, 1, n)   # stop token kept
    assert out[T.OUTPUT_LOG_PROBS].reshape(-1).tolist() == lps
    short = FakeLLM(lambda ids, kw: [(toks, entries[:2], "length")])
    with pytest.raises(ValueError, match="2 log-probs for 4 tokens"):
        asyncio.run(stage(short).generate(request()))


def test_bad_input_is_one_clear_error_and_nothing_reaches_the_llm() -> None:
    llm = FakeLLM()
    s = stage(llm)
    cases = [({T.INPUT_IDS: np.asarray([[3, 99]], dtype=np.int32)}, "outside 0..49"),
             ({T.REQUEST_OUTPUT_LEN: np.asarray([[62]], dtype=np.int32)}, "valid range is 1..61"),
             ({T.RUNTIME_TOP_P: np.asarray([[1.5]], dtype=np.float32)}, "runtime_top_p"),
             ({T.RUNTIME_TOP_K: np.asarray([[-1]], dtype=np.int32)}, "runtime_top_k")]
    for extra, needle in cases:
        arrays = request(**extra)
        arrays[T.INPUT_LENGTHS] = np.asarray([[arrays[T.INPUT_IDS].shape[1]]], dtype=np.int32)
        err = asyncio.run(s.generate(arrays))
        assert not isinstance(err, dict) and needle in str(err) and "\n" not in str(err), (needle, err)
    assert llm.calls == []


def test_temperature_and_top_k_pass_through() -> None:
    llm = FakeLLM()
    asyncio.run(stage(llm).generate(request(**{T.RUNTIME_TOP_K: np.asarray([[4]], dtype=np.int32),
                                               T.TEMPERATURE: np.asarray([[0.7]], dtype=np.float32)})))
    kw = llm.calls[0][1]
    assert kw["top_k"] == 4 and kw["temperature"] == pytest.approx(0.7)
    assert "top_p" not in kw and "seed" not in kw          # absent inputs leave the LLM's defaults


def test_top_p_and_seed_pass_through_and_long_stop_words_are_left_to_the_cascade() -> None:
    """The cascade's sampled request (runtime_top_p, random_seed) reaches SamplingParams; a multi-token
    stop word (a user's stop string) is not an LLM-API stop token: the cascade cuts the text, the one-token
    end words still stop generation."""
    llm = FakeLLM()
    asyncio.run(stage(llm).generate(request(**{
        T.RUNTIME_TOP_P: np.asarray([[0.5]], dtype=np.float32),
        T.RANDOM_SEED: np.asarray([[7]], dtype=np.uint64),
        T.STOP_WORDS_LIST: T.stop_words_list([[9], [7, 8]])[None]})))
    kw = llm.calls[0][1]
    assert kw["top_p"] == pytest.approx(0.5) and kw["seed"] == 7 and kw["stop_token_ids"] == [9]


def test_streaming_sends_only_new_tokens_never_the_end_token_and_stops_when_cancelled() -> None:
    steps = [([5], [-0.5], None), ([5, 6], [-0.5, -0.25], None), ([5, 6, END], [-0.5, -0.25, -0.1], "stop")]
    llm = FakeLLM(lambda ids, kw: steps)
    sent: list[dict] = []
    err = asyncio.run(stage(llm).stream(request(), lambda t: sent.append(t) or True))
    assert err is None and llm.calls[0][2] is True
    assert [t[T.OUTPUT_IDS].tolist() for t in sent] == [[[[5]]], [[[6]]]]
    assert [t[T.OUTPUT_LOG_PROBS].tolist() for t in sent] == [[[[-0.5]]], [[[-0.25]]]]
    assert all(t[T.SEQUENCE_LENGTH].tolist() == [[1]] for t in sent)
    llm2 = FakeLLM(lambda ids, kw: steps)
    asyncio.run(stage(llm2).stream(request(), lambda t: False))          # the caller went away
    assert llm2.results[0].aborted


def test_stop_cancels_the_running_request_with_that_id() -> None:
    llm = FakeLLM()
    s = stage(llm)
    running = RequestOutput([([1], [-1.0], "length")])
    s.inflight["abc"] = running
    out = asyncio.run(s.generate({T.STOP: np.asarray([[True]])}, "abc"))
    assert running.aborted and out[T.SEQUENCE_LENGTH].tolist() == [[0]] and llm.calls == []


def test_visible_gpus_are_set_and_checked() -> None:
    env: dict[str, str] = {}
    set_visible_gpus("1, 2", env)
    assert env == {"CUDA_VISIBLE_DEVICES": "1,2", "TRTLLM_VISIBLE_DEVICES": "1,2"}
    with pytest.raises(ValueError, match="gpu_device_ids"):
        set_visible_gpus("", env)


FAKE_TRTLLM = '''
import os
IMPORTED_WITH = os.environ.get("CUDA_VISIBLE_DEVICES")     # what CUDA would see at import
class LLM:
    made = []
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        LLM.made.append(self)
class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
'''


def test_rendered_llmapi_stage_loads_under_the_python_backend(tmp_path: Path, monkeypatch) -> None:
    """The llmapi profile renders the project's model (stage contract, not the stock llmapi model);
    its model.py sets CUDA_VISIBLE_DEVICES from gpu_device_ids before importing tensorrt_llm."""
    from tests.contract.test_pbtxt_contracts import assert_contract, parse

    repo = tmp_path / "repo"
    assert render.main(["--profile", "llmapi", "--spec", str(LLMAPI), "--out", str(repo), "--streaming"]) == 0
    medium = repo / "llmapi_32b"
    assert_contract(parse(medium / "config.pbtxt"), T.STAGE, "llmapi_32b")
    assert_contract(parse(repo / "llmapi_32b_stream" / "config.pbtxt"), T.STAGE_STREAM, "llmapi_32b_stream")
    assert parse(repo / "llmapi_32b_stream" / "config.pbtxt").model_transaction_policy.decoupled
    assert not parse(medium / "config.pbtxt").model_transaction_policy.decoupled
    # a checkpoint the model reads its end/pad ids and vocabulary from
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"vocab_size": VOCAB, "eos_token_id": END}))
    yaml_path = medium / "1" / "model.yaml"
    yaml_path.write_text(json.dumps({**json.loads(yaml_path.read_text()), "model": str(ckpt)}))
    fake = tmp_path / "site"
    (fake / "tensorrt_llm" / "llmapi").mkdir(parents=True)
    (fake / "tensorrt_llm" / "__init__.py").write_text(FAKE_TRTLLM)
    (fake / "tensorrt_llm" / "llmapi" / "__init__.py").write_text("")
    (fake / "tensorrt_llm" / "llmapi" / "llm_utils.py").write_text(
        "def update_llm_args_with_extra_dict(a, b):\n    return {**a, **b}\n")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.delitem(sys.modules, "tensorrt_llm", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    spec = importlib.util.spec_from_file_location("llmapi_model_py", medium / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    model.initialize(pb.initialize_args(medium, "llmapi_32b"))
    try:
        trt = sys.modules["tensorrt_llm"]
        assert trt.IMPORTED_WITH == "1,2" and os.environ["CUDA_VISIBLE_DEVICES"] == "1,2"
        llm = trt.LLM.made[-1]
        assert llm.kwargs["tensor_parallel_size"] == 2 and llm.kwargs["backend"] == "pytorch"
        host = model.host
        fake_llm = FakeLLM()
        host.stage.llm, host.stage.sampling_params = fake_llm, SamplingParams
        reqs = [pb.request(**request()), pb.request(**request(ids=(3, 99)))]
        ok, bad = model.execute(reqs)
        assert not ok.has_error() and bad.has_error() and "outside 0..49" in bad.error().message()
        got = {t.name(): t.as_numpy() for t in ok.output_tensors()}
        assert got[T.OUTPUT_IDS].tolist() == [[[5, 6]]] and got[T.OUTPUT_LOG_PROBS].shape == (1, 1, 2)
    finally:
        model.host.loop.call_soon_threadsafe(model.host.loop.stop)
        sys.modules.pop("tensorrt_llm", None)
        sys.modules.pop("tensorrt_llm.llmapi", None)
        sys.modules.pop("tensorrt_llm.llmapi.llm_utils", None)
