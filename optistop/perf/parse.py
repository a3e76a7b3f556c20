"""Readers for what perf_analyzer and Triton write: the latency CSV, the profile export, model statistics.

Pure functions over text and dicts (no server, no subprocess), so they are unit-tested on small fixtures
written by hand (tests/test_bench.py). Every figure in bench/results.json is read by these functions from
perf_analyzer's own files or from Triton's statistics endpoint; nothing is timed by the benchmark itself.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optistop import prometheus_text

# perf_analyzer -f CSV column -> our key (perf_analyzer writes microseconds; we report milliseconds)
CSV_LATENCY_COLUMNS: dict[str, str] = {
    "p50 latency": "latency_p50_ms",
    "p90 latency": "latency_p90_ms",
    "p95 latency": "latency_p95_ms",
    "p99 latency": "latency_p99_ms",
    "Avg latency": "latency_avg_ms",
    "Client Send": "client_send_ms",
    "Network+Server Send/Recv": "network_ms",
    "Server Queue": "server_queue_ms",
    "Server Compute Input": "server_compute_input_ms",
    "Server Compute Infer": "server_compute_infer_ms",
    "Server Compute Output": "server_compute_output_ms",
    "Client Recv": "client_recv_ms",
}


class ParseError(ValueError):
    """A perf_analyzer or Triton output that does not have the expected shape; the message says which."""


def parse_pa_csv(text: str) -> dict[int, dict[str, float]]:
    """perf_analyzer's ``-f`` CSV -> {concurrency: {throughput_infer_per_s, latency_*_ms, ...}}."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "Concurrency" not in rows[0] or "Inferences/Second" not in rows[0]:
        raise ParseError("perf_analyzer CSV lacks the 'Concurrency' and 'Inferences/Second' columns")
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        rec = {"throughput_infer_per_s": float(row["Inferences/Second"])}
        for col, key in CSV_LATENCY_COLUMNS.items():
            if row.get(col) not in (None, ""):
                rec[key] = float(row[col]) / 1000.0
        out[int(row["Concurrency"])] = rec
    return out


@dataclass(frozen=True)
class RequestRecord:
    """One request of a perf_analyzer profile export, with the cascade's own outputs."""

    latency_ms: float              # last response timestamp - request timestamp (perf_analyzer's clock)
    prompt: str
    policy: str
    text: str
    stage: int                     # the stage that answered
    stages_run: tuple[int, ...]
    stage_latency_ms: tuple[float, ...]  # one per stage run, measured inside the BLS around each call
    cost: float
    controller_ms: float | None = None   # the cascade's own figure, if the model outputs `controller_ms`
    degraded: bool = False               # answered in degraded mode after a stage or predictor fault

    @property
    def outside_stages_ms(self) -> float:
        """Time of this request not spent in stage calls: transport, queueing, features, predictor, policy."""
        return self.latency_ms - sum(self.stage_latency_ms)

    @property
    def decisions(self) -> int:
        """Decisions the controller took: one per stage run (score, then stop or continue)."""
        return max(1, len(self.stages_run))


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


def _scalar(v: Any) -> Any:
    return v[0] if isinstance(v, list) else v


def parse_profile_export(doc: Mapping[str, Any]) -> dict[int, list[RequestRecord]]:
    """A ``--profile-export-file`` JSON -> {concurrency: [RequestRecord, ...]} for the measured requests."""
    if "experiments" not in doc:
        raise ParseError("profile export has no 'experiments'")
    out: dict[int, list[RequestRecord]] = {}
    for exp in doc["experiments"]:
        mode = exp.get("experiment", {})
        if mode.get("mode") != "concurrency":
            raise ParseError(f"profile export experiment mode {mode.get('mode')!r}; expected 'concurrency'")
        recs = []
        for req in exp.get("requests", []):
            stamps, outs = req.get("response_timestamps") or [], req.get("response_outputs") or []
            if not stamps or not outs:
                raise ParseError(f"request at {req.get('timestamp')} has no response in the profile export")
            o, inp = outs[-1], req.get("request_inputs", {})
            missing = [k for k in ("stage", "stages_run", "stage_latency_ms", "cost") if k not in o]
            if missing:
                raise ParseError(f"response lacks the cascade outputs {missing}; is the model 'cascade'?")
            recs.append(RequestRecord(
                latency_ms=(int(stamps[-1]) - int(req["timestamp"])) / 1e6,
                prompt=str(_scalar(inp.get("text_input", ""))),
                policy=str(_scalar(inp.get("policy", ""))),
                text=str(_scalar(o.get("text_output", ""))),
                stage=int(_scalar(o["stage"])),
                stages_run=tuple(int(x) for x in _list(o["stages_run"])),
                stage_latency_ms=tuple(float(x) for x in _list(o["stage_latency_ms"])),
                cost=float(_scalar(o["cost"])),
                controller_ms=float(_scalar(o["controller_ms"])) if "controller_ms" in o else None,
                degraded=str(_scalar(o.get("degraded", False))).lower() in ("true", "1"),
            ))
        out[int(mode["value"])] = recs
    return out


# --- Triton per-model statistics (GET /v2/models/stats, or gRPC ModelStatistics as JSON) -------------
STAT_KEYS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def stats_snapshot(doc: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Triton's statistics JSON -> {model: {inference_count, execution_count, <key>_count, <key>_ns}}.

    Protobuf's JSON writes 64-bit integers as strings and leaves zero fields out; both are handled.
    """
    snap: dict[str, dict[str, int]] = {}
    for m in doc.get("model_stats", []):
        s = m.get("inference_stats", {})
        rec = {"inference_count": int(m.get("inference_count", 0)),
               "execution_count": int(m.get("execution_count", 0))}
        for key in STAT_KEYS:
            rec[f"{key}_count"] = int(s.get(key, {}).get("count", 0))
            rec[f"{key}_ns"] = int(s.get(key, {}).get("ns", 0))
        snap[m["name"]] = rec
    return snap


def stats_diff(before: Mapping[str, Mapping[str, int]],
               after: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Per-model counter increments between two snapshots (the requests of one perf_analyzer run)."""
    zero: dict[str, int] = {}
    return {name: {k: v - before.get(name, zero).get(k, 0) for k, v in rec.items()} for name, rec in after.items()}


def per_request_ms(diff: Mapping[str, int], key: str, per: int | None = None) -> float | None:
    """Mean milliseconds of ``key`` (success, queue, compute_infer, ...) per request, or per ``per`` calls."""
    n = per if per is not None else diff.get(f"{key}_count", 0)
    return diff.get(f"{key}_ns", 0) / n / 1e6 if n else None


def parse_prometheus(text: str, prefix: str) -> dict[str, float]:
    """Prometheus text exposition -> {metric name: value summed over its label sets}, for names with prefix."""
    try:
        found = prometheus_text.samples(text, prefix)
    except ValueError as exc:
        raise ParseError(f"unreadable Prometheus text: {exc}") from None
    out: dict[str, float] = {}
    for (name, _), v in found.items():
        out[name] = out.get(name, 0.0) + v
    return out


def percentile(xs: Sequence[float], q: float) -> float:
    """numpy's linear-interpolation percentile (q in 0..100) of a non-empty sequence."""
    if not len(xs):
        raise ParseError("percentile of no values")
    return float(np.percentile(np.asarray(xs, dtype=float), q))
