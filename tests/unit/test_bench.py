"""The benchmark's readers and aggregation, on small perf_analyzer / Triton outputs written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optistop.perf.bench import configurations, held_out_prompts, input_data
from optistop.perf.markdown import write_markdown
from optistop.perf.parse import (
    ParseError,
    RequestRecord,
    parse_pa_csv,
    parse_profile_export,
    parse_prometheus,
    per_request_ms,
    stats_diff,
    stats_snapshot,
)
from optistop.perf.results import Run, aggregate
from optistop.spec import load_spec

# perf_analyzer 2.51 `-f out.csv --verbose-csv` (GPU metric columns empty on a CPU machine); microseconds
PA_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait,Avg GPU Utilization,Avg GPU Power Usage,"
    "Max GPU Memory Usage,Total GPU Memory\n"
    "2,138.019,8,867,4989,33,8204,336,5,14089,15262,16301,20284,14445,13,14397,,,,\n"
)


def _req(t0: int, latency_us: int, stage, stages_run, stage_ms, cost=1.0, prompt="12+35=", text="47",
         policy="fixed:2", **extra) -> dict:
    out = {"text_output": text, "stage": stage, "stages_run": stages_run, "stage_latency_ms": stage_ms,
           "cost": cost, **extra}
    return {"timestamp": t0, "request_inputs": {"text_input": prompt, "policy": policy, "max_tokens": 16},
            "response_timestamps": [t0 + latency_us * 1000], "response_outputs": [out]}


def _export(concurrency: int, requests: list[dict]) -> dict:
    return {"experiments": [{"experiment": {"mode": "concurrency", "value": concurrency},
                             "requests": requests, "window_boundaries": [0, 1, 2, 3]}],
            "version": "2.51.0", "service_kind": "triton", "endpoint": ""}


def test_parse_pa_csv_reads_microseconds_as_milliseconds() -> None:
    row = parse_pa_csv(PA_CSV)[2]
    assert row["throughput_infer_per_s"] == pytest.approx(138.019)
    assert row["latency_p50_ms"] == pytest.approx(14.089)
    assert row["latency_p99_ms"] == pytest.approx(20.284)
    assert row["latency_avg_ms"] == pytest.approx(14.445)
    assert "Avg GPU Utilization" not in row


def test_parse_pa_csv_rejects_other_files() -> None:
    with pytest.raises(ParseError, match="Concurrency"):
        parse_pa_csv("a,b\n1,2\n")


def test_parse_profile_export_scalar_and_list_outputs() -> None:
    doc = _export(1, [_req(1_000_000, 20_000, 2, [0, 2], [4.0, 11.5], cost=11.0, policy="optimal"),
                      _req(2_000_000, 9_000, [0], 0, 5.0)])  # scalars where the shape is [1]
    a, b = parse_profile_export(doc)[1]
    assert a.latency_ms == pytest.approx(20.0)
    assert (a.stage, a.stages_run, a.stage_latency_ms, a.cost) == (2, (0, 2), (4.0, 11.5), 11.0)
    assert a.outside_stages_ms == pytest.approx(4.5) and a.decisions == 2
    assert (b.stage, b.stages_run, b.stage_latency_ms) == (0, (0,), (5.0,))
    assert a.prompt == "12+35=" and a.policy == "optimal" and a.controller_ms is None


def test_parse_profile_export_reads_controller_ms_when_the_model_outputs_it() -> None:
    doc = _export(1, [_req(0, 10_000, 2, [2], [8.0], controller_ms=[0.4])])
    assert parse_profile_export(doc)[1][0].controller_ms == pytest.approx(0.4)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.update(response_timestamps=[]), "no response"),
    (lambda r: r["response_outputs"][0].pop("stage_latency_ms"), "stage_latency_ms"),
])
def test_parse_profile_export_errors_name_the_problem(mutate, match) -> None:
    req = _req(0, 1000, 2, [2], [1.0])
    mutate(req)
    with pytest.raises(ParseError, match=match):
        parse_profile_export(_export(1, [req]))


def test_stats_snapshot_and_diff_handle_protobuf_json() -> None:
    # gRPC ModelStatistics as JSON: int64 as strings, zero fields left out
    before = stats_snapshot({"model_stats": [
        {"name": "cascade", "version": "1", "inference_count": "10", "execution_count": "10",
         "inference_stats": {"success": {"count": "10", "ns": "100000000"}, "queue": {"count": "10", "ns": "0"}}},
        {"name": "stage_small", "version": "1"},
    ]})
    after = stats_snapshot({"model_stats": [
        {"name": "cascade", "version": "1", "inference_count": "14", "execution_count": "12",
         "inference_stats": {"success": {"count": "14", "ns": "180000000"}, "queue": {"count": "14", "ns": "4000000"},
                             "compute_infer": {"count": "14", "ns": "60000000"}}},
        {"name": "stage_small", "version": "1"},
    ]})
    d = stats_diff(before, after)
    assert d["cascade"]["success_count"] == 4 and d["cascade"]["execution_count"] == 2
    assert per_request_ms(d["cascade"], "success") == pytest.approx(20.0)
    assert per_request_ms(d["cascade"], "queue") == pytest.approx(1.0)
    assert per_request_ms(d["stage_small"], "success") is None


def test_parse_prometheus_sums_label_sets_of_the_prefix() -> None:
    text = (
        "# HELP optistop_cascade_requests_total Cascade responses\n"
        "# TYPE optistop_cascade_requests_total counter\n"
        'optistop_cascade_requests_total{policy="optimal",stage="stage_small"} 7\n'
        'optistop_cascade_requests_total{policy="optimal",stage="stage_large"} 3\n'
        "optistop_cascade_controller_seconds_total 0.0125\n"
        'nv_inference_count{model="cascade",version="1"} 10\n'
    )
    assert parse_prometheus(text, "optistop_cascade_") == {
        "optistop_cascade_requests_total": 10.0, "optistop_cascade_controller_seconds_total": 0.0125}


def test_parse_prometheus_reads_timestamps_escapes_and_refuses_garbage() -> None:
    text = ('optistop_cascade_requests_total{policy="a \\"b} c\\"",stage="x"} 2 1700000000000\n'
            'optistop_cascade_requests_total{stage="y",policy="fixed:1"} 0.5\n')
    assert parse_prometheus(text, "optistop_cascade_") == {"optistop_cascade_requests_total": 2.5}
    with pytest.raises(ParseError, match="unreadable Prometheus text"):
        parse_prometheus("optistop_cascade_requests_total{stage=x} 1\n", "optistop_cascade_")


def _run(config: str, rep: int, latency: float, throughput: float, requests: list[RequestRecord],
         stats: dict | None = None) -> Run:
    csv = {"throughput_infer_per_s": throughput, "latency_avg_ms": latency, "latency_p50_ms": latency,
           "latency_p90_ms": latency, "latency_p99_ms": latency * 1.5}
    return Run(config, 1, rep, csv, requests, stats or {})


def _rec(latency: float, stages: tuple[int, ...], stage_ms: tuple[float, ...], text: str = "47") -> RequestRecord:
    return RequestRecord(latency, "12+35=", "x", text, stages[-1], stages, stage_ms, float(len(stages)))


def test_aggregate_medians_side_by_side_ratios_overhead_and_costs() -> None:
    ms = 1_000_000
    runs = []
    for rep, drift in enumerate((1.0, 2.0, 1.1)):  # rep 1 ran on a slow machine: ratios are taken within a rep
        casc = [_rec(12.0 * drift, (0,), (9.0 * drift,)), _rec(25.0 * drift, (0, 2), (8.0 * drift, 13.0 * drift))]
        stats = {"cascade": {"success_count": 2, "inference_count": 2, "execution_count": 2,
                             "queue_ns": 2 * ms, "queue_count": 2,
                             "compute_input_ns": 0, "compute_infer_ns": int(2 * 16.5 * drift * ms),
                             "compute_output_ns": 0},
                 "stage_small": {"success_count": 2, "success_ns": int(15 * drift * ms)},
                 "stage_large": {"success_count": 1, "success_ns": int(12 * drift * ms)},
                 "quality_predictor": {"success_count": 3, "success_ns": int(1.5 * ms)}}
        runs.append(_run("cascade", rep, 18.5 * drift, 50 / drift, casc, stats))
        runs.append(_run("fixed:0", rep, 10.0 * drift, 90 / drift, [_rec(10.0, (0,), (8.0,), "47")]))
        runs.append(_run("fixed:1", rep, 14.0 * drift, 70 / drift, [_rec(14.0, (1,), (12.0,), "47")]))
        runs.append(_run("fixed:2", rep, 20.0 * drift, 45 / drift, [_rec(20.0, (2,), (16.0,), "4700")]))
    res = aggregate(runs, n_stages=3, cascade_model="cascade",
                    stage_models=["stage_small", "stage_medium", "stage_large"], predictor="quality_predictor",
                    count_tokens=lambda text: len(text) + 1)
    casc = res["configurations"]["cascade"]["1"]
    assert casc["latency_avg_ms"] == pytest.approx(18.5 * 1.1)           # median over repeats
    assert casc["spread"]["latency_avg_ms"] == [18.5, 37.0]
    assert res["cascade_vs_large_latency_ratio"]["1"] == pytest.approx(18.5 / 20.0)  # same in every rep
    assert casc["answered_by_stage"] == [0.5, 0.0, 0.5] and casc["mean_stages_run"] == 1.5
    assert casc["accuracy"] == 1.0
    # per decision outside stage calls, rep 0: 3 ms and 4/2 = 2 ms; x drift in reps 1 and 2: pooled median
    # (3 + 3.3) / 2. Time outside the cascade's execute in rep 0: 18.5 - 16.5 = 2 ms, so in-server 1 and
    # (4 - 2) / 2 = 1 ms per decision; pooled over reps [1, 1, 2, 2, 1.1, 1.1]: median 1.1
    assert res["controller_overhead_source"] == "in-server, derived"
    assert res["controller_overhead_p50_ms"] == pytest.approx(1.1)
    assert res["controller_overhead_client_p50_ms"] == pytest.approx(3.15)
    assert casc["server"]["predictor_calls"] == 1.5 and casc["degraded"] == 0.0
    cost = res["measured_stage_cost"]
    assert cost["2"]["relative_cost"] == pytest.approx(2.0)
    assert cost["2"]["relative_cost_per_token"] == pytest.approx(2.0 * 3 / 5)
    assert "fixed:2" not in res["configurations"]["fixed:2"]["1"].get("ratio_to_fixed:2_latency_avg_ms", "")


def test_markdown_has_every_section(tmp_path: Path) -> None:
    runs = [_run(c, 0, 10.0 + k, 50.0, [_rec(10.0, (k,), (8.0,))]) for k, c in enumerate(["fixed:0", "fixed:2"])]
    runs.append(_run("cascade", 0, 11.0, 55.0, [_rec(10.0, (0,), (8.0,))]))
    res = aggregate(runs, n_stages=3, cascade_model="cascade", stage_models=["s0", "s1", "s2"],
                    predictor="qp", count_tokens=len)
    res["meta"] = {"machine": {"cpu_model": "test cpu", "cpus": 2}, "versions": {}, "date": "today",
                   "command": "make bench", "prompts": 48, "max_tokens": 16, "repeats": 1,
                   "nominal_costs": [1.0, 4.5, 10.0], "config_labels": {"cascade": "cascade (optimal)"}}
    write_markdown(res, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    for heading in ("## Throughput and latency", "## Stage mix observed", "## Cost model"):
        assert heading in text
    assert "| cascade (optimal) | 1 | 55.0 |" in text


def test_inputs_mix_every_family_and_level_and_carry_the_policy() -> None:
    prompts = held_out_prompts(per_cell=2, seed=0)
    assert len(prompts) == 24 and prompts == held_out_prompts(per_cell=2, seed=0)
    assert {p[:2] for p in prompts} >= {"R:", "S:"} and any("+" in p for p in prompts)
    doc = input_data(prompts[:2], "fixed:1", 10.0, 16)
    assert doc["data"][0] == {"text_input": [prompts[0]], "max_tokens": [16], "lambda": [10.0],
                              "policy": ["fixed:1"]}
    json.dumps(doc)  # perf_analyzer reads it as JSON


def test_configurations_are_the_cascade_and_every_fixed_stage() -> None:
    spec = load_spec(check_paths=False)
    assert configurations(spec) == {"cascade": spec.default_policy, "fixed:0": "fixed:0", "fixed:1": "fixed:1",
                                    "fixed:2": "fixed:2"}


def test_profile_attributes_busy_samples_per_request_and_drops_idle_threads() -> None:
    from optistop.perf.profile import inclusive_ms

    collapsed = "\n".join([
        "Thread.run (/x/lib/python3.11/threading.py:975);handle (/x/main/optistop/a.py:10);"
        "stage_features (/x/main/optistop/features.py:247) 30",
        "Thread.run (/x/lib/python3.11/threading.py:975);handle (/x/main/optistop/a.py:12) 10",
        "Thread.run (/x/lib/python3.11/threading.py:975);EpollSelector.select (/x/lib/python3.11/selectors.py:468) 500",
    ])
    busy, rows = inclusive_ms(collapsed, rate=100, requests=20, top=5)
    assert busy == pytest.approx(1e3 * 40 / 100 / 20)                   # 20 ms per request
    assert rows[0] == ("handle (optistop/a.py)", pytest.approx(20.0))    # both line numbers, one row
    assert rows[1] == ("stage_features (optistop/features.py)", pytest.approx(15.0))


# --- throughput against the ideal of the stage mix (optistop.perf.stage_direct) ------------------------
def test_ideal_throughput_on_hand_worked_numbers() -> None:
    from optistop.perf.stage_direct import ideal_throughput

    # every request runs stage 0, half stage 1, a tenth stage 2: 1/100 + 0.5/50 + 0.1/20 = 0.025 s per request
    assert ideal_throughput([1.0, 0.5, 0.1], [100.0, 50.0, 20.0]) == pytest.approx(40.0)
    assert ideal_throughput([1.0, 0.0, 0.0], [100.0, 0.0, 20.0]) == pytest.approx(100.0)  # stage 1 never ran
    with pytest.raises(ValueError, match="shares"):
        ideal_throughput([1.0, 0.5], [100.0, 50.0, 20.0])
    with pytest.raises(ValueError, match="no throughput"):
        ideal_throughput([1.0, 0.5, 0.1], [100.0, 0.0, 20.0])


def _casc8(rep: int, throughput: float, stages_run: list[tuple[int, ...]]) -> Run:
    recs = [_rec(10.0, s, tuple(1.0 for _ in s)) for s in stages_run]
    return Run("cascade", 8, rep, {"throughput_infer_per_s": throughput, "latency_avg_ms": 100.0}, recs)


def test_throughput_vs_ideal_takes_the_ratio_within_each_repeat() -> None:
    from optistop.perf.stage_direct import throughput_vs_ideal

    mix = [(0,)] * 5 + [(0, 1)] * 4 + [(0, 1, 2)]       # ran_share 1 / 0.5 / 0.1: ideal 40 at [100, 50, 20]
    runs = []
    for rep, drift in enumerate((1.0, 0.5, 1.0)):        # rep 1 on a machine twice as slow
        runs.append(_casc8(rep, 32.0 * drift, mix))
        runs += [Run(f"stage:{k}", 8, rep, {"throughput_infer_per_s": t * drift, "latency_avg_ms": 80.0}, [])
                 for k, t in enumerate((100.0, 50.0, 20.0))]
    runs.append(Run("cascade", 1, 0, {"throughput_infer_per_s": 1.0}, [_rec(1.0, (2,), (1.0,))]))  # other c
    res = throughput_vs_ideal(runs, 3, 8)
    assert res["ran_share"] == [1.0, 0.5, 0.1]
    assert res["stage_direct_infer_per_s"] == [100.0, 50.0, 20.0]          # medians over repeats
    assert res["ideal_infer_per_s"] == pytest.approx(40.0)
    assert res["ratio_per_repeat"] == [0.8, 0.8, 0.8] and res["ratio"] == pytest.approx(0.8)
    assert res["cascade_infer_per_s"] == 32.0 and res["repeats"] == 3 and res["concurrency"] == 8
    # a repeat without its stage-direct runs is left out; none at all: no figure
    assert throughput_vs_ideal([r for r in runs if not (r.config == "stage:2" and r.rep == 1)], 3, 8)["repeats"] == 2
    assert throughput_vs_ideal([r for r in runs if r.config == "cascade"], 3, 8) == {}


def test_stage_input_data_follows_the_stage_contract() -> None:
    import numpy as np

    from optistop.perf.stage_direct import stage_input_data
    from optistop.tensors import STAGE

    doc = stage_input_data([[1, 5, 6, 40], [1, 7]], max_tokens=16, end_id=2, pad_id=0, stop_ids=[3, 4])
    json.dumps(doc)
    assert len(doc["data"]) == 2
    declared = {t.name: t for t in STAGE.inputs}
    for ids, entry in zip(([1, 5, 6, 40], [1, 7]), doc["data"]):
        assert set(entry) <= set(declared)
        assert {t.name for t in STAGE.inputs if not t.optional} <= set(entry)
        for name, tensor in entry.items():
            spec = declared[name]
            assert len(tensor["shape"]) == len(spec.dims)
            assert all(d == -1 or d == s for d, s in zip(spec.dims, tensor["shape"])), name
            assert len(tensor["content"]) == int(np.prod(tensor["shape"]))
            kind = {"INT32": int, "BOOL": bool, "FP32": float}[spec.dtype]
            assert all(type(v) is kind for v in tensor["content"]), name
        assert entry["input_ids"] == {"content": ids, "shape": [len(ids)]}
        assert entry["input_lengths"]["content"] == [len(ids)]
        assert entry["request_output_len"]["content"] == [16]
        assert (entry["end_id"]["content"], entry["pad_id"]["content"]) == ([2], [0])
        assert entry["return_log_probs"]["content"] == [True]
        assert entry["stop_words_list"] == {"content": [3, 4, 1, 2], "shape": [2, 2]}


def test_stage_inputs_tokenise_as_the_cascade_does() -> None:
    from optistop.perf.stage_direct import stage_inputs
    from optistop.serving.tokenizers import PromptEncoder

    spec = load_spec(check_paths=False)
    enc = PromptEncoder.for_spec(spec)
    entry = stage_inputs(spec.source, ["12+35="], 16)["data"][0]
    assert entry["input_ids"]["content"] == list(enc.encode(text="12+35=").ids)
    assert (entry["end_id"]["content"], entry["pad_id"]["content"]) == ([enc.end_id], [enc.pad_id])


# --- controller modes (optistop.perf.controller) ---------------------------------------------------------
@pytest.mark.parametrize("default", ['"false"', '"true"', None])
def test_mode_repository_sets_each_mode_whatever_the_default(tmp_path: Path, default: str | None) -> None:
    from optistop.perf.controller import mode_repository
    from optistop.render import pbtxt

    src = tmp_path / "src"
    (src / "models").mkdir(parents=True)
    (src / "cascade.toml").write_text("# spec\n")
    (src / "model_repository" / "cascade" / "1").mkdir(parents=True)
    (src / "model_repository" / "cascade" / "1" / "model.py").write_text("# model\n")
    param = f'parameters {{ key: "predictor_in_process" value: {{ string_value: {default} }} }}\n' if default else ""
    (src / "model_repository" / "cascade" / "config.pbtxt").write_text(
        'name: "cascade"\nbackend: "python"\n'
        'parameters { key: "cascade_spec" value: { string_value: "../../cascade.toml" } }\n' + param)
    (tmp_path / "copy").mkdir()
    repo = mode_repository(tmp_path / "copy", src / "model_repository")
    assert (repo.parent / "cascade.toml").exists() and (repo.parent / "models").is_dir()
    original = (src / "model_repository" / "cascade" / "config.pbtxt").read_text()
    assert (repo / "cascade" / "config.pbtxt").read_text() == original      # the served default untouched
    for model, value, engine in (("cascade_bls", "false", None), ("cascade_local_ort", "true", "onnxruntime"),
                                 ("cascade_local", "true", "numpy")):
        cfg = pbtxt.load(repo / model / "config.pbtxt")
        assert cfg.name == model and cfg.backend == "python" and (repo / model / "1" / "model.py").exists()
        want = {"cascade_spec": "../../cascade.toml", "predictor_in_process": value} | \
            ({"predictor_engine": engine} if engine else {})
        assert pbtxt.parameters(cfg) == want


@pytest.mark.parametrize("params, remote, mode", [
    ({"predictor_in_process": {"string_value": "true"}}, False, "in_process"),
    ({"predictor_in_process": {"string_value": "false"}}, False, "bls"),
    ({"predictor_in_process": {"string_value": "auto"}}, False, "in_process"),
    ({"predictor_in_process": {"string_value": "auto"}}, True, "bls"),
    ({}, False, "in_process"),
    ({"predictor_in_process": {"string_value": "auto"}, "predictor_engine": {"string_value": "onnxruntime"}},
     False, "in_process_onnxruntime"),
    ({"predictor_engine": {"string_value": "numpy"}}, False, "in_process"),
    ({"predictor_in_process": {"string_value": "false"}, "predictor_engine": {"string_value": "onnxruntime"}},
     False, "bls")])
def test_served_mode_reads_the_model_config(params: dict, remote: bool, mode: str) -> None:
    from optistop.perf.controller import served_mode

    class Client:
        def get_model_config(self, model: str, as_json: bool) -> dict:
            return {"config": {"name": model, "parameters": params}}

    assert served_mode(Client(), "cascade", remote_predictor=remote) == mode


# --- results.json and results.md as make bench writes them (--report-only on raw files written by hand) ----
def _pa_csv(concurrency: int, throughput: float, latency_ms: float) -> str:
    us = int(latency_ms * 1000)
    return ("Concurrency,Inferences/Second,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency\n"
            f"{concurrency},{throughput},{us},{us},{us},{us},{us}\n")


def test_report_writes_the_modes_the_ideal_and_the_targets(tmp_path: Path) -> None:
    from optistop.perf.bench import main

    raw, out, index = tmp_path / "raw", tmp_path / "out", []
    raw.mkdir()
    mix = [(0,)] * 5 + [(0, 1)] * 4 + [(0, 1, 2)]
    for c in (1, 8):
        for name, tput in (("cascade", 36.0), ("fixed:0", 90.0), ("fixed:1", 60.0), ("fixed:2", 30.0),
                           *((f"stage:{k}", t) for k, t in enumerate((100.0, 50.0, 20.0)))):
            if name.startswith("stage:") and c != 8:
                continue
            stem = f"{name.replace(':', '')}_c{c}_r0"
            (raw / f"{stem}.csv").write_text(_pa_csv(c, tput, 20.0))
            runs = mix if name == "cascade" else [(int(name[-1]),)]
            reqs = [_req(i * 10**8, 20_000, s[-1], list(s), [5.0] * len(s), controller_ms=[0.3 * len(s)])
                    for i, s in enumerate(runs)]
            (raw / f"{stem}.json").write_text(json.dumps(_export(c, reqs)))
            index.append({"config": name, "concurrency": c, "rep": 0, "stem": stem, "stats": {}, "metrics": {}})
    (raw / "runs.json").write_text(json.dumps(index))
    (raw / "controller_modes.json").write_text(json.dumps({
        "per_decision_ms": {"bls": [3.0, 4.0, 5.0], "in_process_onnxruntime": [0.8, 0.9, 1.0],
                            "in_process": [0.5, 0.6, 0.7], "offline": [0.2, 0.2, 0.2]},
        "requests_per_mode": 3, "skipped": None}))
    (raw / "meta.json").write_text(json.dumps({
        "date": "today", "command": "python client/bench.py", "machine": {"cpu_model": "test cpu", "cpus": 2},
        "versions": {}, "prompts": 48, "max_tokens": 16, "repeats": 1, "concurrency": [1, 8],
        "nominal_costs": [1.0, 4.5, 10.0], "stage_models": ["stage_small", "stage_medium", "stage_large"],
        "config_labels": {}, "served_predictor_mode": "in_process"}))
    assert main(["--report-only", "--raw", str(raw), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["configurations"]) == {"cascade", "fixed:0", "fixed:1", "fixed:2"}  # stage runs kept apart
    ideal = res["throughput_vs_ideal_c8"]
    assert ideal["ideal_infer_per_s"] == pytest.approx(40.0) and ideal["ratio"] == pytest.approx(0.9)
    assert ideal["ran_share"] == [1.0, 0.5, 0.1] and ideal["stage_direct_infer_per_s"] == [100.0, 50.0, 20.0]
    assert "definition" in ideal and ideal["cascade_infer_per_s"] == 36.0
    modes = res["controller_overhead_modes"]
    assert modes["bls"] == {"p50_ms": 4.0, "p99_ms": pytest.approx(4.98), "mean_ms": 4.0}
    assert set(modes["in_process"]) == set(modes["offline"]) == {"p50_ms", "p99_ms", "mean_ms"}
    assert modes["served_mode"] == "in_process" and modes["requests_per_mode"] == 3
    assert modes["command"] == "python client/bench.py"
    # the headline: the served cascade's own controller_ms at concurrency 1, per stage run (0.3 ms each)
    assert res["controller_overhead_source"] == "controller_ms output"
    assert res["controller_overhead_p99_ms"] == pytest.approx(0.3)
    assert res["controller_overhead_served_mode"] == "in_process"
    assert res["targets"] == {"controller_overhead_p99_le_1ms": True,
                              "cascade_mean_latency_below_large": {"1": False, "8": False},
                              "throughput_c8_ge_0.8_ideal": True}
    md = (out / "results.md").read_text()
    assert "- Cascade throughput at concurrency 8 >= 0.8 x ideal: met (ratio 0.900: 36.0 vs 40.0 infer/s)." in md
    assert "share the same 2 CPUs" in md
    assert "| in_process: in the cascade's process, the graph compiled for numpy (cascade_local) | 0.600 | 0.698 " \
           "| 0.600 |" in md
    assert "| in_process_onnxruntime: in the cascade's process, onnxruntime (cascade_local_ort) | 0.900 |" in md
