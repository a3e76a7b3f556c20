"""The supervisor's rules without a server: dead / wedged / slow from Triton's counters (liveness.py), the
``[supervisor]`` spec table and flags, the guarded probe thread, /healthz going stale, one client per model.
The same rules against a real tritonserver: tests/e2e/test_real_speed_e2e.py."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

import pytest

from optistop import prometheus_text
from optistop.server.embedded import EmbeddedServer, ServerConfig, free_port
from optistop.server.health import ModelHealth
from optistop.server.liveness import Progress, Watch, pending_from_metrics, progress_from_stats
from optistop.server.supervisor import Supervisor, SupervisorConfig
from optistop.server.supervisor_http import healthz, metrics_text
from optistop.spec import DEFAULT_SPEC, SpecError, SupervisorSpec, load_spec, parse_supervisor

T = SupervisorSpec(probe_s=1.0, slow_s=3.0, wedge_s=10.0, wedge_factor=4.0)
OK = ModelHealth("m", True, 5.0, "ok")


def test_busy_model_that_finishes_batches_is_slow_never_wedged() -> None:
    w = Watch("m", "stage")
    w.observe(Progress(0, 0, 0), pending=0, now=0.0)
    w.probe_sent(0.0)
    kinds = []
    for t in range(1, 41):  # a 2 s batch finishes every other second, the probe never gets through
        done = t // 2
        w.observe(Progress(done * 8, done, done * 2_000_000_000), pending=6, now=float(t))
        if (v := w.judge(float(t), T)) is not None:
            kinds.append((t, v.kind))
    assert kinds == [(3, "slow")]             # told once, at slow_s, never killed over 40 s (4 x wedge_s)
    assert w.longest_batch_s == pytest.approx(2.0)


def test_no_progress_with_work_in_flight_is_wedged_after_the_window() -> None:
    w = Watch("m", "stage")
    w.observe(Progress(10, 5, 5_000_000_000), pending=0, now=0.0)
    w.probe_sent(1.0)
    verdicts = []
    for t in range(2, 15):
        w.observe(Progress(10, 5, 5_000_000_000), pending=3, now=float(t))
        verdicts.append(w.judge(float(t), T))
    wedged = [(i + 2, v) for i, v in enumerate(verdicts) if v is not None]
    assert [(t, v.kind) for t, v in wedged][:1] == [(11, "wedged")]  # probe sent at 1, window 10 s
    assert wedged[0][1].text.startswith("no progress for 10 s with 3 requests in flight")


def test_idle_model_is_never_wedged_and_the_window_scales_with_measured_batches() -> None:
    w = Watch("m", "stage", floor_s=30.0)
    for t in range(0, 200, 5):  # nothing in flight: no probe outstanding, nothing queued
        w.observe(Progress(0, 0, 0), pending=0, now=float(t))
        assert w.judge(float(t), T) is None
    assert w.window(T) == 30.0                       # the spec's floor beats wedge_s
    w.observe(Progress(8, 1, 20_000_000_000), pending=0, now=201.0)  # one 20 s batch
    assert w.window(T) == pytest.approx(80.0)        # 4 x the longest batch seen


def test_an_answered_probe_is_progress_and_ends_the_stall() -> None:
    w = Watch("m", "stage")
    w.observe(Progress(0, 0, 0), pending=0, now=0.0)
    w.probe_sent(0.0)
    w.observe(Progress(0, 0, 0), pending=0, now=9.0)
    w.probe_answered(OK, 9.5)
    assert w.stalled_since is None and w.judge(30.0, T) is None


def test_counters_from_triton_statistics_and_metrics() -> None:
    import tritonclient.grpc.service_pb2 as pb

    r = pb.ModelStatisticsResponse()
    rows = (("a", "1", 5, 1, 3, 3_000_000_000), ("a", "2", 2, 0, 1, 10), ("b", "1", 0, 0, 0, 0))
    for name, version, ok, fail, execs, ns in rows:
        m = r.model_stats.add(name=name, version=version, execution_count=execs)
        m.inference_stats.success.count, m.inference_stats.fail.count = ok, fail
        m.inference_stats.compute_infer.ns = ns
    assert progress_from_stats(r) == {"a": Progress(8, 4, 3_000_000_010), "b": Progress(0, 0, 0)}
    text = ('# HELP nv_inference_pending_request_count ...\n'
            'nv_inference_pending_request_count{model="stage_small",version="1"} 3\n'
            'nv_inference_pending_request_count{model="cascade",version="1"} 0\n'
            'nv_inference_count{model="stage_small",version="1"} 99\n')
    assert pending_from_metrics(text) == {"stage_small": 3, "cascade": 0}


# ---- the [supervisor] table and the flags -------------------------------------------------------------
def test_supervisor_table_defaults_and_values(tmp_path: Path) -> None:
    assert load_spec().supervisor == SupervisorSpec()
    assert parse_supervisor({"wedge_s": 90, "probe_s": 1.5}) == SupervisorSpec(wedge_s=90.0, probe_s=1.5)


@pytest.mark.parametrize(("table", "needle"), [
    ({"wedge_timeout": 5}, r"supervisor.wedge_timeout: unknown key; valid keys are scan_s, probe_s"),
    ({"probe_s": 0}, r"supervisor.probe_s: must be a finite number > 0, got 0"),
    ({"slow_s": "5"}, r"supervisor.slow_s: expected"),
    ({"wedge_factor": 0.5}, r"supervisor.wedge_factor: must be >= 1"),
    ({"probe_s": 10, "wedge_s": 15}, r"supervisor.wedge_s: must be at least 2 x probe_s = 20"),
])
def test_supervisor_table_errors_name_the_key(table: dict, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        parse_supervisor(table)


def test_spec_file_supervisor_table_and_flags_override_it(tmp_path: Path) -> None:
    from optistop.cli import _supervision

    (tmp_path / "models").symlink_to(DEFAULT_SPEC.parent / "models")
    spec = tmp_path / "spec.toml"
    spec.write_text(DEFAULT_SPEC.read_text() + "\n[supervisor]\nwedge_s = 90\nslow_s = 8\n")
    assert load_spec(spec).supervisor == SupervisorSpec(wedge_s=90.0, slow_s=8.0)
    args = argparse.Namespace(spec=spec, scan_s=None, probe_s=1.0, slow_s=None, wedge_s=None,
                              wedge_factor=None, reload_timeout_s=None)
    timing, floors = _supervision(args, tmp_path)
    assert timing == SupervisorSpec(wedge_s=90.0, slow_s=8.0, probe_s=1.0)
    assert floors == {"stage_small": 30.0, "stage_medium": 30.0, "stage_large": 30.0, "cascade": 90.0}
    spec.write_text(DEFAULT_SPEC.read_text() + "\n[supervisor]\ntimout_s = 1\n")
    with pytest.raises(SpecError, match=r"spec.toml: supervisor.timout_s: unknown key"):
        load_spec(spec)


def test_serve_refuses_supervisor_flags_without_supervision(capsys) -> None:
    from optistop.cli import serve

    with pytest.raises(SystemExit) as info:
        serve(["--no-supervise", "--wedge-after", "30"])
    assert info.value.code == 2
    assert "--wedge-after sets up supervision; it does nothing with --no-supervise" in capsys.readouterr().err


# ---- the probe thread and /healthz ----------------------------------------------------------------------
def _supervisor(timing: SupervisorSpec = T) -> Supervisor:
    server = EmbeddedServer(ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()))
    return Supervisor(server, {"stage_small": "stage", "cascade": "cascade"}, SupervisorConfig(timing))


def test_a_probe_round_that_raises_is_logged_counted_and_the_next_one_runs(caplog) -> None:
    sup = _supervisor(SupervisorSpec(probe_s=0.05, wedge_s=1.0))
    calls: list[float] = []
    stop = threading.Event()

    def flaky_round() -> list:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("statistics parser broke")
        if len(calls) >= 3:
            stop.set()
        return []

    sup._probe_round = flaky_round  # type: ignore[method-assign]
    thread = threading.Thread(target=sup._probe_loop, args=(stop, __import__("queue").Queue()), daemon=True)
    with caplog.at_level(logging.ERROR, logger="optistop.supervisor"):
        thread.start()
        thread.join(5)
    assert not thread.is_alive() and len(calls) >= 3      # the thread outlived the exception
    assert sup.probe_errors == 1
    (rec,) = [r for r in caplog.records if "probe round failed" in r.getMessage()]
    assert rec.exc_info is not None and "statistics parser broke" in str(rec.exc_info[1])
    assert prometheus_text.samples(metrics_text(sup))[("optistop_supervisor_probe_errors_total", frozenset())] == 1


def test_healthz_goes_stale_after_three_missed_probe_periods() -> None:
    sup = _supervisor()
    for w in sup.watches:
        w.probe_answered(ModelHealth(w.model, True, 3.0, "ok"), time.monotonic())
    sup.last_round = time.monotonic() - 2.5 * T.probe_s
    assert healthz(sup)[0] == 200
    sup.last_round = time.monotonic() - 3.5 * T.probe_s  # the probe thread stopped finishing rounds
    code, body = healthz(sup)
    assert code == 503 and "stale: no probe round finished for 4 s" in body
    sup.last_round = None
    code, body = healthz(sup)
    assert code == 503 and body.splitlines()[-1] == "not checked yet"


def test_health_check_builds_one_client_per_model_and_reuses_it(monkeypatch) -> None:
    import tritonclient.grpc as grpc

    from optistop.server import health

    built: list[str] = []

    class Counting(grpc.InferenceServerClient):
        def __init__(self, url: str, *a, **kw) -> None:
            built.append(url)
            super().__init__(url, *a, **kw)

    monkeypatch.setattr(grpc, "InferenceServerClient", Counting)
    url = f"127.0.0.1:{free_port()}"  # nothing listens: every probe fails fast, which is fine here
    clients: dict = {}
    models = {"stage_small": "stage", "cascade": "cascade"}
    for _ in range(3):
        results = health.check(url, models, timeout_s=2.0, clients=clients)
        assert [r.ok for r in results] == [False, False]
    assert built == [url, url]


def test_the_served_spec_is_found_from_the_repository(tmp_path: Path) -> None:
    from optistop.server.health import spec_of_repository

    assert spec_of_repository(DEFAULT_SPEC.parent / "model_repository") == DEFAULT_SPEC
    assert spec_of_repository(tmp_path) is None  # a stage-only repository: built-in timing, no floors


def test_livez_fails_only_when_the_supervisor_cannot_heal() -> None:
    sup = _supervisor()
    now = time.monotonic()
    sup.last_round = now - 1.0
    assert sup.alive(now)                                   # rounds finishing: alive, whatever models say
    sup.last_round = now - 3.5 * T.probe_s
    assert not sup.alive(now)                               # the probe thread stopped
    sup.recovering, sup.recovering_since = True, now - 60.0
    assert sup.alive(now)                                   # a reload under way blocks rounds legitimately
    sup.recovering_since = now - T.reload_timeout_s - 31
    assert not sup.alive(now)                               # ... but not past its timeout
