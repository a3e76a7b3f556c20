"""The offline twin (optistop.offline.stream): a designed shift must raise the alarm, the recalibration must
restore quality, the cost must count audits; and audit logs become calibration rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optistop.offline import policy_fit as F
from optistop.offline.replay import main as replay_main
from optistop.offline.stream import build_shift, run_stream
from optistop.pipeline.recalibrate import records_from_audit

COSTS = np.array([1.0, 10.0])


def arrays(n: int, rng: np.random.Generator, shifted: bool) -> F.Arrays:
    """Stage 0's confidence is calibrated before the shift; after it, stage 0 looks sure (0.8-1) and is
    right 20% of the time (the predictor's view of the traffic is wrong). Stage 1 is always right."""
    conf0 = rng.uniform(0.8, 1.0, n) if shifted else rng.uniform(0.0, 1.0, n)
    right0 = rng.random(n) < (0.2 if shifted else conf0)
    conf = np.column_stack([conf0, np.full(n, 0.99)])
    correct = np.column_stack([right0, np.ones(n, bool)])
    return F.Arrays(conf, correct, COSTS)


def test_designed_shift_raises_the_alarm_and_recalibration_restores_quality() -> None:
    rng = np.random.default_rng(0)
    cal = arrays(400, rng, False)
    pre, post = arrays(500, rng, False), arrays(1500, rng, True)
    tr = F.Arrays(np.concatenate([pre.conf, post.conf]), np.concatenate([pre.correct, post.correct]), COSTS)
    res = run_stream(cal, tr, 0.05, F.Criterion(), seed=1, recal_audits=40)
    s = res["summary"]
    assert s["alarms"] and 500 <= s["alarms"][0] < 800, s["alarms"]       # after the shift, soon
    assert s["recalibrated_at"] and s["quality_rel_after_recal"] >= 0.945
    # the cost counts every stage each request ran plus what its audit ran: recompute from the windows
    assert len(res["windows"]) == 20 and all({"quality_rel", "cost", "alarm"} <= set(w) for w in res["windows"])
    assert sum(w["alarm"] for w in res["windows"]) >= 1
    total = sum(w["cost"] * (w["end"] - w["start"]) for w in res["windows"]) / 2000
    assert total == pytest.approx(s["cost"], abs=1e-4) and s["audit_cost"] > 0
    assert abs(s["audits"] / 2000 - 0.05) < 0.015


def test_no_alarm_without_a_shift() -> None:
    rng = np.random.default_rng(3)
    res = run_stream(arrays(400, rng, False), arrays(1500, rng, False), 0.05, F.Criterion(), seed=2)
    assert res["summary"]["alarms"] == []


def test_replay_stream_cli_writes_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)

    def write(path: Path, a: F.Arrays) -> None:
        path.write_text("".join(json.dumps({"id": str(i), "stages": [
            {"model": f"m{k}", "cost": float(COSTS[k]), "correct": bool(a.correct[i, k]),
             "confidence": float(a.conf[i, k])} for k in range(2)]}) + "\n" for i in range(len(a.conf))))

    write(tmp_path / "cal.jsonl", arrays(300, rng, False))
    write(tmp_path / "tr.jsonl", arrays(250, rng, False))
    out = tmp_path / "twin.json"
    assert replay_main(["--fit", str(tmp_path / "cal.jsonl"), "--stream", str(tmp_path / "tr.jsonl"),
                        "--audit", "0.05", "--out", str(out)]) == 0
    wins = json.loads(out.read_text())["windows"]
    assert [w["end"] for w in wins] == [100, 200, 250]
    assert replay_main(["--fit", str(tmp_path / "cal.jsonl"), "--stream", str(tmp_path / "tr.jsonl"),
                        "--audit", "1.5"]) == 2


def test_shift_builder_puts_easy_subjects_first() -> None:
    recs = [{"id": f"{s}/{i}", "meta": [f"subject={s}"],
             "stages": [{"correct": (i % 10) < acc}, {"correct": True}]}
            for s, acc in (("easy", 9), ("mid", 6), ("hard", 2)) for i in range(100)]
    cal, stream, how = build_shift(recs, easy_share=0.34, pre=20)
    assert how["easy_subjects"] == ["easy"] and how["hard_subjects"] == ["mid", "hard"]
    assert {r["id"].split("/")[0] for r in cal} == {"easy"} and len(cal) == 50
    assert {r["id"].split("/")[0] for r in stream[:20]} == {"easy"}
    assert {r["id"].split("/")[0] for r in stream[20:]} == {"mid", "hard"} and len(stream) == 220


def test_audit_records_become_calibration_rows(tmp_path: Path) -> None:
    base = {"stages": ["s", "l"], "costs": [1.0, 10.0], "served_stage": 0, "reference_stage": 1,
            "cost_served": 1.0, "cost_audit": 10.0}
    log = tmp_path / "audit.jsonl"
    log.write_text("\n".join(json.dumps({**base, **r}) for r in (
        {"answers": ["7", "7"], "confidences": [0.9, 0.8], "agree": True},
        {"answers": ["6", "7"], "confidences": [0.4, 0.8], "agree": False},
        {"answers": ["6", "7"], "confidences": [0.4, 0.8], "agree": False, "served_correct": True,
         "reference_correct": False},
        {"answers": ["6", "7"], "confidences": [None, 0.8], "agree": False})) + "\n")
    recs, skipped = records_from_audit(log)
    assert skipped == 1 and len(recs) == 3
    assert [[st["correct"] for st in r["stages"]] for r in recs] == [[True, True], [False, True], [True, True]]
    assert recs[0]["stages"][0]["confidence"] == 0.9 and recs[0]["stages"][1]["cost"] == 10.0


def test_the_twin_measures_against_the_criterions_reference_stage() -> None:
    """A third stage dearer and worse than the second (a ladder that is not monotone): the reference is
    stage 1 (the best), so the twin's delivered quality, its baselines and the cheapest adequate stage are
    read against stage 1, as the server's audits are (not against the last stage, right 60% of the time)."""
    from optistop.offline.stream import baselines
    from optistop.policy import FixedRule

    rng = np.random.default_rng(4)

    def three(n: int) -> F.Arrays:
        a = arrays(n, rng, False)
        last = rng.random(n) < 0.6
        return F.Arrays(np.column_stack([a.conf, np.full(n, 0.9)]), np.column_stack([a.correct, last]),
                        np.array([1.0, 10.0, 20.0]))

    cal, tr = three(400), three(1000)
    s = run_stream(cal, tr, 0.05, F.Criterion(), seed=1)["summary"]
    assert s["reference_stage"] == 1 and s["cheapest_adequate_stage_cost"] == 10.0
    assert 0.945 <= s["quality_rel"] <= 1.0      # of stage 1's accuracy (1.0); against the last it is ~1.6
    assert baselines(tr, FixedRule(1), 1) == {"reach": 1.0, "early": 0.0, "disagree_early": 0.0}
    b = baselines(tr, FixedRule(2), 1)
    assert b["early"] == 1.0 and b["disagree_early"] == pytest.approx(1 - tr.correct[:, 2].mean())
