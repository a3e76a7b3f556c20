"""Prometheus metrics of the cascade, through the Python backend's custom-metrics API.

They appear on Triton's metrics port next to Triton's own (nv_inference_*). Counters only, so that any
Prometheus can rate() them; the confidence distribution is bucketed counters (``bucket`` label gives the
lower edge of a 0.1-wide bin).
"""

from __future__ import annotations

import math
from typing import Any

from optistop.cascade import CascadeResult

PREFIX = "optistop_cascade"
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
}


class TritonMetrics:
    """Records each response into pb_utils MetricFamily counters (created in initialize())."""

    def __init__(self, pb_utils: Any) -> None:
        self.families = {
            key: pb_utils.MetricFamily(name=f"{PREFIX}_{key}", description=desc, kind=pb_utils.MetricFamily.COUNTER)
            for key, desc in FAMILIES.items()
        }
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    def _inc(self, family: str, value: float = 1.0, **labels: str) -> None:
        key = (family, tuple(sorted(labels.items())))
        if key not in self._metrics:
            self._metrics[key] = self.families[family].Metric(labels=dict(labels))
        self._metrics[key].increment(value)

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
