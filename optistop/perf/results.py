"""Aggregate interleaved perf_analyzer runs into the figures of bench/results.json.

optistop.perf.markdown writes them out as bench/results.md and a PNG; optistop.perf.stage_direct adds the
throughput ideal, optistop.perf.controller the controller overhead per predictor mode.

Input: one ``Run`` per perf_analyzer call (configuration x concurrency x repeat), each holding what
optistop.perf.parse read from perf_analyzer's CSV and profile export and from Triton's statistics.
Every figure is a median over repeats of a perf_analyzer figure, or a percentile over the requests that
perf_analyzer recorded; ratios are taken within one repeat (side by side) before the median.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optistop.perf.parse import RequestRecord, per_request_ms, percentile

BASELINE = "fixed:2"     # always-large: what every ratio is taken against
CASCADE = "cascade"      # the configuration name of the cascade at its default policy and lambda
CSV_KEYS = ("throughput_infer_per_s", "latency_avg_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms")


@dataclass
class Run:
    config: str
    concurrency: int
    rep: int
    csv: dict[str, float]                              # parse_pa_csv row for this concurrency
    requests: list[RequestRecord]                      # parse_profile_export records
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # stats_diff over this run
    metrics: dict[str, float] = field(default_factory=dict)         # the cascade's counters over this run
    server: dict[str, Any] = field(default_factory=dict)            # server_breakdown of stats


def _median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(float(statistics.median(xs)), 4) if xs else None


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _grade(prompt: str, text: str) -> bool | None:
    from optistop.tiny.tasks import grade

    try:
        return grade(prompt, text)
    except ValueError:  # not a task-suite prompt
        return None


def request_summary(recs: Sequence[RequestRecord], n_stages: int) -> dict[str, Any]:
    """Stage mix, cost, accuracy and time outside stage calls, over requests pooled across repeats."""
    graded = [g for g in (_grade(r.prompt, r.text) for r in recs) if g is not None]
    per_decision = [r.outside_stages_ms / r.decisions for r in recs]
    return {
        "requests": len(recs),
        "answered_by_stage": [round(sum(r.stage == k for r in recs) / len(recs), 4) for k in range(n_stages)],
        "ran_stage": [round(sum(k in r.stages_run for r in recs) / len(recs), 4) for k in range(n_stages)],
        "mean_stages_run": _r(statistics.fmean(len(r.stages_run) for r in recs)),
        "mean_cost": _r(statistics.fmean(r.cost for r in recs)),
        "accuracy": _r(sum(graded) / len(graded)) if graded else None,
        "degraded": _r(sum(r.degraded for r in recs) / len(recs)),
        "outside_stages_per_request_p50_ms": _r(percentile([r.outside_stages_ms for r in recs], 50)),
        "outside_stages_per_request_p99_ms": _r(percentile([r.outside_stages_ms for r in recs], 99)),
        "outside_stages_per_decision_p50_ms": _r(percentile(per_decision, 50)),
        "outside_stages_per_decision_p99_ms": _r(percentile(per_decision, 99)),
    }


def server_breakdown(run: Run, cascade_model: str, stage_models: Sequence[str], predictor: str) -> dict[str, Any]:
    """Mean ms per cascade request from Triton's per-model statistics over one run."""
    s = run.stats
    casc = s.get(cascade_model, {})
    n = casc.get("success_count", 0)
    if not n:
        return {}
    compute = sum(casc.get(f"{k}_ns", 0) for k in ("compute_input", "compute_infer", "compute_output")) / n / 1e6
    stages = sum(s.get(m, {}).get("success_ns", 0) for m in stage_models) / n / 1e6
    pred = s.get(predictor, {})
    m = run.metrics
    own = m.get("optistop_cascade_requests_total", 0.0)
    return {
        # the cascade's own clock (Prometheus counters it keeps: time outside stage calls, predictor calls)
        "controller_own_ms": _r(m["optistop_cascade_controller_seconds_total"] * 1e3 / own)
        if own and "optistop_cascade_controller_seconds_total" in m else None,
        "predictor_own_ms": _r(m["optistop_cascade_predictor_seconds_total"] * 1e3 / own)
        if own and "optistop_cascade_predictor_seconds_total" in m else None,
        "cascade_queue_ms": _r(per_request_ms(casc, "queue")),
        "cascade_compute_ms": _r(compute),
        "stage_engines_ms": _r(stages),            # stage models' server-side request time, all calls
        "predictor_ms": _r(per_request_ms(pred, "success", per=n)),
        "predictor_calls": _r(pred.get("success_count", 0) / n),
        "cascade_batch_size": _r(casc.get("inference_count", 0) / max(1, casc.get("execution_count", 0))),
        "outside_stage_engines_ms": _r(compute - stages),  # in the cascade's execute, not in a stage model
    }


