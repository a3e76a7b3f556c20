"""`optistop serve` as a process: SIGTERM drains under load, kill -9 leaves no orphan, health tells the
truth. Each test starts the real command on free loopback ports and stops it by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from optistop import prometheus_text
from optistop.reliability.chaos import Load, _children, _get
from optistop.server.embedded import EmbeddedServer, ServerConfig, _alive, check_port_free, free_port
from optistop.server.supervisor import stub_processes
from tests.conftest import CORE_MODELS


def _describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return f"{p.status()} ppid {p.ppid()} {' '.join(p.cmdline())[:120] or p.name()}"
    except psutil.NoSuchProcess:
        return "gone"


def start_serve(log: Path, drain_s: int = 20) -> tuple[subprocess.Popen, dict[str, int]]:
    ports = {k: free_port() for k in ("http", "grpc", "metrics", "supervisor")}
    cmd = [sys.executable, "-m", "optistop.cli", "serve", *(f"--{k}-port={v}" for k, v in ports.items()),
           f"--drain-timeout={drain_s}", f"--load-models={','.join(CORE_MODELS)}"]
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 240
    while _get(f"http://127.0.0.1:{ports['supervisor']}/healthz")[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"optistop serve not healthy (exit {proc.poll()}); log {log}")
        time.sleep(0.5)
    return proc, ports


def server_of(serve: subprocess.Popen) -> int:
    (pid,) = [p for p, _, argv in _children(serve.pid) if argv.endswith("tritonserver")]
    return pid


def test_health_cli_and_drain_on_sigterm(tmp_path, tiny_dir) -> None:
    log = tmp_path / "serve.log"
    serve, ports = start_serve(log)
    try:
        url = f"127.0.0.1:{ports['grpc']}"
        # truthful health: all ok; then the large stage's stub is killed and the check says so
        health = [sys.executable, "-m", "optistop.cli", "health", "--url", url]
        ok = subprocess.run(health, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and ok.stdout.count("\n") == 5 and "FAIL" not in ok.stdout, ok.stdout
        tritonserver = server_of(serve)
        (large,) = [s.pid for s in stub_processes(tritonserver).values() if s.model == "stage_large"]
        os.kill(large, signal.SIGKILL)
        bad = subprocess.run([*health, "--model", "stage_large"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "FAIL" in bad.stdout, bad.stdout  # before the supervisor reloads it
        deadline = time.monotonic() + 30
        while _get(f"http://127.0.0.1:{ports['supervisor']}/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        recoveries = prometheus_text.samples(_get(f"http://127.0.0.1:{ports['supervisor']}/metrics")[1])
        assert prometheus_text.value(recoveries, "optistop_supervisor_recoveries_total", model="stage_large",
                                     action="reload") == 1

        # SIGTERM under load: every request ends with an answer or a clean error; serve exits 0
        with Load(url, concurrency=3, timeout_s=20.0) as load:
            time.sleep(1.5)
            t_term = time.monotonic()
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(60) == 0
            time.sleep(0.5)
        done = load.done
        assert done and all(r.ok or r.error for r in done)
        assert all(r.t1 - r.t0 < 20.0 for r in done), "a request hung through the drain"
        inflight = [r for r in done if r.t0 < t_term < r.t1]
        # by the client's clock: one sent just before SIGTERM can reach Triton after the unload began and is
        # refused cleanly as never accepted (NOT_FOUND, no available versions; seen once in a loaded suite).
        # Any other error is a request dropped mid-flight
        late = lambda r: not r.ok and "NOT_FOUND" in r.error and "has no available versions" in r.error  # noqa: E731
        assert all(r.ok or late(r) for r in inflight), [r.error for r in inflight if not r.ok]  # drained, not dropped
        assert any(r.ok for r in inflight), "no request in flight at SIGTERM was answered: the drain was not exercised"
        refused = [r for r in done if r.t0 > t_term + 0.5]
        assert refused, "no request was sent after SIGTERM: the refusal was not exercised"
        assert all(not r.ok for r in refused), "after SIGTERM new requests are refused"
        assert not psutil.pid_exists(tritonserver)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_no_orphan_after_kill_9(tmp_path, tiny_dir) -> None:
    """kill -9 of the supervisor: tritonserver dies with it (PDEATHSIG), its stubs follow, ports are free.
    A test of its own (its own `optistop serve`), so pytest-xdist runs it beside the drain test."""
    serve, ports = start_serve(tmp_path / "serve.log")
    tritonserver = server_of(serve)
    stubs = list(stub_processes(tritonserver))
    serve.kill()
    serve.wait()
    # a stub notices its parent's death on its own health check, which on two loaded cores took over 15 s;
    # a zombie (state Z) has exited and only waits to be reaped by whoever adopted it
    deadline = time.monotonic() + 30
    alive = lambda: [p for p in (tritonserver, *stubs) if _alive(p)]  # noqa: E731
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: _describe(p) for p in alive()}
    for p in left:  # clean up before failing, by pid
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes outlived kill -9 of optistop serve (tritonserver {tritonserver}): {left}"
    for k in ("http", "grpc", "metrics"):
        check_port_free("127.0.0.1", ports[k], k)
    # a SIGKILLed server cannot remove its /dev/shm regions: the next start on that port does (pidfile)
    prefix = f"optistop_{serve.pid}_{ports['http']}_"
    EmbeddedServer(ServerConfig(http_port=ports["http"]))._clear_orphan()
    assert not list(Path("/dev/shm").glob(prefix + "*"))
