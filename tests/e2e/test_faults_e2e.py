"""Faults with a real tritonserver: each test repository is a copy of model_repository with one fault
injected (the test-only stage model tests/repos/paced_stage.py with its ``fault`` or ``prefill_ms``,
a stage timeout, a scripted predictor, a stage that cannot load). Asserts the documented behaviour:
escalation, the degraded flag, or a clear error."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from optistop.serving.client import ask, make_client
from optistop.serving.embedded import EmbeddedServer, ServerConfig, free_port
from tests.repos.paced_stage import install

ROOT = Path(__file__).resolve().parents[2]
HARD = "4821+3777="


def make_repo(tmp: Path, faults: dict[str, dict[str, object]] | None = None, timeouts: dict[str, float] | None = None,
              predictor_constant: str | None = None, broken_stage: str | None = None) -> Path:
    (tmp / "models").symlink_to(ROOT / "models")
    spec = (ROOT / "cascade.toml").read_text()
    for model, seconds in (timeouts or {}).items():
        spec = re.sub(rf'(triton_model = "{model}"\n)', rf"\1timeout_s = {seconds}\n", spec)
    (tmp / "cascade.toml").write_text(spec)
    repo = tmp / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("__pycache__"))
    for model, params in (faults or {}).items():
        install(repo / model, **params)
    if predictor_constant is not None:   # a scripted quality_predictor model: the cascade must call it
        cfg = repo / "cascade" / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace('string_value: "auto"', 'string_value: "false"'))
        shutil.copy(ROOT / "tests" / "repos" / "scripted_predictor.py", repo / "quality_predictor" / "1" / "model.py")
        with open(repo / "quality_predictor" / "config.pbtxt", "a") as fh:
            fh.write(f'parameters {{ key: "constant" value: {{ string_value: "{predictor_constant}" }} }}\n')
    if broken_stage is not None:
        cfg = repo / broken_stage / "config.pbtxt"
        cfg.write_text(re.sub(r'"\.\./\.\./models/tiny/\w+"', '"../../models/tiny/missing"', cfg.read_text()))
    return repo


def start(repo: Path, tmp: Path, **kw) -> EmbeddedServer:
    cfg = ServerConfig(repository=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), **kw)
    return EmbeddedServer(cfg, log_path=tmp / "server.log")


@pytest.fixture(scope="module")
def failing_stages(tmp_path_factory, tiny_dir) -> Iterator[EmbeddedServer]:
    """stage_small answers nothing, stage_medium errors."""
    tmp = tmp_path_factory.mktemp("faults_a")
    faults = {"stage_small": {"fault": "empty"}, "stage_medium": {"fault": "error"}}
    with start(make_repo(tmp, faults=faults), tmp) as srv:
        yield srv


def test_failed_stages_are_escalated_past(failing_stages) -> None:
    a = ask(make_client(failing_stages.cfg.grpc_url), "grpc", HARD, policy="paper", lam=0.0)
    assert a.stages_run == [0, 1, 2] and a.stage == 2 and a.degraded
    assert "stage_small' returned an empty output" in a.degraded_reason
    assert "stage 'stage_medium' failed" in a.degraded_reason
    assert a.cost == pytest.approx(15.5)


@pytest.mark.parametrize(("k", "needle"), [(0, "returned an empty output"), (1, "stage 'stage_medium' failed")])
def test_fixed_policy_on_a_failed_stage_is_unavailable(failing_stages, k: int, needle: str) -> None:
    client = make_client(failing_stages.cfg.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        ask(client, "grpc", HARD, policy=f"fixed:{k}")
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert needle in info.value.message() and "Traceback" not in info.value.message()
    assert ask(client, "grpc", HARD, policy="fixed:2").text  # the server goes on


@pytest.fixture(scope="module")
def slow_large(tmp_path_factory, tiny_dir) -> Iterator[EmbeddedServer]:
    """stage_large takes 3 s, its timeout is 1 s; the predictor is never confident (0.05)."""
    tmp = tmp_path_factory.mktemp("faults_b")
    repo = make_repo(tmp, faults={"stage_large": {"prefill_ms": 3000}}, timeouts={"stage_large": 1.0},
                     predictor_constant="0.05")
    with start(repo, tmp) as srv:
        yield srv


def test_timeout_returns_best_answer_so_far(slow_large) -> None:
    url = slow_large.cfg.grpc_url
    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = pool.submit(ask, make_client(url), "grpc", HARD, policy="paper", lam=0.0)
        fast = pool.submit(ask, make_client(url), "grpc", "12+35=", policy="fixed:0")
        a = slow.result()
        assert fast.result().stage == 0  # a concurrent request is not held up by the slow stage
    assert a.stages_run == [0, 1, 2] and a.degraded
    assert a.stage == 1  # equal confidences: the later-run stage is the best so far
    assert "stage 'stage_large' timed out after 1s" in a.degraded_reason


def test_timeout_on_fixed_stage_is_unavailable(slow_large) -> None:
    with pytest.raises(InferenceServerException) as info:
        ask(make_client(slow_large.cfg.grpc_url), "grpc", HARD, policy="fixed:2")
    assert info.value.status() == "StatusCode.UNAVAILABLE" and "timed out" in info.value.message()


@pytest.fixture(scope="module")
def nan_predictor(tmp_path_factory, tiny_dir) -> Iterator[EmbeddedServer]:
    tmp = tmp_path_factory.mktemp("faults_c")
    with start(make_repo(tmp, predictor_constant="nan"), tmp) as srv:
        yield srv


@pytest.mark.parametrize(("policy", "stages_run"), [("paper", [0, 2]), ("optimal", [2])])
def test_nan_predictor_escalates_to_the_largest_stage(nan_predictor, policy: str, stages_run: list[int]) -> None:
    a = ask(make_client(nan_predictor.cfg.grpc_url), "grpc", HARD, policy=policy)
    assert a.stages_run == stages_run and a.stage == 2 and a.degraded
    assert "quality predictor returned [nan" in a.degraded_reason


def test_stage_not_ready_degrades_to_the_living_and_fixed_is_unavailable(tmp_path, tiny_dir) -> None:
    repo = make_repo(tmp_path, broken_stage="stage_large")
    srv = start(repo, tmp_path, exit_on_error=False)
    srv.start()
    try:
        srv.wait_ready(model="cascade")
        assert not srv.ready("stage_large")
        client = make_client(srv.cfg.grpc_url)
        a = ask(client, "grpc", HARD, policy="paper", lam=0.0)
        assert a.degraded and a.stage in (0, 1) and "stage 'stage_large' is unavailable" in a.degraded_reason
        with pytest.raises(InferenceServerException) as info:
            ask(client, "grpc", HARD, policy="fixed:2")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "stage_large" in info.value.message() and "unavailable" in info.value.message()
    finally:
        srv.stop()
