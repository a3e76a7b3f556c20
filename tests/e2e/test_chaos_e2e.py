"""Chaos, bounded: `optistop serve` (supervised) under concurrent load; kill -9 the backend stub of the first
stage (every request runs it), the predictor and the cascade in turn (optistop/reliability/chaos.py;
`make chaos` kills every backend, stage_medium and stage_large too, in 3 rounds).

Every request ends with an answer or a clean error within its timeout, no request started 10 s after a
kill fails, each model is recovered, no zombie, no leaked /dev/shm region, no process left after SIGTERM.
Loopback only; every process it starts is stopped by pid."""

from __future__ import annotations

from optistop.reliability.chaos import TARGETS, run_chaos, summary

KILLED = ("stage_small", "quality_predictor", "cascade")   # one of each kind: stage, predictor, cascade


def test_every_backend_killed_in_turn_heals(tmp_path, tiny_dir) -> None:
    report = run_chaos(rounds=1, concurrency=3, timeout_s=20.0, settle_s=0.5, log_path=tmp_path / "serve.log",
                       targets=KILLED, load_models=TARGETS)   # no streaming variants: none is killed
    print(summary(report))
    assert report.ok, summary(report) + f"\nserve log: {tmp_path / 'serve.log'}"
    assert [k.model for k in report.kills] == list(KILLED)
    stages = [k for k in report.kills if k.model.startswith("stage_")]
    assert all(k.failed == 0 for k in stages), "a dead stage must be degraded past, not fail requests"
    assert sum(k.degraded for k in stages) > 0, "killing stages under load should produce degraded answers"
