"""The test-only stand-in (tests/repos/paced_engine.py) over the real StageEngine: a real model's pace
(prefill per batch, one sleep per decode step shared by the batch) and the injected faults, with sleeps
recorded instead of slept."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from optistop import tensors as T
from optistop.engines.stage import StageEngine
from tests.repos import paced_engine
from tests.repos.paced_engine import PacedEngine


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> StageEngine:
    return StageEngine(tiny_dir / "small")


def _req(ids: list[int], n: int) -> dict[str, np.ndarray]:
    return {T.INPUT_IDS: np.array([ids], np.int32), T.INPUT_LENGTHS: np.array([[len(ids)]], np.int32),
            T.REQUEST_OUTPUT_LEN: np.array([[n]], np.int32)}


@pytest.fixture()
def slept(monkeypatch) -> list[float]:
    out: list[float] = []
    monkeypatch.setattr(paced_engine, "sleep", out.append)
    return out


def test_a_batch_pays_one_prefill_and_one_step_per_token_of_its_longest_row(engine, slept) -> None:
    paced = PacedEngine(engine, {"prefill_ms": "500", "token_ms": "100"})
    batch = [_req([43, 42, 13, 14, 15, 41], 3), _req([5, 40, 6, 41], 6)]  # R:abc= and 1+2=
    plain = engine.run(batch)
    results = paced.run(batch)
    for a, b in zip(plain, results):  # the answers are the production engine's, untouched
        assert np.array_equal(a[T.OUTPUT_IDS], b[T.OUTPUT_IDS])
    steps = max(int(r[T.SEQUENCE_LENGTH].reshape(-1)[0]) for r in plain)
    assert steps >= 1 and slept == [0.5, pytest.approx(0.1 * steps)]


def test_streaming_sleeps_once_per_step_whichever_row_reaches_it(engine, slept) -> None:
    paced = PacedEngine(engine, {"token_ms": "50"})
    batch = [_req([43, 42, 13, 14, 15, 41], 3), _req([43, 42, 13, 14, 15, 16, 17, 41], 5)]
    got: list[int] = []
    paced.run_streaming(batch, lambda i, t: got.append(i) or True)
    assert got.count(0) <= 3 and got.count(1) <= 5 and got.count(1) > got.count(0)
    assert slept == [0.0] + [0.05] * max(got.count(0), got.count(1))


def test_faults_error_empty_and_hang(engine, slept) -> None:
    with pytest.raises(RuntimeError, match="injected fault: error"):
        PacedEngine(engine, {"fault": "error"}).run([_req([5, 40, 6, 41], 2)])
    (empty,) = PacedEngine(engine, {"fault": "empty"}).run([_req([5, 40, 6, 41], 2)])
    assert empty[T.OUTPUT_IDS].shape == (1, 1, 0) and int(empty[T.SEQUENCE_LENGTH][0, 0]) == 0
    hang = PacedEngine(engine, {"fault": "hang_on_token:0"})
    assert hang.run([_req([5, 40, 6, 41], 1)])  # a batch without token 0 is served
    stuck = threading.Thread(target=hang.run, args=([_req([5, 0, 6], 1)],), daemon=True)
    stuck.start()
    stuck.join(0.3)
    assert stuck.is_alive()  # wedged for good (a daemon thread: ends with the test process)


@pytest.mark.parametrize(("params", "needle"), [
    ({"fault": "delay"}, "fault 'delay' is not one of"),
    ({"token_delay_ms": "5"}, r"unknown parameter\(s\) \['token_delay_ms'\]"),
])
def test_bad_parameters_are_refused(engine, params, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        PacedEngine(engine, params)
