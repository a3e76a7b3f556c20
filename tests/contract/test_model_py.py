"""The model.py files under a fake pb_utils: the glue turns tensors into the package's calls and back,
and errors stay per request. Stage engines run the real tiny models; the predictor is scripted."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from optistop.spec import SpecError
from tests import fake_pb_utils as pb

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"


def load_model_py(name: str, **params: str):
    """``name``'s model.py initialised as Triton would, with config parameters overridden by ``params``."""
    import json

    sys.modules["triton_python_backend_utils"] = pb
    spec = importlib.util.spec_from_file_location(f"model_{name}", REPO / name / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    args = pb.initialize_args(REPO / name, name)
    cfg = json.loads(args["model_config"])
    cfg["parameters"].update({k: {"string_value": v} for k, v in params.items()})
    args["model_config"] = json.dumps(cfg)
    model.initialize(args)
    return model


@pytest.fixture(scope="module")
def stages(tiny_dir):
    models = {n: load_model_py(n) for n in ("stage_small", "stage_medium", "stage_large")}

    def handler(model):
        async def run(inputs):
            return model.execute([pb.request(**inputs)])[0]
        return run

    for n, m in models.items():
        pb.HANDLERS[n] = handler(m)

    async def predictor(inputs):
        f = inputs["features"]
        return pb.InferenceResponse([pb.Tensor("confidence", np.full((f.shape[0], 1), 0.7, np.float32))])

    pb.HANDLERS["quality_predictor"] = predictor
    yield models
    pb.HANDLERS.clear()


def test_stage_model_contract_and_per_request_errors(stages) -> None:
    m = stages["stage_small"]
    ids = np.array([[1, 5, 6, 40, 7, 9, 41]], dtype=np.int32)  # <bos>12+35=
    good = pb.request(input_ids=ids, input_lengths=np.array([[7]], np.int32),
                   request_output_len=np.array([[4]], np.int32))
    bad = pb.request(input_ids=ids, input_lengths=np.array([[7]], np.int32),
                  request_output_len=np.array([[500]], np.int32))
    missing = pb.request(input_ids=ids)
    r_good, r_bad, r_missing = m.execute([good, bad, missing])
    assert not r_good.has_error()
    out = {t.name(): t.as_numpy() for t in r_good.output_tensors()}
    n = int(out["sequence_length"][0, 0])
    assert out["output_ids"].shape == (1, 1, n) and out["output_log_probs"].shape == (1, 1, n)
    assert out["output_ids"].dtype == np.int32 and 1 <= n <= 4
    assert out["cum_log_probs"][0, 0] == pytest.approx(out["output_log_probs"].sum(), abs=1e-5)
    assert r_bad.error().code() == pb.TritonError.INVALID_ARG
    assert "request_output_len" in r_bad.error().message() and "1..57" in r_bad.error().message()
    assert "request_output_len" in r_missing.error().message()


def test_stage_model_honours_stop_words_list_and_stop(stages) -> None:
    """The CPU engine stops after a stop word (kept in the output, as TensorRT-LLM does), one token or
    several, and acknowledges a `stop` cancellation without generating."""
    from optistop import tensors as T

    m = stages["stage_small"]
    ids = np.array([[1, 43, 42, 21, 18, 25, 25, 28, 41]], dtype=np.int32)   # <bos>R:hello=

    def call(**extra: np.ndarray) -> list[int]:
        (r,) = m.execute([pb.request(input_ids=ids, input_lengths=np.array([[ids.shape[1]]], np.int32),
                                     request_output_len=np.array([[8]], np.int32), **extra)])
        assert not r.has_error(), r.error().message()
        out = {t.name(): t.as_numpy() for t in r.output_tensors()}
        return out["output_ids"][0, 0, : int(out["sequence_length"][0, 0])].tolist()

    free = call()
    i = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    assert call(stop_words_list=T.stop_words_list([[free[i]]])[None]) == free[: i + 1]
    assert call(stop_words_list=T.stop_words_list([[99999], free[:2]])[None]) == free[:2]
    assert call(stop=np.array([[True]])) == []
    (bad,) = m.execute([pb.request(input_ids=ids, request_output_len=np.array([[4]], np.int32),
                                   stop_words_list=np.array([[[5, 6], [3, -1]]], np.int32))])
    assert bad.error().code() == pb.TritonError.INVALID_ARG and "stop_words_list" in bad.error().message()


@pytest.mark.parametrize("name", ["stage_small", "stage_small_stream"])
def test_stage_failure_logs_the_traceback_and_answers_plainly(tiny_dir, name: str) -> None:
    """A batch the engine fails on: the server log gets the traceback (where it failed), each client a
    plain error without it."""
    m = load_model_py(name)   # its own instance: the engine is broken below

    def engine_fails(*args, **kwargs):
        raise ValueError("kv cache exhausted")

    m.engine.run = m.engine.run_streaming = engine_fails
    pb.Logger.lines.clear()
    req = pb.request(input_ids=np.array([[1, 5, 6]], np.int32), input_lengths=np.array([[3]], np.int32),
                     request_output_len=np.array([[4]], np.int32))
    out = m.execute([req])
    resp = out[0] if out else req.get_response_sender().sent[-1][0]
    logged = "\n".join(pb.Logger.lines)
    assert "Traceback (most recent call last)" in logged and "in engine_fails" in logged
    assert f"{name}: stage batch failed" in logged and "ValueError: kv cache exhausted" in logged
    assert resp.error().code() == pb.TritonError.INTERNAL
    assert "Traceback" not in resp.error().message() and "kv cache" not in resp.error().message()


def test_cascade_model_glue(stages) -> None:
    cascade = load_model_py("cascade", predictor_in_process="false")   # the scripted predictor: 0.7
    reqs = [
        pb.request(text_input=np.array([[b"12+35="]], dtype=object)),
        pb.request(text_input=np.array([[b"12+35="]], dtype=object), policy=np.array([[b"nope"]], dtype=object)),
        pb.request(text_input=np.array([[b"R:abc="]], dtype=object), policy=np.array([[b"fixed:2"]], dtype=object)),
    ]
    ok, bad, fixed = asyncio.run(cascade.execute(reqs))
    assert not ok.has_error() and not fixed.has_error()
    out = {t.name(): t.as_numpy() for t in fixed.output_tensors()}
    assert out["stage"].tolist() == [[2]] and out["stages_run"].tolist() == [[2]]
    assert out["stage_model"][0, 0] == b"stage_large" and out["cost"][0, 0] == pytest.approx(10.0)
    assert out["confidences"].tolist() == [[pytest.approx(0.7)]]
    assert bad.error().code() == pb.TritonError.INVALID_ARG and "unknown policy 'nope'" in bad.error().message()


def test_cascade_degrades_past_a_stage_that_is_not_ready(stages) -> None:
    cascade = load_model_py("cascade")
    pb.READY["stage_large"] = False
    try:
        (resp,) = asyncio.run(cascade.execute([pb.request(text_input=np.array([[b"4821+3777="]], dtype=object),
                                                          policy=np.array([[b"paper"]], dtype=object),
                                                          **{"lambda": np.array([[0.0]], dtype=np.float32)})]))
    finally:
        pb.READY.clear()
    assert not resp.has_error()
    out = {t.name(): t.as_numpy() for t in resp.output_tensors()}
    assert out["degraded"].tolist() == [[True]] and out["stage"][0, 0] in (0, 1)
    assert b"stage 'stage_large' is unavailable: Model 'stage_large' is not ready." in out["degraded_reason"][0, 0]


def test_cascade_is_unavailable_naming_every_stage_when_none_lives(stages) -> None:
    cascade = load_model_py("cascade")
    pb.READY.update(stage_small=False, stage_medium=False, stage_large=False)
    try:
        (resp,) = asyncio.run(cascade.execute([pb.request(text_input=np.array([[b"1+1="]], dtype=object))]))
    finally:
        pb.READY.clear()
    assert resp.error().code() == pb.TritonError.UNAVAILABLE
    assert all(f"stage '{n}' is unavailable" in resp.error().message()
               for n in ("stage_small", "stage_medium", "stage_large"))


def test_in_process_predictor_matches_the_served_one(stages) -> None:
    """By default (predictor_in_process "auto") the cascade scores with the same ONNX file and calibration
    as the quality_predictor model; here the BLS handler runs the real predictor too, so a cascade that
    calls it ("false") must agree exactly."""
    from optistop.serving.predictor_runtime import QualityPredictor

    qp = QualityPredictor(REPO / "quality_predictor" / "1" / "model.onnx")

    async def real_predictor(inputs):
        conf = qp.predict(inputs["features"]).reshape(-1, 1).astype(np.float32)
        return pb.InferenceResponse([pb.Tensor("confidence", conf)])

    pb.HANDLERS["quality_predictor"] = real_predictor
    local = load_model_py("cascade")
    assert local.backend.local is not None
    remote = load_model_py("cascade", predictor_in_process="false")
    assert remote.backend.local is None
    with pytest.raises(SpecError, match="predictor_in_process is 'yes'; valid: auto, true, false"):
        load_model_py("cascade", predictor_in_process="yes")
    with pytest.raises(SpecError, match="predictor_engine is 'gpu'; valid: onnxruntime, numpy, auto"):
        load_model_py("cascade", predictor_engine="gpu")
    assert load_model_py("cascade", predictor_engine="onnxruntime").backend.local.engine == "onnxruntime"
    assert local.backend.local.engine == "numpy"   # "auto", the default: the compiled graph passed its check
    prompts = [b"12+35=", b"R:abcdefgh=", b"4821+3777=", b"S:93817="]
    reqs = [pb.request(text_input=np.array([[p]], dtype=object)) for p in prompts]
    for a, b in zip(asyncio.run(local.execute(reqs)), asyncio.run(remote.execute(reqs))):
        ta = {t.name(): t.as_numpy() for t in a.output_tensors()}
        tb = {t.name(): t.as_numpy() for t in b.output_tensors()}
        for name in ("text_output", "stage", "stages_run", "cost"):
            assert (ta[name] == tb[name]).all(), name
        np.testing.assert_allclose(ta["confidences"], tb["confidences"], atol=1e-6)
