"""Prometheus text through prometheus_client: our reader (optistop.prometheus_text) and every caller of it
(Triton's queue lengths for the supervisor, `optistop health`'s quality line, chaos's recovery count), and
the supervisor's /metrics written by the library and read back over HTTP. Expected values worked out by hand
from the fixtures below."""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from optistop import prometheus_text
from optistop.reliability.chaos import _recoveries
from optistop.server.health import ModelHealth, quality_line
from optistop.server.liveness import pending_from_metrics
from optistop.server.supervisor_http import metrics_text, serve_http
from tests.unit.test_supervision import _supervisor

# What the hand-written parsers got wrong or could not read: labels in another order, a label value with
# a space, a brace and an escaped quote, a sample with a timestamp (the last field is not the value),
# NaN and +Inf, a histogram, comments.
TEXT = (
    "# HELP nv_inference_pending_request_count Instantaneous number of pending requests\n"
    "# TYPE nv_inference_pending_request_count gauge\n"
    'nv_inference_pending_request_count{version="1",model="stage_small"} 3\n'
    'nv_inference_pending_request_count{model="stage_small",version="2"} 2 1700000000000\n'
    'nv_inference_pending_request_count{model="cascade",version="1"} 0\n'
    "# TYPE nv_inference_count counter\n"
    'nv_inference_count{model="stage_small",version="1"} 99\n'
    "# TYPE optistop_cascade_requests_total counter\n"
    'optistop_cascade_requests_total{policy="fixed:0",stage="stage_small"} 7\n'
    'optistop_cascade_requests_total{stage="stage_large",policy="fixed:0"} 3\n'
    'optistop_cascade_requests_total{policy="say \\"a b}\\"",stage="stage_large"} 5\n'
    "optistop_cascade_quality_estimate NaN\n"
    "optistop_cascade_ceiling +Inf\n"
    "# TYPE optistop_cascade_latency_seconds histogram\n"
    'optistop_cascade_latency_seconds_bucket{le="0.5"} 4\n'
    'optistop_cascade_latency_seconds_bucket{le="+Inf"} 6\n'
    "optistop_cascade_latency_seconds_sum 2.25\n"
    "optistop_cascade_latency_seconds_count 6\n"
)


def key(name: str, **labels: str) -> prometheus_text.SampleKey:
    return name, frozenset(labels.items())


def test_samples_keys_values_and_prefix() -> None:
    s = prometheus_text.samples(TEXT, "optistop_cascade_")
    assert s[key("optistop_cascade_requests_total", policy="fixed:0", stage="stage_large")] == 3
    assert s[key("optistop_cascade_requests_total", policy='say "a b}"', stage="stage_large")] == 5
    assert math.isnan(s[key("optistop_cascade_quality_estimate")])
    assert s[key("optistop_cascade_ceiling")] == math.inf
    assert s[key("optistop_cascade_latency_seconds_bucket", le="+Inf")] == 6
    assert s[key("optistop_cascade_latency_seconds_sum")] == 2.25
    assert len(s) == 9 and not any(n.startswith("nv_") for n, _ in s)
    every = prometheus_text.samples(TEXT)
    assert len(every) == 13
    assert every[key("nv_inference_pending_request_count", model="stage_small", version="2")] == 2  # not the time
    # a counter is named as OpenMetrics names it: the library adds the _total Triton's own counters leave off
    assert every[key("nv_inference_count_total", model="stage_small", version="1")] == 99
    assert key("nv_inference_count", model="stage_small", version="1") not in every


@pytest.mark.parametrize("prefix", ["nv_inference_count", "nv_inference_pending", "optistop_cascade_latency",
                                    "optistop_cascade_requests_total", "nv_", "missing"])
def test_a_prefix_reads_only_its_families_and_reads_them_the_same(prefix: str) -> None:
    want = {k: v for k, v in prometheus_text.samples(TEXT).items() if k[0].startswith(prefix)}
    assert prometheus_text.samples(TEXT, prefix) == want
    assert bool(want) is (prefix != "missing")


def test_value_is_the_exact_label_set_and_total_sums_the_matching_ones() -> None:
    s = prometheus_text.samples(TEXT)
    name = "optistop_cascade_requests_total"
    assert prometheus_text.value(s, name, stage="stage_small", policy="fixed:0") == 7   # any label order
    assert prometheus_text.value(s, name, stage="stage_small") == 0.0   # a subset is not the sample
    assert prometheus_text.value(s, "optistop_cascade_missing_total") == 0.0
    assert prometheus_text.total(s, name) == 7 + 3 + 5
    assert prometheus_text.total(s, name, stage="stage_large") == 3 + 5
    assert prometheus_text.total(s, name, stage="stage_large", policy="fixed:0") == 3


@pytest.mark.parametrize("bad", ["optistop_x{model=cascade} 1\n", "optistop_x\n", "optistop_x one\n", "<html>\n"])
def test_text_that_is_not_prometheus_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        prometheus_text.samples(bad)


