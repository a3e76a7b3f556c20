"""The short soak (10 s at concurrency 16, good and bad requests mixed) runs in the test suite; the full
one is `make soak` (60 s)."""

from __future__ import annotations

from optistop.reliability.soak import run_load


def test_short_soak(server) -> None:
    report = run_load(server.cfg.grpc_url, server.proc.pid, duration=10.0, concurrency=16)
    assert report.good_failed == 0, report.failures
    assert report.bad_accepted == 0, report.failures
    assert report.bad_rejected > 0 and report.good_ok > report.bad_rejected
    assert report.rss_growth_pct < 10.0, report
