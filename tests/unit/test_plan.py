"""optistop plan: replicas per stage from a stage mix and per-replica throughput, on hand-worked numbers."""

from __future__ import annotations

import dataclasses

import pytest

from optistop.perf.plan import bench_figures, main, plan, replay_mix
from optistop.spec import load_spec

SPEC = load_spec()


def test_replicas_on_hand_worked_numbers() -> None:
    # 100 req/s; small runs on all of them, medium on 30%, large on 10%; at 50% utilisation a small replica
    # takes 25 of its 50 req/s -> 4; medium 30 / (20 x 0.5) = 3; large 10 / (100 x 0.5) = 0.2 -> at least 1
    rows = plan(100, [1.0, 0.3, 0.1], [50, 20, 100], SPEC, utilisation=0.5)
    assert [r.replicas for r in rows] == [4, 3, 1]
    assert [r.load for r in rows] == pytest.approx([100, 30, 10])


def test_gpus_are_replicas_times_tp() -> None:
    gpu = dataclasses.replace(SPEC, stages=tuple(dataclasses.replace(s, tp_size=t, gpu_ids=tuple(range(t)))
                                                 for s, t in zip(SPEC.stages, (1, 2, 4))))
    rows = plan(10, [1.0, 0.5, 0.2], [5, 2, 1], gpu, utilisation=1.0)
    assert [(r.replicas, r.gpus) for r in rows] == [(2, 2), (3, 6), (2, 8)]


def test_committed_figures_are_read() -> None:
    shares, tput = bench_figures(SPEC.source.parent / "bench" / "results.json")
    assert len(shares) == len(tput) == 3 and tput[0] > tput[2] > 0  # the small stage serves the most
    mix = replay_mix(SPEC.source.parent / "reports" / "summary.json")   # the served rule's stage mix
    assert len(mix) == 3 and all(0 < x <= 1 for x in mix) and sum(mix) >= 1  # every prompt runs a stage


def test_cli_table_and_bad_input(capsys) -> None:
    assert main(["--rate", "200"]) == 0
    out = capsys.readouterr().out
    assert "| small |" in out and "| total |" in out
    assert main(["--rate", "10", "--throughput", "small=1,huge=2"]) == 2
    assert "--throughput needs one value per stage (small, medium, large)" in capsys.readouterr().err