def aggregate(runs: Sequence[Run], *, n_stages: int, cascade_model: str, stage_models: Sequence[str],
              predictor: str, count_tokens: Callable[[str], int]) -> dict[str, Any]:
    configs = list(dict.fromkeys(r.config for r in runs))
    concs = sorted({r.concurrency for r in runs})
    by = {(r.config, r.concurrency, r.rep): r for r in runs}
    reps = sorted({r.rep for r in runs})
    for r in runs:
        r.server = server_breakdown(r, cascade_model, stage_models, predictor)
    table: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        table[cfg] = {}
        for c in concs:
            rs = [by[(cfg, c, k)] for k in reps if (cfg, c, k) in by]
            if not rs:
                continue
            row: dict[str, Any] = {k: _median([r.csv.get(k) for r in rs]) for k in CSV_KEYS}
            row["spread"] = {k: [_r(min(r.csv[k] for r in rs)), _r(max(r.csv[k] for r in rs))]
                             for k in CSV_KEYS if all(k in r.csv for r in rs)}
            row["repeats"] = len(rs)
            if cfg != BASELINE:
                for k in ("latency_avg_ms", "latency_p50_ms", "latency_p99_ms", "throughput_infer_per_s"):
                    ratios = [by[(cfg, c, r.rep)].csv[k] / by[(BASELINE, c, r.rep)].csv[k]
                              for r in rs if (BASELINE, c, r.rep) in by]
                    row[f"ratio_to_{BASELINE}_{k}"] = _median(ratios)
            row.update(request_summary([q for r in rs for q in r.requests], n_stages))
            row["server"] = {k: _median([r.server.get(k) for r in rs]) for k in rs[0].server}
            table[cfg][str(c)] = row
    out: dict[str, Any] = {"configurations": table}
    if CASCADE in table and BASELINE in table:
        out["cascade_vs_large_latency_ratio"] = {
            c: table[CASCADE][c].get(f"ratio_to_{BASELINE}_latency_avg_ms") for c in table[CASCADE]}
    out.update(controller_overhead(runs, table))
    out["measured_stage_cost"] = stage_costs(runs, stage_models, count_tokens)
    return out


