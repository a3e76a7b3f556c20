"""Report: `make report` end to end on small synthetic data, deterministic reruns, the served rule first,
missing data sets reported with where to get them (never a crash)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optistop import ROOT
from optistop.report import build as report
from tests.unit.test_replay import synthetic


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("report")
    tiny = tmp / "tiny.jsonl"
    recs = synthetic(360, seed=3)
    for i, r in enumerate(recs):   # "fit" rows trained the predictor: the report must leave them out
        r["predictor_role"] = ("fit", "calibration", "test")[i % 3]
    tiny.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    args = ["--tiny", str(tiny), "--routellm", str(tmp / "none"), "--mmlupro", str(tmp / "none"),
            "--cache", str(tmp / "cache"), "--seeds", "2", "--small", "60", "--draws", "3", "--jobs", "1"]
    outs = []
    for run in ("a", "b"):
        out = tmp / run
        assert report.main([*args, "--out", str(out)]) == 0
        outs.append(out)
    return outs[0], outs[1]


def test_end_to_end_and_deterministic(built: tuple[Path, Path]) -> None:
    a, b = built
    files = sorted(p.name for p in a.iterdir())
    assert {"report.md", "summary.json", "cost_quality_tiny.png", "small_calibration.png"} <= set(files)
    for name in files:   # identical bytes, figures included
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    s = json.loads((a / "summary.json").read_text())
    t = s["datasets"]["tiny"]
    assert t["n"] == 240   # calibration + test roles only
    acc = t["acceptance"]
    # the miss rate is the share of seeds under the quality target, which the per-seed flags count too
    assert acc["seeds"] == 2 and acc["miss_rate"] == 1 - acc["seeds_passing"]["quality"] / 2
    assert acc["quality_min"] <= acc["quality_mean"]
    assert acc["pass"]["quality"] == (acc["quality_mean"] >= s["tolerance"])
    assert set(acc["pass"]) == {"quality", "cheapest_stage", "router", "hindsight"}
    assert {"served", "router", "paper", "random", "fixed:0"} <= set(t["candidates"])
    assert "p" in t["candidates"]["router"]["cost_vs_served"]
    assert t["hindsight_curve"] and t["small"]["60"]["seeds"] == 3
    assert [p[0] for p in t["served_curve"]] == [0.85, 0.9, 0.95, 0.98]
    assert t["small"]["60"]["ratio_to_hindsight"] == pytest.approx(t["small"]["60"]["cost"]
                                                                   / t["small"]["60"]["hindsight_cost"])
    # the yardsticks: the population's own cascade is tuned on the evaluated prompts too, so it is never
    # far above their hindsight; at 60 prompts the promise costs more than the hindsight cascade
    assert 0.8 < t["small"]["60"]["oracle_ratio"] < 1.5 and t["small"]["60"]["price_x_hindsight"] >= 1.0 - 1e-9


def test_leads_with_served_rule(built: tuple[Path, Path]) -> None:
    md = (built[0] / "report.md").read_text()
    first = next(line for line in md.splitlines() if line.startswith("## "))
    assert first == "## The rule the server runs"
    srv = json.loads((built[0] / "summary.json").read_text())["served"]
    committed = json.loads((ROOT / "model_repository" / "quality_predictor" / "1" / "policy.json").read_text())
    # the committed artifact: its policy is named right under the heading
    assert srv["operating"]["policy"] == committed["operating"]["policy"]
    assert f"`{committed['operating']['policy']}`" in md.split("## Acceptance")[0]
    assert "## Where it falls short" in md


def test_missing_data_sets_say_where(built: tuple[Path, Path]) -> None:
    s = json.loads((built[0] / "summary.json").read_text())
    md = (built[0] / "report.md").read_text()
    for k in ("routellm_mmlu", "routellm_gsm8k", "mmlupro_qwen", "mmlupro_llama"):
        assert "missing" in s["datasets"][k]
    assert "RouteLLM data not found" in md and "MMLU-Pro data not found" in md


def test_render_only_reproduces(built: tuple[Path, Path], tmp_path: Path) -> None:
    a = built[0]
    (tmp_path / "summary.json").write_bytes((a / "summary.json").read_bytes())
    assert report.main(["--out", str(tmp_path), "--render-only"]) == 0
    assert (tmp_path / "report.md").read_text() == (a / "report.md").read_text()
