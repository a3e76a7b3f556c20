"""Prometheus metrics of the cascade, through the Python backend's custom-metrics API.

They appear on Triton's metrics port next to Triton's own (nv_inference_*). Counters only, so that any
Prometheus can rate() them; the confidence distribution is bucketed counters (``bucket`` label gives the
lower edge of a 0.1-wide bin).

Each ``Metric.increment`` is a blocking round trip from the backend stub to the server; seven or more per
request cost the cascade about as much CPU as its whole stopping loop (py-spy, bench/profile.md). So
increments are summed in the stub and sent once per ``FLUSH_S`` from the model's event loop: a scrape
sees a request at most ``FLUSH_S`` late (Prometheus scrapes every 15-60 s), and nothing is lost.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from optistop.cascade import CascadeResult

PREFIX = "optistop_cascade"
FLUSH_S = 0.25
FAMILIES: dict[str, str] = {
    "requests_total": "Cascade responses by the stage that answered and the policy",
    "stage_runs_total": "Stage engine calls made by the cascade, by stage",
    "escalations_total": "Escalations from one stage to the next one run (from -> to)",
    "cost_total": "Cost paid (sum of nominal costs of every stage run)",
    "degraded_total": "Responses answered in degraded mode after a fault",
    "errors_total": "Requests that failed, by Triton error code",
    "confidence_total": "Calibrated confidences by stage, in 0.1-wide buckets (label: lower edge)",
    "predictor_seconds_total": "Time spent in quality-predictor calls",
    "controller_seconds_total": "Time spent outside stage engines: features, predictor, policy",
    "audits_total": "Audited requests (every stage not run was run off the critical path; optistop.audit)",
    "audit_cost_total": "Cost paid by audits (stages run only for the audit), apart from cost_total",
    "audit_failures_total": "Audits that could not complete (a stage or the predictor failed)",
    "drift_alarms_total": "Drift alarms: a CUSUM of optistop.drift crossed (mix warning or audited disagreement)",
}
# Gauges of the delivered-quality estimate (set after each audit; optistop.serving.audit)
GAUGES: dict[str, str] = {
    "quality_estimate": "Delivered quality relative to the reference stage, over the audit window",
    "quality_lower_bound": "Lower confidence bound of the delivered quality relative to the reference",
    "quality_upper_bound": "Upper confidence bound of the delivered quality relative to the reference",
    "audits_in_window": "Audits the quality estimate rests on",
    "audit_cost_share": "Audit cost / (served cost + audit cost) since start or recalibration",
    "drift_alarm": "1 while the drift alarm is raised",
    "policy_version": "Version of the policy artifact serving (policy.json 'version')",
    "safer_step": "Steps taken towards safer operating points since the last recalibration (on_drift)",
}


class TritonMetrics:
    """Records each response into pb_utils MetricFamily counters (created in initialize())."""

    def __init__(self, pb_utils: Any, flush_s: float = FLUSH_S) -> None:
        self.families = {
            key: pb_utils.MetricFamily(name=f"{PREFIX}_{key}", description=desc, kind=pb_utils.MetricFamily.COUNTER)
            for key, desc in FAMILIES.items()
        }
        self.gauges = {
            key: pb_utils.MetricFamily(name=f"{PREFIX}_{key}", description=desc, kind=pb_utils.MetricFamily.GAUGE)
            for key, desc in GAUGES.items()
        }
        self._gauge_metrics: dict[tuple[str, str], Any] = {}
        self.flush_s = flush_s
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._scheduled = False
        self._closed = False

    def _inc(self, family: str, value: float = 1.0, **labels: str) -> None:
        if self._closed:
            return
        key = (family, tuple(sorted(labels.items())))
        self._pending[key] = self._pending.get(key, 0.0) + value
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # called outside an event loop: nothing would flush later, send now
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        """Send the summed increments to the server."""
        self._scheduled = False
        if self._closed:   # a timer that fires after close(): its increments went out with close()
            return
        pending, self._pending = self._pending, {}
        for (family, labels), value in pending.items():
            metric = self._metrics.get((family, labels))
            if metric is None:
                metric = self._metrics[(family, labels)] = self.families[family].Metric(labels=dict(labels))
            metric.increment(value)

    def close(self) -> None:
        """From the model's finalize(): send what is pending, then release every Metric and MetricFamily
        while the backend process can still tell the server. pb_utils leaves their lifetime to the model
        (python_backend README, "Custom Metrics"); left to the interpreter's exit, their destructors ran
        after the stub had torn down its shared memory, and the cascade stubs segfaulted on every unload
        in Metric::SaveToSharedMemory (kernel log: 200+ such crashes in a day of test servers)."""
        self.flush()
        self._closed = True
        self._metrics.clear()          # each Metric before its MetricFamily (deleting the family first
        self._gauge_metrics.clear()    # leaves the Metric an error to use, python_backend PR 254)
        self.families.clear()
        self.gauges.clear()

    def record(self, r: CascadeResult, policy: str) -> None:
        self._inc("requests_total", stage=r.stage_model, policy=policy)
        self._inc("cost_total", r.cost)
        names = [r_.stage for r_ in r.records]
        for rec in r.records:
            self._inc("stage_runs_total", stage=str(rec.stage))
            if math.isfinite(rec.confidence):
                bucket = min(int(rec.confidence * 10), 9) / 10
                self._inc("confidence_total", stage=str(rec.stage), bucket=f"{bucket:.1f}")
        for a, b in zip(names, names[1:]):
            self._inc("escalations_total", **{"from": str(a), "to": str(b)})
        if r.degraded:
            self._inc("degraded_total")
        self._inc("predictor_seconds_total", r.predictor_ms / 1e3)
        self._inc("controller_seconds_total", max(r.controller_ms, 0.0) / 1e3)

    def error(self, code: str) -> None:
        self._inc("errors_total", code=code)

    def count(self, family: str, value: float = 1.0) -> None:
        """An increment of a label-less counter (the audit counters)."""
        self._inc(family, value)

    def gauge(self, key: str, value: float, model: str = "cascade") -> None:
        """Set a gauge now (a round trip; called once per audit, a few per cent of requests). ``model``
        labels it: the plain and the streaming cascade each keep their own estimate."""
        if self._closed:
            return
        m = self._gauge_metrics.get((key, model))
        if m is None:
            m = self._gauge_metrics[(key, model)] = self.gauges[key].Metric(labels={"model": model})
        m.set(float(value))
