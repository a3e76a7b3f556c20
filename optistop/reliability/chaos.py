"""Chaos: kill -9 each backend stub of a supervised server under load, and measure how it heals.

$ python -m optistop.reliability.chaos --rounds 3 --concurrency 6     # `make chaos`: about 4 minutes on 2 cores
$ python -m optistop.reliability.chaos --rounds 1 --concurrency 3     # the version in `make test`

Starts `optistop serve` (the real command, supervised) on free loopback ports, drives the cascade with
task-suite prompts at fixed concurrency (default policy, a client timeout on every request), and kills
the stub process of each model in turn: stage_small, stage_medium, stage_large, quality_predictor,
cascade. After each kill it waits for the supervisor's /healthz to be 200 again with one more recovery
counted. Checks: every request ends with an answer or a clean error within its timeout (none hangs);
no request that started 10 s or more after a kill fails; no zombie process; after `optistop serve`
stops (SIGTERM), no process of it is left and no shared-memory region of it is in /dev/shm.
Prints, per kill, failed and degraded requests and the recovery time; then p50/max of recovery.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from optistop import prometheus_text
from optistop.server.embedded import free_port
from optistop.server.supervisor import stub_processes

TARGETS = ("stage_small", "stage_medium", "stage_large", "quality_predictor", "cascade")
HEAL_WITHIN_S = 10.0


@dataclass
class Req:
    t0: float
    t1: float
    ok: bool
    degraded: bool = False
    error: str = ""


@dataclass
class Kill:
    model: str
    t: float
    recovered_s: float = float("nan")  # kill -> /healthz 200 with the recovery counted
    failed: int = 0
    degraded: int = 0
    total: int = 0
    last_failure_s: float = 0.0        # kill -> end of the last failed request of this window


@dataclass
class ChaosReport:
    kills: list[Kill] = field(default_factory=list)
    requests: int = 0
    hung: int = 0
    zombies: list[str] = field(default_factory=list)
    leaked_shm: list[str] = field(default_factory=list)
    leftover: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _children(pid: int) -> list[tuple[int, str, str]]:
    """(pid, psutil status, argv[0]) of the processes whose parent is ``pid``; [] when ``pid`` is gone.
    A zombie has no command line left: its name (the kernel's comm) stands in for argv[0]."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            with k.oneshot():
                status = k.status()
                argv = k.cmdline() if status != psutil.STATUS_ZOMBIE else []
                out.append((k.pid, status, argv[0] if argv else k.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone while we looked
            continue
    return out


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _recoveries(metrics: str) -> float:
    """Recoveries counted by the supervisor (all models and actions) in its /metrics text; 0 when it did not
    answer (empty text)."""
    name = "optistop_supervisor_recoveries_total"
    return prometheus_text.total(prometheus_text.samples(metrics, name), name)


class Load:
    """``concurrency`` threads asking the cascade until stopped; every request bounded by ``timeout_s``."""

    def __init__(self, url: str, concurrency: int, timeout_s: float) -> None:
        from optistop.tiny.tasks import generate_split

        self.url, self.concurrency, self.timeout_s = url, concurrency, timeout_s
        self.prompts = [it.prompt for it in generate_split("test", 2, seed=5)]
        self.done: list[Req] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._worker, args=(w,), daemon=True) for w in range(concurrency)]

    def _worker(self, w: int) -> None:
        import tritonclient.grpc as grpc
        from tritonclient.utils import InferenceServerException

        from optistop import tensors as T
        from optistop.client.cascade import build_inputs

        client = grpc.InferenceServerClient(self.url)
        i = w
        while not self.stop.is_set():
            i += self.concurrency
            t0 = time.monotonic()
            try:
                res = client.infer("cascade", build_inputs("grpc", self.prompts[i % len(self.prompts)]),
                                   outputs=[grpc.InferRequestedOutput(T.DEGRADED)], client_timeout=self.timeout_s)
                r = Req(t0, time.monotonic(), True, bool(res.as_numpy(T.DEGRADED).reshape(-1)[0]))
            except InferenceServerException as exc:
                r = Req(t0, time.monotonic(), False, error=f"{exc.status()}: {exc.message()}"[:200])
            with self.lock:
                self.done.append(r)
            if not r.ok:
                self.stop.wait(0.05)  # a client backs off a little after an error, rather than spin

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(self.timeout_s + 5)


def run_chaos(rounds: int = 1, concurrency: int = 3, timeout_s: float = 20.0, targets: tuple[str, ...] = TARGETS,
              recover_wait_s: float = 30.0, settle_s: float = 1.5, log_path: Path | None = None,
              load_models: tuple[str, ...] = ()) -> ChaosReport:
    """``load_models``: serve only these models (the test suite's short run: none of the streaming variants)."""
    report = ChaosReport()
    http, grpc, metrics, sup = (free_port() for _ in range(4))
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "optistop.cli", "serve", f"--http-port={http}", f"--grpc-port={grpc}",
           f"--metrics-port={metrics}", f"--supervisor-port={sup}", "--drain-timeout=20",
           *([f"--load-models={','.join(load_models)}"] if load_models else [])]
    serve = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{sup}"
    try:
        deadline = time.monotonic() + 240
        while _get(base + "/healthz")[0] != 200:
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"optistop serve did not become healthy (exit {serve.poll()}); see {log_path}")
            time.sleep(0.5)
        (server_pid,) = [p for p, _, argv in _children(serve.pid) if argv.endswith("tritonserver")]
        with Load(f"127.0.0.1:{grpc}", concurrency, timeout_s) as load:
            time.sleep(2.0)  # steady state before the first kill
            for _ in range(rounds):
                for model in targets:
                    stubs = [s.pid for s in stub_processes(server_pid).values() if s.model == model]
                    if not stubs:
                        report.problems.append(f"no stub process of '{model}' to kill")
                        continue
                    before = _recoveries(_get(base + "/metrics")[1])
                    kill = Kill(model, time.monotonic())
                    os.kill(stubs[0], signal.SIGKILL)
                    report.kills.append(kill)
                    while time.monotonic() - kill.t < recover_wait_s:
                        code, _ = _get(base + "/healthz")
                        if code == 200 and _recoveries(_get(base + "/metrics")[1]) > before:
                            kill.recovered_s = time.monotonic() - kill.t
                            break
                        time.sleep(0.2)
                    else:
                        report.problems.append(f"'{model}' not recovered {recover_wait_s:.0f}s after kill -9")
                    time.sleep(settle_s)  # some requests after the recovery, in this kill's window
                    report.zombies += [f"{p} ({argv})" for p, st, argv in _children(server_pid)
                                       if st == psutil.STATUS_ZOMBIE]
        _tally(report, load.done, timeout_s)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)  # the drain path: what Kubernetes does
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                report.problems.append("optistop serve did not exit within 60s of SIGTERM")
                serve.kill()
                serve.wait()
        log.close()
    report.leftover = [p for p, _, _ in _children(serve.pid)]
    if "server_pid" in locals() and psutil.pid_exists(server_pid):
        report.leftover.append(server_pid)
        os.killpg(server_pid, signal.SIGKILL)
    report.leaked_shm = sorted(p.name for p in Path("/dev/shm").glob(f"optistop_{serve.pid}_{http}_*"))
    for what, items in (("zombie process(es)", report.zombies), ("leaked shm region(s)", report.leaked_shm),
                        ("process(es) left after optistop serve stopped", report.leftover)):
        if items:
            report.problems.append(f"{len(items)} {what}: {items[:5]}")
    if serve.returncode != 0:
        report.problems.append(f"optistop serve exited with code {serve.returncode} after SIGTERM")
    return report


