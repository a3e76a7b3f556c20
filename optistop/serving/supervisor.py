"""Keep a tritonserver honest: notice a dead backend within seconds, recover it, drain on SIGTERM.

$ optistop serve                 # supervised by default; `--no-supervise` runs tritonserver bare

tritonserver 2.51 does not restart a Python-backend stub that died (kill -9, OOM, segfault), and its
readiness endpoints keep answering 200 (DESIGN.md, "Facts found"). Two detectors, cheap and truthful:

- every ``scan_s`` the backend stub processes of the server are listed from /proc; a model with fewer
  live stubs than it had when healthy is dead (noticed within ``scan_s`` of the kill);
- every ``probe_s`` the health check of optistop/serving/health.py sends a real inference to every
  model: an answer that says the backend is dead (stub not healthy, not loaded) is a dead model; a model
  that is too slow ``slow_strikes`` times in a row has its stubs killed, and is then a dead one (a
  wedged stub). A model that answers with an error is alive: that is the cascade's business.

Recovery unloads and loads that model through Triton's model-repository API (explicit model control; the API
answers only requests that carry this supervisor's random token, and the supervisor talks to the
server over loopback). If the reload fails, or tritonserver itself exited, the whole server restarts.
Each recovery is logged and counted on the supervisor's own metrics port (``/metrics``), whose
``/healthz`` answers 200 only while the last check passed, no recovery is under way and it is not
draining: a Kubernetes readiness probe. Requests meanwhile get a degraded answer from the living stages
or a fast error (optistop/serving/bls.py, optistop/cascade.py).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from optistop.serving.embedded import EmbeddedServer, ServerError
from optistop.serving.health import ModelHealth, check

log = logging.getLogger("optistop.supervisor")
STUB_BINARY = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    region: str  # its shared-memory region in /dev/shm (the stub's second argument)


def stub_processes(server_pid: int) -> dict[int, Stub]:
    """Live backend stubs of ``server_pid``, from /proc (argv: stub, <repo>/<model>/<ver>/model.py, region)."""
    out: dict[int, Stub] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != server_pid or fields[0] == "Z":
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone while we looked
        if len(argv) > 2 and argv[0].decode(errors="replace").endswith(STUB_BINARY):
            model = Path(argv[1].decode(errors="replace")).parts[-3]
            out[int(entry.name)] = Stub(int(entry.name), model, argv[2].decode(errors="replace"))
    return out


@dataclass
class SupervisorConfig:
    scan_s: float = 0.5
    probe_s: float = 2.0
    probe_timeout_s: float = 5.0
    slow_strikes: int = 3
    reload_timeout_s: float = 120.0
    metrics_port: int | None = None  # None: no HTTP endpoint


class Supervisor:
    """Runs in the thread that started the server (PR_SET_PDEATHSIG is per thread; see embedded.py)."""

    def __init__(self, server: EmbeddedServer, models: dict[str, str], cfg: SupervisorConfig | None = None) -> None:
        self.server, self.models, self.cfg = server, models, cfg or SupervisorConfig()
        host = server.cfg.host if server.cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.grpc_url = f"{host}:{server.cfg.grpc_port}"
        self.control_url = f"http://{host}:{server.cfg.http_port}"
        self.recoveries: Counter[tuple[str, str]] = Counter()   # (model, action) -> count
        self.recovery_seconds: Counter[str] = Counter()          # model -> seconds, detection to served
        self.checks: Counter[str] = Counter()                    # "ok" / "fail"
        self.last: list[ModelHealth] = []
        self.recovering = self.draining = False
        self._stubs: dict[int, Stub] = {}
        self._want: Counter[str] = Counter()                     # model -> stubs it has when healthy
        self._strikes: Counter[str] = Counter()
        self._gone: list[Stub] = []                               # stubs that vanished, for their regions
        self._recovered_at: Counter[str] = Counter()             # model -> monotonic time of last recovery
        self._clients: dict = {}
        self._http: ThreadingHTTPServer | None = None

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set; the caller then drains (``drain``). Probes run in their own
        thread, so a slow probe never delays the stub scan; every recovery happens here, in order."""
        self._serve_http()
        self._baseline()
        verdicts: queue.Queue[tuple[str, str, float]] = queue.Queue()
        prober = threading.Thread(target=self._probe_loop, args=(stop, verdicts), name="supervisor-probe",
                                  daemon=True)
        prober.start()
        while not stop.is_set():
            proc = self.server.proc
            if proc is not None and proc.poll() is not None:
                self._restart(f"tritonserver exited with code {proc.returncode}")
                continue
            dead = self._scan()
            while not verdicts.empty():
                model, why, t_probe = verdicts.get_nowait()
                if t_probe > self._recovered_at[model]:  # not about an instance replaced since
                    dead.setdefault(model, why)
            for model, reason in dead.items():
                self._recover(model, reason)
            stop.wait(self.cfg.scan_s)

    def _probe_loop(self, stop: threading.Event, verdicts: queue.Queue[tuple[str, str, float]]) -> None:
        while not stop.wait(self.cfg.probe_s):
            if self.recovering:
                continue  # its answers would describe the model being replaced
            t0 = time.monotonic()
            for model, why in self._probe():
                verdicts.put((model, why, t0))

    def _baseline(self) -> None:
        assert self.server.proc is not None
        self._stubs = stub_processes(self.server.proc.pid)
        self._want = Counter(s.model for s in self._stubs.values())

    def _scan(self) -> dict[str, str]:
        """Models that lost a stub since the last scan -> why."""
        assert self.server.proc is not None
        now = stub_processes(self.server.proc.pid)
        have = Counter(s.model for s in now.values())
        dead: dict[str, str] = {}
        for model, want in self._want.items():
            if have[model] < want:
                gone = [s.pid for p, s in self._stubs.items() if s.model == model and p not in now]
                self._gone += [s for p, s in self._stubs.items() if s.model == model and p not in now]
                dead[model] = f"backend stub process {', '.join(map(str, gone)) or '?'} of '{model}' is gone"
        self._stubs = now
        return dead

    def _probe(self) -> list[tuple[str, str]]:
        """One health check; the models to recover and why."""
        self.last = check(self.grpc_url, self.models, self.cfg.probe_timeout_s, self._clients)
        self.checks["ok" if all(r.ok for r in self.last) else "fail"] += 1
        out = []
        for r in self.last:
            self._strikes[r.model] = self._strikes[r.model] + 1 if r.slow else 0
            if r.dead:
                out.append((r.model, r.detail))
            elif self._strikes[r.model] >= self.cfg.slow_strikes:
                # A reload is a no-op while every instance reports ready (Triton skips unmodified, ready
                # models): a wedged stub must be killed first, which makes it a dead one.
                for stub in [s for s in self._stubs.values() if s.model == r.model]:
                    os.kill(stub.pid, signal.SIGKILL)
                out.append((r.model, f"{r.detail}, {self._strikes[r.model]} checks in a row"))
                self._strikes[r.model] = 0
        return out

    # ---- recovery --------------------------------------------------------------------------------
    def _recover(self, model: str, reason: str) -> None:
        t0 = time.monotonic()
        self.recovering = True
        log.warning("model '%s' is dead (%s); reloading it", model, reason)
        old = [s for s in [*self._gone, *self._stubs.values()] if s.model == model]
        self._gone = [s for s in self._gone if s.model != model]
        try:
            self._reload(model)
        except (OSError, urllib.error.URLError, ServerError) as exc:
            log.error("reload of '%s' failed (%s); restarting tritonserver", model, exc)
            self._restart(f"reload of '{model}' failed")
            return
        finally:
            self.recovering = False
        self._baseline()
        for stub in old:  # a dead stub's region: tritonserver 2.51 leaves it in /dev/shm
            if stub.pid not in self._stubs:
                Path("/dev/shm", stub.region).unlink(missing_ok=True)
        took = time.monotonic() - t0
        self._recovered_at[model] = time.monotonic()
        self.recoveries[(model, "reload")] += 1
        self.recovery_seconds[model] += took
        log.warning("model '%s' recovered by reload in %.1fs", model, took)

    def _reload(self, model: str) -> None:
        # Unload first: Triton's load of an unmodified model whose instances still report ready is a no-op
        # (measured: 4 ms, the dead stub stays dead); unload + load starts a new stub.
        self._control(model, "unload")
        self._control(model, "load")

    def _control(self, model: str, action: str, timeout: float | None = None) -> None:
        req = urllib.request.Request(f"{self.control_url}/v2/repository/models/{model}/{action}", data=b"{}",
                                     method="POST", headers=self.server.cfg.control_header)
        with urllib.request.urlopen(req, timeout=timeout or self.cfg.reload_timeout_s) as resp:
            if resp.status != 200:
                raise ServerError(f"{action} API answered {resp.status}")

    def _restart(self, reason: str) -> None:
        t0 = time.monotonic()
        self.recovering = True
        log.error("%s; restarting tritonserver", reason)
        try:
            self.server.stop(timeout=5)
            self.server.start()
            self.server.wait_ready()
        finally:
            self.recovering = False
        self._baseline()
        self._clients.clear()
        self.recoveries[("*", "restart")] += 1
        self.recovery_seconds["*"] += time.monotonic() - t0
        log.warning("tritonserver restarted in %.1fs", time.monotonic() - t0)

    def drain(self) -> int | None:
        """SIGTERM: /healthz turns 503 at once and the entry model (cascade) is unloaded, which refuses
        new requests while Triton lets its in-flight ones finish; the stage models stay loaded meanwhile.
        (SIGTERM to tritonserver alone is not enough: it refuses new BLS sub-requests too, so an
        in-flight cascade request that still needs a stage failed with "Server not ready"; measured.)
        Then tritonserver gets SIGTERM, within the same ``exit_timeout_s`` budget."""
        self.draining = True
        budget = self.server.cfg.exit_timeout_s
        log.warning("draining: in-flight requests have %ss to finish", budget)
        deadline = time.monotonic() + budget
        entry = [m for m, role in self.models.items() if role == "cascade"]
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            for model in entry:
                try:
                    self._control(model, "unload", timeout=budget)
                except (OSError, urllib.error.URLError, ServerError) as exc:
                    log.error("unload of '%s' for the drain failed: %s", model, exc)
            while time.monotonic() < deadline and any(
                    s.model in entry for s in stub_processes(proc.pid).values()):
                time.sleep(0.1)  # its stub exits once its in-flight requests are answered
        code = self.server.stop(timeout=max(deadline - time.monotonic(), 0) + 10)
        if self._http is not None:
            self._http.shutdown()
        return code

    # ---- the supervisor's own HTTP endpoint ---------------------------------------------------------
    def healthy(self) -> bool:
        return bool(self.last) and all(r.ok for r in self.last) and not (self.recovering or self.draining)

    def metrics_text(self) -> str:
        lines = [
            "# HELP optistop_supervisor_recoveries_total Dead backends recovered, by model and action",
            "# TYPE optistop_supervisor_recoveries_total counter",
            *(f'optistop_supervisor_recoveries_total{{model="{m}",action="{a}"}} {n}'
              for (m, a), n in sorted(self.recoveries.items())),
            "# HELP optistop_supervisor_recovery_seconds_total Time from detection to recovered, by model",
            "# TYPE optistop_supervisor_recovery_seconds_total counter",
            *(f'optistop_supervisor_recovery_seconds_total{{model="{m}"}} {s:.3f}'
              for m, s in sorted(self.recovery_seconds.items())),
            "# HELP optistop_supervisor_health_checks_total Real-inference health checks, by result",
            "# TYPE optistop_supervisor_health_checks_total counter",
            *(f'optistop_supervisor_health_checks_total{{result="{k}"}} {n}' for k, n in sorted(self.checks.items())),
            "# HELP optistop_supervisor_model_up Whether the model answered the last health check",
            "# TYPE optistop_supervisor_model_up gauge",
            *(f'optistop_supervisor_model_up{{model="{r.model}"}} {int(r.ok)}' for r in self.last),
        ]
        return "\n".join(lines) + "\n"

    def _serve_http(self) -> None:
        if self.cfg.metrics_port is None or self._http is not None:
            return
        sup = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                if self.path == "/metrics":
                    code, body = 200, sup.metrics_text()
                elif self.path == "/healthz":
                    state = "draining" if sup.draining else "recovering" if sup.recovering else ""
                    code = 200 if sup.healthy() else 503
                    state = state or ("ok" if code == 200 else "not checked yet" if not sup.last else "failing")
                    body = "\n".join([*(r.line() for r in sup.last), state]) + "\n"
                else:
                    code, body = 404, "try /metrics or /healthz\n"
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # probes every few seconds: keep the log quiet
                pass

        self._http = ThreadingHTTPServer((self.server.cfg.host, self.cfg.metrics_port), Handler)
        threading.Thread(target=self._http.serve_forever, name="supervisor-http", daemon=True).start()
