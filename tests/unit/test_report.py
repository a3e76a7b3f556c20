"""Report: frontier and comparisons by hand, sidecar reading, and `make report` end to end on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optistop.report import build as report
from tests.unit.test_replay import synthetic
from tests.unit.test_routellm import fake_folder


def test_frontier_includes_mixtures() -> None:
    # (cost, quality): (2, 0.5) lies below the segment (1, 0.4)-(3, 0.9): not on the frontier
    qs, cs = report.frontier([(1.0, 0.4), (2.0, 0.5), (3.0, 0.9), (4.0, 0.85)])
    assert qs.tolist() == [0.4, 0.9] and cs.tolist() == [1.0, 3.0]
    assert report.cost_for_quality((qs, cs), 0.65) == pytest.approx(2.0)
    assert report.cost_for_quality((qs, cs), 0.95) is None
    assert report.cost_for_quality((qs, cs), 0.1) == pytest.approx(1.0)


def test_dominance_and_cpt() -> None:
    res = {"sweep": {"optimal": [{"lambda": 1, "cost": 1.0, "quality_rel": 0.8, "strong_share": 0.0},
                                 {"lambda": 2, "cost": 5.0, "quality_rel": 1.0, "strong_share": 0.4}],
                     "paper": [{"lambda": 1, "cost": 4.0, "quality_rel": 0.9, "strong_share": 0.3},
                               {"lambda": 2, "cost": 2.0, "quality_rel": 0.82, "strong_share": 0.2}]},
           "policies": {"paper": {"cost": 4.0, "quality_rel": 0.9}}, "accuracy": [0.8, 1.0], "target": 0.95}
    d = report.dominance(res)
    # optimal's frontier at 0.9 costs 3.0 < 4.0; at 0.82 costs 1.4 < 2.0
    assert d["paper_points_where_optimal_costs_more"] == 0 and d["paper_points_compared"] == 2
    assert d["optimal_cost_at_paper_operating_quality"] == pytest.approx(3.0)
    c = report.cpt(res, "optimal")
    assert c["cpt50"] == 0.4 and c["pgr_of_target"] == pytest.approx(0.75)


def test_table_8_1_pairs_prompts() -> None:
    pp = {"optimal": {"cost": np.array([1.0, 11.0, 1.0, 11.0]), "quality": np.array([1.0, 1.0, 0.0, 1.0])},
          "fixed:1": {"cost": np.full(4, 10.0), "quality": np.array([1.0, 1.0, 1.0, 1.0])}}
    (row,) = report.table_8_1(pp)
    assert row["baseline"] == "fixed:1" and row["speedup"] == pytest.approx(10.0 / 6.0)
    assert row["cost_test"]["mean_diff"] == pytest.approx(-4.0)


def test_read_sidecar(tmp_path: Path) -> None:
    assert report.read_sidecar(tmp_path) is None
    (tmp_path / "model.json").write_text(json.dumps({"metrics": {"per_stage": {}}, "arch": "mlp32"}))
    assert report.read_sidecar(tmp_path)["arch"] == "mlp32"


@pytest.mark.slow
def test_make_report_end_to_end_and_deterministic(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.jsonl"
    recs = synthetic(240)
    for r in recs:
        for k, s in enumerate(r["stages"]):
            s["latency_ms"] = [10.0, 15.0, 25.0][k]
    tiny.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    data = fake_folder(tmp_path / "routellm")
    outs = []
    for i in range(2):
        out = tmp_path / f"rep{i}"
        argv = ["--out", str(out), "--routellm", str(data), "--tiny", str(tiny), "--jobs", "1",
                "--regret-T", "300", "--regret-seeds", "2"]
        assert report.main(argv) == 0
        outs.append(out)
    a, b = outs
    for name in ("summary.json", "report.md", "pareto_tiny.png", "regret.png", "thresholds.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    s = json.loads((a / "summary.json").read_text())
    for ds in ("tiny", "tiny_latency_cost", "routellm_mmlu", "routellm_gsm8k"):
        pol = s["datasets"][ds]["policies"]
        for p in ("optimal", "paper", "fixed:0", "random", "oracle"):
            assert {"quality_rel", "cost", "strong_share", "cost_at_target"} <= set(pol[p])
        assert "at_target" in s["datasets"][ds]["oracle"]
    assert s["datasets"]["tiny_latency_cost"]["costs"] == [1.0, 1.5, 2.5]
    assert set(s["regret"]) == {"tiny", "routellm_mmlu", "routellm_gsm8k"}
    md = (a / "report.md").read_text()
    assert md.index("## 1. In plain words") < md.index("## 2.")


def test_report_says_when_tiny_is_missing(tmp_path: Path) -> None:
    data = fake_folder(tmp_path / "routellm", n_mmlu=40, n_gsm=30)
    out = tmp_path / "rep"
    assert report.main(["--out", str(out), "--routellm", str(data), "--tiny", str(tmp_path / "none.jsonl"),
                        "--jobs", "1", "--regret-T", "200", "--regret-seeds", "1"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert "missing" in s["datasets"]["tiny"]
    assert "tiny: not measured" in (out / "report.md").read_text()


def test_bootstrap_gap_sees_a_clear_difference() -> None:
    # 200 prompts, 3 lambdas; "optimal" reaches every quality at half the paper's cost
    rng = np.random.default_rng(0)
    q = rng.random((3, 200)) < np.array([[0.6], [0.8], [1.0]])
    sw = {"optimal": {"cost": np.array([[1.0] * 200, [2.0] * 200, [3.0] * 200]), "quality": q},
          "paper": {"cost": np.array([[2.0] * 200, [4.0] * 200, [6.0] * 200]), "quality": q},
          "_last": np.ones(200)}
    b = report.bootstrap_gap(sw, 0.8, seed=1, reps=50)
    assert b["diff"] < 0 and b["ci95"][1] < 0 and b["share_of_reps_optimal_cheaper"] == 1.0