def _tally(report: ChaosReport, done: list[Req], timeout_s: float) -> None:
    report.requests = len(done)
    report.hung = sum(1 for r in done if r.t1 - r.t0 > timeout_s or "DEADLINE_EXCEEDED" in r.error)
    if report.hung:
        report.problems.append(f"{report.hung} request(s) got no answer within {timeout_s:g}s")
    for i, k in enumerate(report.kills):
        end = report.kills[i + 1].t if i + 1 < len(report.kills) else float("inf")
        window = [r for r in done if k.t <= r.t1 < end]
        k.total = len(window)
        k.failed = sum(not r.ok for r in window)
        k.degraded = sum(r.degraded for r in window)
        failures = [r for r in window if not r.ok]
        k.last_failure_s = max((r.t1 - k.t for r in failures), default=0.0)
        late = [r for r in failures if r.t0 - k.t >= HEAL_WITHIN_S]
        if late:
            report.problems.append(f"kill of '{k.model}': {len(late)} request(s) started {HEAL_WITHIN_S:g}s or "
                                   f"more after it failed, e.g. {late[0].error}")


def summary(report: ChaosReport) -> str:
    lines = [f"{'killed':<18} {'requests':>8} {'failed':>7} {'degraded':>8} {'recovered s':>11} {'last failure s':>14}"]
    for k in report.kills:
        lines.append(f"{k.model:<18} {k.total:>8} {k.failed:>7} {k.degraded:>8} {k.recovered_s:>11.1f} "
                     f"{k.last_failure_s:>14.1f}")
    rec = [k.recovered_s for k in report.kills if k.recovered_s == k.recovered_s]
    if rec:
        lines.append(f"recovery time: p50 {statistics.median(rec):.1f} s, max {max(rec):.1f} s over {len(rec)} kills; "
                     f"{report.requests} requests, {sum(k.failed for k in report.kills)} failed, "
                     f"{sum(k.degraded for k in report.kills)} degraded, {report.hung} hung")
    lines.append("OK" if report.ok else "FAILED: " + "; ".join(report.problems))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="times each model's stub is killed")
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=20.0, help="client timeout of every request (s)")
    ap.add_argument("--log", type=Path, default=Path("artifacts/chaos_serve.log"))
    args = ap.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    report = run_chaos(args.rounds, args.concurrency, args.timeout, log_path=args.log)
    print(summary(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