def test_pending_from_metrics_sums_versions_in_any_label_order() -> None:
    assert pending_from_metrics(TEXT) == {"stage_small": 3 + 2, "cascade": 0}
    assert pending_from_metrics("") == {}
    with pytest.raises(ValueError):
        pending_from_metrics('nv_inference_pending_request_count{model="a" 1\n')


def test_chaos_counts_recoveries_over_every_label_set() -> None:
    text = ('optistop_supervisor_recoveries_total{action="reload",model="stage_small"} 2.0\n'
            'optistop_supervisor_recoveries_total{action="restart",model="*"} 1.0\n'
            "optistop_supervisor_recovery_seconds_total 9.5\n")
    assert _recoveries(text) == 3
    assert _recoveries("") == 0  # the supervisor did not answer


# ---- the supervisor's /metrics, written by prometheus_client ------------------------------------------
def _busy_supervisor():
    sup = _supervisor()
    sup.recoveries[("stage_small", "reload")] += 2
    sup.recoveries[("*", "restart")] += 1
    sup.recovery_seconds["stage_small"] += 1.23456
    sup.verdicts[("stage_small", "dead")] += 2
    sup.verdicts[("cascade", "slow")] += 1
    sup.checks["ok"] += 5
    sup.checks["fail"] += 1
    sup.probe_errors = 4
    for w in sup.watches:
        w.probe_answered(ModelHealth(w.model, w.model == "cascade", 3.0, "ok"), time.monotonic())
    return sup


def test_supervisor_metrics_names_labels_values_and_types() -> None:
    text = metrics_text(_busy_supervisor())
    assert prometheus_text.samples(text) == {
        key("optistop_supervisor_recoveries_total", model="stage_small", action="reload"): 2,
        key("optistop_supervisor_recoveries_total", model="*", action="restart"): 1,
        key("optistop_supervisor_recovery_seconds_total", model="stage_small"): 1.235,  # ms resolution
        key("optistop_supervisor_verdicts_total", model="stage_small", verdict="dead"): 2,
        key("optistop_supervisor_verdicts_total", model="cascade", verdict="slow"): 1,
        key("optistop_supervisor_health_checks_total", result="ok"): 5,
        key("optistop_supervisor_health_checks_total", result="fail"): 1,
        key("optistop_supervisor_probe_errors_total"): 4,
        key("optistop_supervisor_model_up", model="stage_small"): 0,
        key("optistop_supervisor_model_up", model="cascade"): 1,
    }
    types = {ln.split()[2]: ln.split()[3] for ln in text.splitlines() if ln.startswith("# TYPE")}
    assert types == {**{f"optistop_supervisor_{n}_total": "counter" for n in
                        ("recoveries", "recovery_seconds", "verdicts", "health_checks", "probe_errors")},
                     "optistop_supervisor_model_up": "gauge"}


def test_a_fresh_supervisor_exports_every_family_and_a_zero_error_count() -> None:
    text = metrics_text(_supervisor())
    assert text.count("# HELP optistop_supervisor_") == 6
    assert prometheus_text.samples(text) == {key("optistop_supervisor_probe_errors_total"): 0}


def test_supervisor_metrics_over_http() -> None:
    sup = _busy_supervisor()
    http = serve_http(sup, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http.server_port}/metrics", timeout=5) as resp:
            ctype, body = resp.headers["Content-Type"], resp.read().decode()
    finally:
        http.shutdown()
        http.server_close()
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert prometheus_text.samples(body) == prometheus_text.samples(metrics_text(sup))


# ---- `optistop health --metrics-url`: the quality line from Triton's metrics -------------------------
@pytest.fixture
def metrics_at() -> Iterator[Callable[[str], str]]:
    """Serve a given text on /metrics of a loopback port; yields a function text -> 'host:port'."""
    served: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            data = served["text"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown

    def at(text: str) -> str:
        served["text"] = text
        return f"127.0.0.1:{http.server_port}"

    yield at
    http.shutdown()
    http.server_close()


def test_quality_line_reads_the_plain_cascades_gauges(metrics_at) -> None:
    gauges = {"quality_estimate": 0.9126, "quality_lower_bound": 0.85, "quality_upper_bound": 0.95,
              "audits_in_window": 80, "audit_cost_share": 0.042, "policy_version": 3, "drift_alarm": 1}
    text = "".join(f'# TYPE optistop_cascade_{k} gauge\noptistop_cascade_{k}{{model="cascade"}} {v}\n'
                   f'optistop_cascade_{k}{{model="cascade_stream"}} 0\n' for k, v in gauges.items())
    assert quality_line(metrics_at(text)) == ("quality: 0.913 of the reference [0.850, 0.950] over 80 audits; "
                                              "audit cost share 4.2%; policy version 3; DRIFT ALARM")
    only_stream = 'optistop_cascade_audits_in_window{model="cascade_stream"} 12\n'
    assert quality_line(metrics_at(only_stream)).startswith("quality: no audits yet")
    assert "not Prometheus text" in quality_line(metrics_at("optistop_cascade_audits_in_window{model=} x\n"))
