"""The supervisor's own HTTP endpoint (optistop/server/supervisor.py), on ``--supervisor-port``:

- ``/healthz``: 200 only while every model answered its last readiness probe, a probe round finished within
  the last 3 probe periods (a stuck probe thread or a hung server turns it 503), no recovery is under way
  and the server is not draining: a Kubernetes readiness probe. The body has one line per model.
- ``/livez``: 200 while the supervisor can heal the server (probe rounds finishing, no recovery stuck past its
  reload timeout): a Kubernetes liveness probe that never waits behind real work, unlike a real inference;
- ``/metrics``: recoveries, verdicts (dead / wedged / slow), probe rounds and probe-round errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from optistop.server.supervisor import Supervisor


def _counter(name: str, doc: str, labels: list[str], items: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(items):
        fam.add_metric(list(key), n)
    return fam


class SupervisorCollector(Collector):
    """The supervisor's counters as Prometheus metric families, read from ``sup`` at each scrape (a custom
    collector: the counts live in the supervisor, so nothing is kept twice)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        sup = self.sup
        yield _counter("optistop_supervisor_recoveries_total", "Dead or wedged backends recovered, by model and action",
                       ["model", "action"], sup.recoveries.items())
        yield _counter("optistop_supervisor_recovery_seconds_total", "Time from detection to recovered, by model",
                       ["model"], (((m,), round(s, 3)) for m, s in sup.recovery_seconds.items()))
        yield _counter("optistop_supervisor_verdicts_total", "What the supervisor found, by model and verdict "
                       "(dead, wedged: recovered; slow: progressing, left alone)", ["model", "verdict"],
                       sup.verdicts.items())
        yield _counter("optistop_supervisor_health_checks_total", "Probe rounds (statistics + readiness), by result",
                       ["result"], (((k,), n) for k, n in sup.checks.items()))
        yield CounterMetricFamily("optistop_supervisor_probe_errors_total",
                                  "Probe rounds that raised (logged with a traceback)", value=sup.probe_errors)
        up = GaugeMetricFamily("optistop_supervisor_model_up", "Whether the model answered its last readiness probe",
                               labels=["model"])
        for r in sup.last:
            up.add_metric([r.model], int(r.ok))
        yield up


def metrics_text(sup: Supervisor) -> str:
    """Prometheus text (format 0.0.4) of the supervisor's counters, written by prometheus_client."""
    return generate_latest(SupervisorCollector(sup)).decode()


def healthz(sup: Supervisor) -> tuple[int, str]:
    now = time.monotonic()
    last = sup.last
    code = 200 if sup.healthy(now) else 503
    if sup.draining or sup.recovering:
        state = "draining" if sup.draining else "recovering"
    elif sup.last_round is None or not last:
        state = "not checked yet"
    elif sup.stale(now):
        state = (f"stale: no probe round finished for {now - sup.last_round:.0f} s "
                 f"({sup.probe_errors} probe round(s) raised; see the log)")
    else:
        state = "ok" if code == 200 else "failing"
    return code, "\n".join([*(r.line() for r in last), state]) + "\n"


def serve_http(sup: Supervisor, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
            if self.path == "/metrics":
                code, body = 200, metrics_text(sup)
            elif self.path == "/healthz":
                code, body = healthz(sup)
            elif self.path == "/livez":
                code = 200 if sup.alive() else 503
                body = "alive\n" if code == 200 else "the supervisor cannot heal this server: restart it\n"
            else:
                code, body = 404, "try /metrics, /healthz or /livez\n"
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # probes every few seconds: keep the log quiet
            pass

    http = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=http.serve_forever, name="supervisor-http", daemon=True).start()
    return http
