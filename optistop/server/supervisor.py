"""Keep a tritonserver honest: recover a dead or wedged backend, leave a slow one alone, drain on SIGTERM.

$ optistop serve                 # supervised by default; `--no-supervise` runs tritonserver bare
$ optistop serve --wedge-timeout 120 --probe-interval 5    # or the spec's [supervisor] table

tritonserver 2.51 does not restart a Python-backend stub that died (kill -9, OOM, segfault), and its
readiness endpoints keep answering 200 (DESIGN.md, "Facts found"). What counts as what
(optistop/server/liveness.py has the rules):

- **dead**: a backend stub process of the model is gone (a /proc scan every ``scan_s``), or a readiness
  probe is answered "stub not healthy" / "not loaded". Unloaded and loaded again.
- **wedged**: work in flight and none of Triton's progress counters moving for the wedge window (at least
  ``wedge_s``, and ``wedge_factor`` times the longest batch the model was seen to take). Its stubs are
  killed (a load of an unmodified model whose instances report ready is a no-op), then it is reloaded.
- **slow but progressing**: the readiness probe waits behind real work, the counters move: logged, not
  killed. A real model busy decoding a batch is this.
A model that answers with an error is alive: that is the cascade's business.

Recovery goes through Triton's model-repository API (explicit model control; the API answers only requests
that carry this supervisor's random token, sent over loopback). If the reload fails, or tritonserver itself
exited, the whole server restarts. Each recovery is logged and counted on the supervisor's own port
(optistop/server/supervisor_http.py: ``/metrics``, and ``/healthz``, a Kubernetes readiness probe).
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optistop.server import liveness
from optistop.server.embedded import EmbeddedServer, ServerError
from optistop.server.health import ModelHealth, probe
from optistop.server.liveness import STUB_BINARY, Stub, Verdict, stub_processes  # noqa: F401 - re-exported
from optistop.spec import SupervisorSpec

log = logging.getLogger("optistop.supervisor")
STALE_PROBES = 3   # /healthz answers 503 once no probe round finished for this many probe periods
SLOW_LOG_EVERY_S = 60.0


@dataclass
class SupervisorConfig:
    timing: SupervisorSpec = field(default_factory=SupervisorSpec)
    metrics_port: int | None = None          # None: no HTTP endpoint
    floors: dict[str, float] = field(default_factory=dict)  # model -> longest call the spec allows it


class Supervisor:
    """Runs in the thread that started the server (PR_SET_PDEATHSIG is per thread; see embedded.py)."""

    def __init__(self, server: EmbeddedServer, models: dict[str, str], cfg: SupervisorConfig | None = None) -> None:
        self.server, self.models, self.cfg = server, models, cfg or SupervisorConfig()
        self.t = self.cfg.timing
        host = server.cfg.host if server.cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.grpc_url = f"{host}:{server.cfg.grpc_port}"
        self.control_url = f"http://{host}:{server.cfg.http_port}"
        self.metrics_url = f"http://{host}:{server.cfg.metrics_port}/metrics"
        self.recoveries: Counter[tuple[str, str]] = Counter()   # (model, action) -> count
        self.recovery_seconds: Counter[str] = Counter()          # model -> seconds, detection to served
        self.checks: Counter[str] = Counter()                    # probe rounds: "ok" / "fail"
        self.verdicts: Counter[tuple[str, str]] = Counter()      # (model, dead/wedged/slow) -> count
        self.probe_errors = 0                                    # probe rounds that raised
        self.last_round: float | None = None                     # monotonic time the last round finished
        self.watches = liveness.Watches.of(models, self.cfg.floors)
        self.recovering = self.draining = False
        self.recovering_since = 0.0                              # monotonic start of the recovery under way
        self.started = time.monotonic()
        self._stubs: dict[int, Stub] = {}
        self._want: Counter[str] = Counter()                     # model -> stubs it has when healthy
        self._gone: list[Stub] = []                               # stubs that vanished, for their regions
        self._recovered_at: Counter[str] = Counter()             # model -> monotonic time of last recovery
        self._clients: dict[str, Any] = {}                       # model (or "" for statistics) -> client
        self._probes: dict[str, Future[ModelHealth]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2 * len(models) + 1, thread_name_prefix="supervisor-probe")
        self._lock = threading.Lock()                            # watches and probes: probe thread vs recovery
        self._http: Any = None
        self._slow_told: dict[str, float] = {}

    @property
    def last(self) -> list[ModelHealth]:
        """What /healthz shows: each model's last answer (with "busy" when its probe waits behind work)."""
        now = time.monotonic()
        with self._lock:
            return [h for w in self.watches if (h := w.health(now, self.t)) is not None]

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set; the caller then drains (``drain``). Probes run in their own
        thread, so a slow probe never delays the stub scan; every recovery happens here, in order."""
        from optistop.server.supervisor_http import serve_http

        if self.cfg.metrics_port is not None and self._http is None:
            self._http = serve_http(self, self.server.cfg.host, self.cfg.metrics_port)
        self._baseline()
        verdicts: queue.Queue[tuple[Verdict, float]] = queue.Queue()
        prober = threading.Thread(target=self._probe_loop, args=(stop, verdicts), name="supervisor-probe",
                                  daemon=True)
        prober.start()
        while not stop.is_set():
            proc = self.server.proc
            if proc is not None and proc.poll() is not None:
                self._restart(f"tritonserver exited with code {proc.returncode}")
                continue
            found = {m: Verdict(m, "dead", why) for m, why in self._scan().items()}
            while not verdicts.empty():
                v, t_seen = verdicts.get_nowait()
                if t_seen <= self._recovered_at[v.model]:
                    continue  # about an instance replaced since
                self.verdicts[(v.model, v.kind)] += 1
                if v.kind == "slow":  # counted every time, logged at most once a minute per model
                    told = self._slow_told.get(v.model)
                    if told is None or time.monotonic() - told >= SLOW_LOG_EVERY_S:
                        self._slow_told[v.model] = time.monotonic()
                        log.warning("model '%s' slow but progressing: not killed (%s)", v.model, v.text)
                else:
                    found.setdefault(v.model, v)
            for v in found.values():
                self._recover(v)
            stop.wait(self.t.scan_s)

    def _probe_loop(self, stop: threading.Event, verdicts: queue.Queue[tuple[Verdict, float]]) -> None:
        """One round per ``probe_s``. Guarded: a round that raises is logged with its traceback and counted,
        and the next round runs; /healthz goes stale (503) if rounds stop finishing."""
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                if not self.recovering:  # its answers would describe the model being replaced
                    for v in self._probe_round():
                        verdicts.put((v, t0))
            except Exception:
                self.probe_errors += 1
                log.exception("supervisor probe round failed (%d so far); the next one runs in %gs",
                              self.probe_errors, self.t.probe_s)
            stop.wait(max(self.t.probe_s - (time.monotonic() - t0), 0.05))

    def _client(self, key: str) -> Any:
        import tritonclient.grpc as grpc

        if key not in self._clients:
            self._clients[key] = grpc.InferenceServerClient(self.grpc_url)
        return self._clients[key]

    def _probe_round(self) -> list[Verdict]:
        """Read Triton's statistics, collect answered readiness probes, send the next ones, judge."""
        stats = self._client("").get_inference_statistics(client_timeout=max(self.t.probe_s, 1.0))
        pending = self._pending()
        now = time.monotonic()
        out: list[Verdict] = []
        n_stages = sum(role == "stage" for role in self.models.values()) or 3
        with self._lock:
            self.watches.observe(liveness.progress_from_stats(stats), pending, now)
            for w in self.watches:
                fut = self._probes.get(w.model)
                if fut is not None and fut.done():
                    del self._probes[w.model]
                    health = fut.result()
                    w.probe_answered(health, now)
                    if health.dead:
                        out.append(Verdict(w.model, "dead", f"answered {health.detail}"))
                if w.model not in self._probes:
                    # no deadline for waiting behind real work: the wedge rule decides, not the probe
                    deadline = max(w.window(self.t), self.t.slow_s) + 2 * self.t.probe_s
                    w.probe_sent(now)
                    self._probes[w.model] = self._pool.submit(probe, self._client(w.model), w.model, w.role,
                                                              deadline, n_stages)
            out += self.watches.judge(now, self.t)
            answered = [w.last for w in self.watches]
        self.checks["ok" if all(h is not None and h.ok for h in answered) else "fail"] += 1
        self.last_round = time.monotonic()
        return out

    def _pending(self) -> dict[str, int]:
        """Requests waiting in Triton's queues (its metrics); empty if the metrics endpoint does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=max(self.t.probe_s, 1.0)) as resp:
                return liveness.pending_from_metrics(resp.read().decode(errors="replace"))
        except (OSError, urllib.error.URLError):
            return {}
        except ValueError as exc:  # not Prometheus text: judge by the probes alone, and say why
            log.warning("Triton's metrics at %s are not Prometheus text (%s); queue lengths unknown",
                        self.metrics_url, exc)
            return {}

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
                gone = [s for p, s in self._stubs.items() if s.model == model and p not in now]
                self._gone += gone
                pids = ", ".join(str(s.pid) for s in gone) or "?"
                dead[model] = f"process gone (backend stub {pids} exited)"
        self._stubs = now
        return dead

    # ---- recovery --------------------------------------------------------------------------------
    def _recover(self, v: Verdict) -> None:
        t0 = time.monotonic()
        model = v.model
        self.recovering, self.recovering_since = True, time.monotonic()
        old = [s for s in [*self._gone, *self._stubs.values()] if s.model == model]
        if v.kind == "wedged":
            log.warning("model '%s' wedged: %s; killing its backend and reloading it", model, v.text)
            # A reload is a no-op while every instance reports ready (Triton skips unmodified, ready
            # models): the wedged stub is killed first, which makes it a dead one.
            for stub in [s for s in self._stubs.values() if s.model == model]:
                try:
                    os.kill(stub.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            log.warning("model '%s' dead: %s; reloading it", model, v.text)
        self._gone = [s for s in self._gone if s.model != model]
        try:
            self._reload(model)
        except (OSError, urllib.error.URLError, ServerError) as exc:
            log.error("reload of '%s' failed (%s); restarting tritonserver", model, exc)
            self._restart(f"reload of '{model}' failed")
            return
        finally:
            self._forget([model])
            self.recovering = False
        self._baseline()
        for stub in old:  # a dead stub's region: tritonserver 2.51 leaves it in /dev/shm
            if stub.pid not in self._stubs:
                Path("/dev/shm", stub.region).unlink(missing_ok=True)
        took = time.monotonic() - t0
        self.recoveries[(model, "reload")] += 1
        self.recovery_seconds[model] += took
        log.warning("model '%s' recovered by reload in %.1fs", model, took)

    def _forget(self, models: list[str]) -> None:
        """The old instances' probes and progress no longer describe anything."""
        with self._lock:
            for m in models:
                self._probes.pop(m, None)
                self._recovered_at[m] = time.monotonic()
            self.watches.reset(models)

    def _reload(self, model: str) -> None:
        # Unload first: Triton's load of an unmodified model whose instances still report ready is a no-op
        # (measured: 4 ms, the dead stub stays dead); unload + load starts a new stub.
        self._control(model, "unload")
        self._control(model, "load")

    def _control(self, model: str, action: str, timeout: float | None = None) -> None:
        req = urllib.request.Request(f"{self.control_url}/v2/repository/models/{model}/{action}", data=b"{}",
                                     method="POST", headers=self.server.cfg.control_header)
        with urllib.request.urlopen(req, timeout=timeout or self.t.reload_timeout_s) as resp:
            if resp.status != 200:
                raise ServerError(f"{action} API answered {resp.status}")

    def _restart(self, reason: str) -> None:
        t0 = time.monotonic()
        self.recovering, self.recovering_since = True, time.monotonic()
        log.error("%s; restarting tritonserver", reason)
        try:
            self.server.stop(timeout=5)
            self.server.start()
            self.server.wait_ready()
        finally:
            self._clients.clear()
            self._forget(list(self.models))
            self.recovering = False
        self._baseline()
        self.recoveries[("*", "restart")] += 1
        self.recovery_seconds["*"] += time.monotonic() - t0
        log.warning("tritonserver restarted in %.1fs", time.monotonic() - t0)

    def drain(self) -> int | None:
        """SIGTERM: refuse new requests, let in-flight ones finish, stop (optistop/server/drain.py)."""
        from optistop.server.drain import drain

        code = drain(self)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.shutdown()
        return code

    def healthy(self, now: float | None = None) -> bool:
        """Readiness: every model answered its last probe, probe rounds are fresh, not recovering or draining."""
        return not self.stale(now) and bool(self.last) and len(self.last) == len(self.models) and \
            all(r.ok for r in self.last) and not (self.recovering or self.draining)

    def alive(self, now: float | None = None) -> bool:
        """Liveness of the whole pod (/livez): the supervisor can still heal it. False once probe rounds
        stopped (not for a recovery) or a recovery has run past its reload timeout + 30 s."""
        now = time.monotonic() if now is None else now
        if self.recovering:
            return now - self.recovering_since <= self.t.reload_timeout_s + 30
        last = self.last_round if self.last_round is not None else self.started
        return self.draining or now - last <= STALE_PROBES * self.t.probe_s

    def stale(self, now: float | None = None) -> bool:
        """No probe round finished for STALE_PROBES periods (a stuck or dead probe thread, a hung server)."""
        now = time.monotonic() if now is None else now
        return self.last_round is None or now - self.last_round > STALE_PROBES * self.t.probe_s
