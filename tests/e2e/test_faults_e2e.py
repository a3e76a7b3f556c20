"""Faults with a real tritonserver: the session ``fault_server`` (tests/conftest.py) holds one variant
cascade per fault, each with its own spec: stages that answer nothing or fail, a stage slower than its
timeout, a scripted predictor, a stage that cannot load. Asserts the documented behaviour: escalation,
the degraded flag, or a clear error."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from tritonclient.utils import InferenceServerException

from optistop.client.cascade import ask, make_client

HARD = "4821+3777="


def cascade_ask(srv, cascade: str, prompt: str, **kw):
    """``ask`` against one of the fault server's variant cascades."""
    return ask(make_client(srv.cfg.grpc_url), "grpc", prompt, model=cascade, **kw)


def test_failed_stages_are_escalated_past(fault_server) -> None:
    """cascade_failing: stage_small answers nothing, stage_medium errors."""
    a = cascade_ask(fault_server, "cascade_failing", HARD, policy="paper", lam=0.0)
    assert a.stages_run == [0, 1, 2] and a.stage == 2 and a.degraded
    assert "stage_small_empty' returned an empty output" in a.degraded_reason
    assert "stage 'stage_medium' failed" in a.degraded_reason
    assert a.cost == pytest.approx(15.5)


@pytest.mark.parametrize(("k", "needle"), [(0, "returned an empty output"), (1, "stage 'stage_medium' failed")])
def test_fixed_policy_on_a_failed_stage_is_unavailable(fault_server, k: int, needle: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        cascade_ask(fault_server, "cascade_failing", HARD, policy=f"fixed:{k}")
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert needle in info.value.message() and "Traceback" not in info.value.message()
    assert cascade_ask(fault_server, "cascade_failing", HARD, policy="fixed:2").text  # the server goes on


def test_timeout_returns_best_answer_so_far(fault_server) -> None:
    """cascade_slow: stage_large_slow takes 3 s, its timeout is 1 s; the predictor is never confident (0.05)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = pool.submit(cascade_ask, fault_server, "cascade_slow", HARD, policy="paper", lam=0.0)
        fast = pool.submit(cascade_ask, fault_server, "cascade_slow", "12+35=", policy="fixed:0")
        a = slow.result()
        assert fast.result().stage == 0  # a concurrent request is not held up by the slow stage
    assert a.stages_run == [0, 1, 2] and a.degraded
    assert a.stage == 1  # equal confidences: the later-run stage is the best so far
    assert "stage 'stage_large_slow' timed out after 1s" in a.degraded_reason


def test_timeout_on_fixed_stage_is_unavailable(fault_server) -> None:
    with pytest.raises(InferenceServerException) as info:
        cascade_ask(fault_server, "cascade_slow", HARD, policy="fixed:2")
    assert info.value.status() == "StatusCode.UNAVAILABLE" and "timed out" in info.value.message()


@pytest.mark.parametrize(("policy", "stages_run"), [("paper", [0, 2]), ("optimal", [2])])
def test_nan_predictor_escalates_to_the_largest_stage(fault_server, policy: str, stages_run: list[int]) -> None:
    a = cascade_ask(fault_server, "cascade_nan", HARD, policy=policy)
    assert a.stages_run == stages_run and a.stage == 2 and a.degraded
    assert "quality predictor returned [nan" in a.degraded_reason


def test_stage_not_ready_degrades_to_the_living_and_fixed_is_unavailable(fault_server) -> None:
    """cascade_broken: stage_large_broken failed to load (its checkpoint is missing); the server serves
    the rest (exit_on_error false)."""
    assert not fault_server.ready("stage_large_broken") and fault_server.ready("cascade_broken")
    assert "failed to load 'stage_large_broken'" in fault_server.log_tail()
    a = cascade_ask(fault_server, "cascade_broken", HARD, policy="paper", lam=0.0)
    assert a.degraded and a.stage in (0, 1) and "stage 'stage_large_broken' is unavailable" in a.degraded_reason
    with pytest.raises(InferenceServerException) as info:
        cascade_ask(fault_server, "cascade_broken", HARD, policy="fixed:2")
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert "stage_large_broken" in info.value.message() and "unavailable" in info.value.message()


def test_http_json_responses_carry_no_nan(fault_server) -> None:
    """A stage not scored (NaN predictor) or not decided on (the last stage) has no confidence / threshold;
    Triton's HTTP frontend writes a float NaN as a bare `NaN`, which is not JSON (strict parsers and
    perf_analyzer's profile export reject it): the cascade sends tensors.NO_VALUE (-1) instead."""
    import json
    import urllib.request

    from optistop import tensors as T

    def strict(name: str) -> float:
        raise ValueError(f"{name} in the response body: not JSON")

    body = {"inputs": [{"name": T.TEXT_INPUT, "datatype": "BYTES", "shape": [1, 1], "data": [HARD]},
                       {"name": T.POLICY, "datatype": "BYTES", "shape": [1, 1], "data": ["paper"]}],
            "outputs": [{"name": T.CONFIDENCES}, {"name": T.THRESHOLDS}, {"name": T.DEGRADED}]}
    req = urllib.request.Request(f"http://{fault_server.cfg.http_url}/v2/models/cascade_nan/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        doc = json.loads(resp.read(), parse_constant=strict)
    out = {o["name"]: o["data"] for o in doc["outputs"]}
    assert out[T.DEGRADED] == [True]
    assert out[T.CONFIDENCES] and all(c == T.NO_VALUE for c in out[T.CONFIDENCES])   # nothing scored
    assert out[T.THRESHOLDS][-1] == T.NO_VALUE                                       # the last stage: no decision
    # the clients read NO_VALUE back as "none" (NaN), as before
    a = cascade_ask(fault_server, "cascade_nan", HARD, policy="paper")
    assert all(c != c for c in a.confidences) and a.thresholds[-1] != a.thresholds[-1]
