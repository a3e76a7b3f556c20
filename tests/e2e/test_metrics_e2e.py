"""Custom cascade metrics on Triton's metrics port, after known traffic (counted exactly)."""

from __future__ import annotations

import time
import urllib.request

import pytest
from tritonclient.utils import InferenceServerException

from optistop import prometheus_text
from optistop.client.cascade import ask, make_client
from optistop.serving.prometheus import FLUSH_S
from optistop.spec import load_spec

SPEC = load_spec()


def scrape(server) -> dict[tuple[str, frozenset], float]:
    time.sleep(2 * FLUSH_S)   # the cascade sends its increments every FLUSH_S
    url = f"http://{server.cfg.host}:{server.cfg.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return prometheus_text.samples(resp.read().decode(), "optistop_")


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    """Increase of ``name`` summed over the label sets that include ``labels``."""
    return prometheus_text.total(after, name, **labels) - prometheus_text.total(before, name, **labels)


def test_counters_match_known_traffic(server) -> None:
    client = make_client(server.cfg.grpc_url, "grpc")
    before = scrape(server)
    n = 4
    for k in range(3):
        for p in ("12+35=", "R:abcdef=", "S:9381=", "7+8=")[:n]:
            ask(client, "grpc", p, policy=f"fixed:{k}")
    for bad in ("", "  "):
        with pytest.raises(InferenceServerException):
            ask(client, "grpc", bad)
    after = scrape(server)
    for k, stage in enumerate(SPEC.stages):
        assert delta(after, before, "optistop_cascade_requests_total", policy=f"fixed:{k}",
                     stage=stage.triton_model) == n
        assert delta(after, before, "optistop_cascade_stage_runs_total", stage=str(k)) == n
        assert delta(after, before, "optistop_cascade_confidence_total", stage=str(k)) == n
    assert delta(after, before, "optistop_cascade_cost_total") == pytest.approx(n * sum(SPEC.costs))
    assert delta(after, before, "optistop_cascade_escalations_total") == 0
    assert delta(after, before, "optistop_cascade_errors_total", code="INVALID_ARG") == 2
    assert delta(after, before, "optistop_cascade_degraded_total") == 0
    assert delta(after, before, "optistop_cascade_predictor_seconds_total") > 0


def test_escalations_are_counted_from_stages_run(server) -> None:
    client = make_client(server.cfg.grpc_url, "grpc")
    before = scrape(server)
    answers = [ask(client, "grpc", p, policy="paper", lam=0.0) for p in ("4821+3777=", "R:qwertyuiopas=")]
    after = scrape(server)
    expected: dict[tuple[str, str], int] = {}
    for a in answers:
        for x, y in zip(a.stages_run, a.stages_run[1:]):
            expected[(str(x), str(y))] = expected.get((str(x), str(y)), 0) + 1
    total = sum(expected.values())
    assert delta(after, before, "optistop_cascade_escalations_total") == total
    for (x, y), count in expected.items():
        assert delta(after, before, "optistop_cascade_escalations_total", **{"from": x, "to": y}) == count