def controller_overhead(runs: Sequence[Run], table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline overhead figures: the cascade at concurrency 1, per decision (one per stage run).

    Per request, the time outside stage calls is perf_analyzer's latency minus the cascade's own
    stage_latency_ms. That still holds gRPC and the cascade's dynamic-batching queue, which are not the
    controller: the in-server figure removes, per run, perf_analyzer's mean latency minus the cascade's
    mean compute time from Triton's statistics (at concurrency 1 the cascade runs batches of one, so that
    compute time is each request's own). If the model outputs ``controller_ms``, that is used instead.
    """
    row = table.get(CASCADE, {}).get("1")
    cascade_runs = [r for r in runs if r.config == CASCADE and r.concurrency == 1]
    if not row or not cascade_runs:
        return {}
    direct = [q.controller_ms / q.decisions for r in cascade_runs for q in r.requests if q.controller_ms is not None]
    in_server: list[float] = []
    for r in cascade_runs:
        compute = r.server.get("cascade_compute_ms")
        if compute is None or not r.requests:
            continue
        outside = r.csv["latency_avg_ms"] - compute          # transport + queue + client, mean of this run
        in_server += [(q.outside_stages_ms - outside) / q.decisions for q in r.requests]
    samples, source = (direct, "controller_ms output") if direct else (in_server, "in-server, derived")
    srv = row.get("server", {})
    decisions = row.get("mean_stages_run") or 1.0
    per_dec = lambda x: _r(x / decisions) if x is not None else None
    return {
        "controller_overhead_p50_ms": _r(percentile(samples, 50)) if samples else None,
        "controller_overhead_p99_ms": _r(percentile(samples, 99)) if samples else None,
        "controller_overhead_source": source,
        "controller_overhead_definition": (
            "per decision (stage run) of the served cascade model at concurrency 1, all repeats pooled: each "
            "request's controller_ms output (time inside the cascade outside stage-engine calls: features, "
            "predictor, policy) divided by the stages it ran" if direct else
            "per decision (stage run) of the cascade at concurrency 1, all repeats pooled: each request's "
            "perf_analyzer latency minus the sum of its stage_latency_ms (the cascade's own output), minus "
            "that run's mean time outside the cascade's execute (perf_analyzer mean latency minus the "
            "cascade's mean compute time in Triton's statistics: gRPC and queueing), divided by the stages "
            "it ran. What remains: tokenisation, features, predictor calls (BLS), policy, response building"),
        "controller_overhead_client_p50_ms": row["outside_stages_per_decision_p50_ms"],
        "controller_overhead_client_p99_ms": row["outside_stages_per_decision_p99_ms"],
        "controller_overhead_server_mean_ms": {
            "cascade_queue_per_request": srv.get("cascade_queue_ms"),
            "in_cascade_outside_stage_engines_per_decision": per_dec(srv.get("outside_stage_engines_ms")),
            "predictor_per_decision": per_dec(srv.get("predictor_ms")),
            "source": "Triton per-model statistics (median over repeats of the per-run means)",
            "cascade_own_controller_per_decision": per_dec(srv.get("controller_own_ms")),
            "cascade_own_predictor_calls_per_decision": per_dec(srv.get("predictor_own_ms")),
            "own_source": "the cascade's Prometheus counters optistop_cascade_controller_seconds_total and "
                          "_predictor_seconds_total over its requests_total",
        },
    }


def stage_costs(runs: Sequence[Run], stage_models: Sequence[str], count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """Per-stage latency under fixed:<k> at concurrency 1: per request and per output token as the cascade
    sees it (its stage_latency_ms: BLS round trip, the stage's queue and compute), and the stage model's
    own compute time from Triton's statistics."""
    n = len(stage_models)
    lat: dict[int, list[float]] = {k: [] for k in range(n)}
    per_tok: dict[int, list[float]] = {k: [] for k in range(n)}
    compute: dict[int, list[float]] = {k: [] for k in range(n)}
    for r in runs:
        if r.concurrency != 1 or not r.config.startswith("fixed:"):
            continue
        for q in r.requests:
            if len(q.stages_run) == 1 and q.stage_latency_ms:
                lat[q.stages_run[0]].append(q.stage_latency_ms[0])
                per_tok[q.stages_run[0]].append(q.stage_latency_ms[0] / max(1, count_tokens(q.text)))
        k = int(r.config.split(":")[1])
        st = r.stats.get(stage_models[k], {}) if 0 <= k < n else {}
        if st.get("compute_infer_count"):
            compute[k].append(sum(st.get(f"{x}_ns", 0) for x in ("compute_input", "compute_infer", "compute_output"))
                              / st["compute_infer_count"] / 1e6)
    if not lat[0]:
        return {}
    base, base_tok = percentile(lat[0], 50), percentile(per_tok[0], 50)
    base_compute = _median(compute[0])
    return {str(k): {
        "latency_p50_ms": _r(percentile(lat[k], 50)),
        "latency_per_output_token_p50_ms": _r(percentile(per_tok[k], 50)),
        "relative_cost": _r(percentile(lat[k], 50) / base, 3),
        "relative_cost_per_token": _r(percentile(per_tok[k], 50) / base_tok, 3),
        "engine_compute_mean_ms": _median(compute[k]),
        "relative_engine_compute": (_r(_median(compute[k]) / base_compute, 3)
                                    if compute[k] and base_compute else None),
        "requests": len(lat[k]),
    } for k in range(n) if lat[k]}
