"""Audit sampling on the real server (session fixture): audits land in the log after the answers, the
quality gauges move when the served answers are made worse on purpose, and a recalibrated policy.json
is picked up under load with no failed request (each test makes its own audits: any order, any worker).

Degrading on purpose, without touching a stage: the requests ask for ``fixed:0`` (the small stage, which
fails most 4-digit additions) with ``audit`` = 1, so every audit compares a weak answer with the
reference's; ``fixed:2`` answers are the reference's own and always agree.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from optistop import ROOT
from optistop.audit import read_log
from optistop.client.cascade import ask, make_client
from optistop.spec import load_spec
from tests.e2e.test_metrics_e2e import scrape

SPEC = load_spec()


def served_files(server) -> tuple[Path, Path]:
    """(audit log, policy.json) of the session server: its temporary copy (tests/conftest.py), whose spec
    has audit_rate 0 and audit_log beside it; the tracked repository is never written."""
    repo = server.cfg.repository
    assert repo != ROOT / "model_repository", "the session server must serve a temporary copy"
    return repo.parent / "audit.jsonl", repo / SPEC.predictor_model / "1" / "policy.json"
HARD = [f"{a}+{b}=" for a, b in ((4821, 3779), (9057, 1988), (6644, 7389), (1299, 8807), (5718, 2696),
                                  (3846, 9175), (7432, 5589), (2987, 6614))]


def gauge(metrics: dict, name: str) -> float:
    return metrics[(f"optistop_cascade_{name}", frozenset({("model", "cascade")}))]


def counter(metrics: dict, name: str) -> float:
    return metrics.get((f"optistop_cascade_{name}", frozenset()), 0.0)


def new_records(log: Path, offset: int, want: int, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        recs = list(read_log(log))[offset:] if log.exists() else []
        if len(recs) >= want or time.monotonic() > deadline:
            return recs
        time.sleep(0.5)


def count_records(log: Path) -> int:
    try:
        return sum(1 for _ in read_log(log))
    except FileNotFoundError:
        return 0


def test_audits_land_in_the_log_and_the_gauges_move(server) -> None:
    client = make_client(server.cfg.grpc_url, "grpc")
    log, _ = served_files(server)
    start, before = count_records(log), scrape(server)
    for p in HARD[:4]:   # not asked for: the session server's spec has audit_rate 0 (tests/conftest.py)
        ask(client, "grpc", p, policy="fixed:0")
    for p in HARD[:6]:
        ans = ask(client, "grpc", p, policy="fixed:2", audit=1.0)
        assert ans.stage == 2
    good = new_records(log, start, 6)
    assert len(good) == 6
    for r in good:   # the served answer is the reference's; the audit completes the row with stages 0 and 1
        assert r["agree"] and r["served_stage"] == 2 and r["audit_stages"] == [0, 1]
        assert r["cost_audit"] == pytest.approx(SPEC.costs[0] + SPEC.costs[1])
    mid = scrape(server)
    assert counter(mid, "audits_total") - counter(before, "audits_total") == 6
    for p in HARD + HARD[:4]:
        assert ask(client, "grpc", p, policy="fixed:0", audit=1.0).stage == 0
    weak = new_records(log, start + 6, 12)
    assert len(weak) == 12
    for r in weak:   # every stage above the served one ran for the audit and was paid for apart
        assert r["served_stage"] == 0 and r["audit_stages"] == [1, 2] and len(r["answers"]) == 3
        assert r["cost_audit"] == pytest.approx(SPEC.costs[1] + SPEC.costs[2]) and r["cost_served"] == SPEC.costs[0]
        assert r["agree"] == (" ".join(r["answers"][0].split()) == " ".join(r["answers"][2].split()))
        assert "prompt" not in r and len(r["prompt_sha256"]) == 64
    wrong = sum(not r["agree"] for r in weak)
    assert wrong >= 6, [r["answers"] for r in weak]
    after = scrape(server)
    assert counter(after, "audits_total") - counter(before, "audits_total") == 18
    assert counter(after, "audit_cost_total") - counter(before, "audit_cost_total") == pytest.approx(
        6 * (SPEC.costs[0] + SPEC.costs[1]) + 12 * (SPEC.costs[1] + SPEC.costs[2]))
    assert gauge(after, "quality_estimate") < gauge(mid, "quality_estimate")
    assert gauge(after, "audits_in_window") >= 10 and gauge(after, "audit_cost_share") > 0
    assert gauge(after, "drift_alarm") == 1.0   # 12 wrong-or-not of 18: far below any tolerance
    assert counter(after, "drift_alarms_total") >= 1
    from optistop.server.health import quality_line  # what `optistop health --metrics-url` prints

    line = quality_line(f"{server.cfg.host}:{server.cfg.metrics_port}")
    assert f"over {gauge(after, 'audits_in_window'):g} audits" in line and "DRIFT ALARM" in line, line


def test_recalibrated_policy_is_picked_up_under_load_without_failures(server, tmp_path) -> None:
    from optistop.pipeline.recalibrate import recalibrate

    served_log, policy = served_files(server)
    # its own audits (weak answers and the reference's), so it runs alone, in any order, on any worker
    client = make_client(server.cfg.grpc_url, "grpc")
    start = count_records(served_log)
    for p in HARD[:6]:
        for pol in ("fixed:0", "fixed:2"):
            ask(client, "grpc", p, policy=pol, audit=1.0)
    recent = new_records(served_log, start, 12)
    assert len(recent) == 12
    log = tmp_path / "audit.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in recent), encoding="utf-8")
    tracked = (ROOT / "model_repository" / SPEC.predictor_model / "1" / "policy.json").read_bytes()
    saved = policy.read_bytes()
    version = int(json.loads(saved).get("version", 1))
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def load() -> None:
        c = make_client(server.cfg.grpc_url, "grpc")
        i = 0
        while not stop.is_set():
            try:
                ask(c, "grpc", HARD[i % len(HARD)])
                served[0] += 1
            except Exception as exc:   # any failure fails the test
                failures.append(str(exc))
            i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        res = recalibrate(log, policy, 0.95)
        assert res["version"] == version + 1
        deadline = time.monotonic() + SPEC.policy_watch_s + 30
        while gauge(scrape(server), "policy_version") != version + 1:
            assert time.monotonic() < deadline, "the server did not pick up the new policy.json"
        before_stop = served[0]
        time.sleep(1.0)
        assert served[0] > before_stop    # still serving after the swap
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        policy.write_bytes(saved)   # the copy's, for the tests after this one on the same server
        policy.with_name(f"policy.v{version}.json").unlink(missing_ok=True)
    assert failures == [] and served[0] > 0
    assert (ROOT / "model_repository" / SPEC.predictor_model / "1" / "policy.json").read_bytes() == tracked
    # the restored file is a change too: the next request after policy_watch_s swaps it back (the file is
    # checked on the request path, so requests must come), for the tests after this one
    deadline = time.monotonic() + SPEC.policy_watch_s + 30
    while gauge(scrape(server), "policy_version") != version:
        assert time.monotonic() < deadline, "the server did not go back to the restored policy.json"
        ask(client, "grpc", "12+35=")


def test_bad_audit_input_is_refused_with_its_name(server) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="input 'audit' is 1.5"):
        ask(make_client(server.cfg.grpc_url, "grpc"), "grpc", "12+35=", audit=1.5)
