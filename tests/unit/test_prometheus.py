"""Cascade metrics: increments are summed in the stub and sent to the server once per flush interval."""

from __future__ import annotations

import asyncio

import pytest

from optistop.cascade import CascadeResult, StageRecord
from optistop.serving.prometheus import TritonMetrics
from tests import fake_pb_utils as pb


def result(stages: list[int], conf: list[float], cost: float) -> CascadeResult:
    recs = [StageRecord(k, 5.0, c) for k, c in zip(stages, conf)]
    return CascadeResult("47", stages[-1], f"stage_{stages[-1]}", recs, cost, predictor_ms=0.5, controller_ms=1.0)


def sent(m: TritonMetrics) -> dict[tuple[str, frozenset], float]:
    return {(fam, frozenset(labels)): metric.value() for (fam, labels), metric in m._metrics.items()}


@pytest.fixture
def calls(monkeypatch) -> list[float]:
    """Every Metric.increment call (each one a round trip to the server in a real stub)."""
    seen: list[float] = []
    real = pb.Metric.increment

    def counting(self, value: float) -> None:
        seen.append(value)
        real(self, value)

    monkeypatch.setattr(pb.Metric, "increment", counting)
    return seen


def test_increments_are_summed_and_sent_once_per_interval(calls) -> None:
    m = TritonMetrics(pb, flush_s=0.05)
    traffic = [result([0], [0.9], 1.0), result([0, 1], [0.2, 0.8], 5.5), result([0], [0.95], 1.0)]

    async def serve() -> int:
        for r in traffic:
            m.record(r, "optimal")
        during = len(calls)
        await asyncio.sleep(0.15)
        return during

    assert asyncio.run(serve()) == 0                       # nothing sent while requests are answered
    got = sent(m)
    assert got[("requests_total", frozenset({("stage", "stage_0"), ("policy", "optimal")}))] == 2
    assert got[("requests_total", frozenset({("stage", "stage_1"), ("policy", "optimal")}))] == 1
    assert got[("stage_runs_total", frozenset({("stage", "0")}))] == 3
    assert got[("escalations_total", frozenset({("from", "0"), ("to", "1")}))] == 1
    assert got[("cost_total", frozenset())] == pytest.approx(7.5)
    assert got[("confidence_total", frozenset({("stage", "0"), ("bucket", "0.9")}))] == 2
    assert got[("controller_seconds_total", frozenset())] == pytest.approx(0.003)
    assert len(calls) == len(got)                          # one round trip per counter, not per request


def test_outside_an_event_loop_increments_are_sent_at_once(calls) -> None:
    m = TritonMetrics(pb, flush_s=60.0)
    m.error("INVALID_ARG")
    assert calls == [1.0] and sent(m) == {("errors_total", frozenset({("code", "INVALID_ARG")})): 1.0}


def test_close_sends_what_is_pending_and_lets_go_of_every_metric(calls) -> None:
    """finalize() -> close(): the pending increments go out, then no Metric or MetricFamily is left for the
    interpreter's exit to destroy after the stub's shared memory is gone, and a timer firing later, or a
    late increment, sends nothing."""
    import weakref

    m = TritonMetrics(pb, flush_s=0.05)

    async def serve() -> None:
        m.record(result([0], [0.9], 1.0), "optimal")
        m.gauge("drift_alarm", 1.0)
        m.close()
        m.error("INVALID_ARG")
        await asyncio.sleep(0.15)              # the flush timer scheduled by record() fires after close()

    families = list(m.families.values()) + list(m.gauges.values())
    asyncio.run(serve())
    # the record's six counters (requests, cost 1.0, stage runs, confidence bucket, 0.5 ms, 1 ms), once;
    # not the error after close(), nor anything from the timer
    assert len(calls) == 6 and sum(calls) == pytest.approx(4.0015)
    assert (m._metrics, m._gauge_metrics, m.families, m.gauges) == ({}, {}, {}, {})
    refs = [weakref.ref(f) for f in families if f.name.endswith("_requests_total")]
    pb.MetricFamily.families.clear()           # the fake's own registry, which the real module does not keep
    del families
    assert [r() for r in refs] == [None]       # nothing of ours holds the family any more
