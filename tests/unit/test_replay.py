"""Offline replay: checked input, cross-fitted protocols, the four conditions, the CLI, on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optistop.offline import policy_fit as F
from optistop.offline.operating import ReplayInputError, arrays_from_records
from optistop.offline.replay import main, run
from optistop.offline.replay_files import load
from optistop.policy_artifact import load_policy
from tests.synthetic import latent

COSTS = (1.0, 4.5, 10.0)


def synthetic(n: int = 400, seed: int = 0, with_conf: bool = True) -> list[dict]:
    """Replay records of tests.synthetic.latent (with confidences, or answer texts that carry the label)."""
    d, _, y, post, ex = latent(n, seed)
    recs = []
    for i in range(n):
        stages = []
        for k in range(3):
            s = {"model": f"m{k}", "cost": COSTS[k], "correct": bool(y[i, k])}
            if with_conf:
                s |= {"confidence": float(post[i, k]), "ex_ante": float(ex[i, k])}
            else:
                s["response"] = f"the answer is {int(y[i, k]) * 7 + k}" + " ok" * int(y[i, k])
            stages.append(s)
        recs.append({"id": str(i), "prompt": "add " + " ".join("1" * int(abs(d[i]) * 3 + 1)), "stages": stages})
    return recs


def _write(tmp_path: Path, recs: list[dict], name: str = "r.jsonl") -> Path:
    f = tmp_path / name
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return f


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("confidence", 1.5, "stages[1].confidence: 1.5 is not a probability in [0, 1]"),
    ("confidence", float("nan"), "stages[1].confidence: nan is not a probability"),
    ("confidence", -3.2, "log-probabilities"),
    ("cost", 7.0, "stages[1].cost: 7.0 differs from 4.5"),
    ("correct", None, "stages[1].correct: missing"),
])
def test_bad_input_names_the_line_and_field(tmp_path: Path, field: str, value: object, needle: str) -> None:
    recs = synthetic(20)
    if value is None:
        del recs[6]["stages"][1][field]
    else:
        recs[6]["stages"][1][field] = value
    with pytest.raises(ReplayInputError) as info:
        load(_write(tmp_path, recs))
    assert ":7: " in str(info.value) and needle in str(info.value)


def test_inconsistent_stage_counts_fail(tmp_path: Path) -> None:
    recs = synthetic(10)
    recs[3]["stages"] = recs[3]["stages"][:2]
    with pytest.raises(ReplayInputError, match=":4: stages: 2 stages, expected 3"):
        load(_write(tmp_path, recs))


def test_cross_fitted_run_meets_the_four_conditions() -> None:
    a = arrays_from_records(synthetic(1500, seed=1))
    res = run(a, seeds=2, crit=F.Criterion())
    for row in res["kfold"]:
        c = row["conditions"]
        assert c["meets_quality"] and c["le_cheapest_stage"] and c["le_router"], c
        assert c["cost"] <= 1.25 * c["hindsight_cost"]
    pol = res["kfold"][0]["policies"]
    assert pol["fixed:2"]["quality_rel"] == pytest.approx(1.0) and pol["fixed:2"]["cost"] == pytest.approx(10.0)
    assert pol["served"]["cost"] < pol["fixed:2"]["cost"]


def test_small_protocol_serves_the_population_cascade_beside_the_procedure() -> None:
    # the yardstick of the small-data table: the whole set's own 95% hindsight cascade on each draw's
    # evaluated prompts. By hand on two stages: stage 0 is right exactly on the first 700 prompts, with
    # confidence 0.9 there and 0.2 elsewhere; stage 1 is always right. The cheapest cascade at 95% stops at
    # stage 0 on exactly the confident (right) prompts, so on any evaluated subset it is as good as stage 1
    # at cost 1 + 10 x (its share of the other 300)
    n = 1000
    conf = np.column_stack([np.r_[np.full(700, 0.9), np.full(300, 0.2)], np.full(n, 0.5)])
    correct = np.column_stack([np.arange(n) < 700, np.ones(n, bool)])
    a = F.Arrays(conf, correct, np.array([1.0, 10.0]))
    res = run(a, seeds=0, crit=F.Criterion(), small=[200], draws=2)
    for s, row in enumerate(res["small"]["200"]):
        ev = np.random.default_rng(2000 + s).permutation(n)[200:]    # the draw's evaluated prompts
        assert row["oracle_cost"] == pytest.approx(1 + 10 * np.mean(ev >= 700), abs=1e-6)
        assert row["oracle_meets"]


def test_text_verifier_when_no_confidences(tmp_path: Path) -> None:
    a = load(_write(tmp_path, synthetic(300, with_conf=False)))
    assert a.conf.shape == (300, 3) and np.all((a.conf >= 0) & (a.conf <= 1))
    from optistop.offline.stats import auroc
    assert auroc(a.correct[:, 0], a.conf[:, 0]) > 0.8   # the answer text carries the label here


def test_fit_eval_without_confidences_scores_the_traffic_with_the_calibration_verifier(tmp_path: Path) -> None:
    """--fit/--eval (and --stream) files without confidences: one verifier, fitted on the calibration file,
    scores both, as a deployment's predictor would. The traffic's confidences therefore do not move when
    its labels do (a verifier fitted per file learnt them from the labels the replay judges them by, and
    put the two files on different scales). One file with confidences, one without: refused, one line."""
    from optistop.offline.replay_files import load_pair

    cal = _write(tmp_path, synthetic(300, seed=2, with_conf=False), "cal.jsonl")
    traffic = synthetic(300, seed=3, with_conf=False)
    flipped = json.loads(json.dumps(traffic))
    for r in flipped:
        for st in r["stages"]:
            st["correct"] = not st["correct"]
    c1, t1 = load_pair(cal, _write(tmp_path, traffic, "t.jsonl"))
    c2, t2 = load_pair(cal, _write(tmp_path, flipped, "flipped.jsonl"))
    assert np.array_equal(c1.conf, c2.conf) and np.array_equal(t1.conf, t2.conf)
    assert not np.array_equal(t1.correct, t2.correct)
    from optistop.offline.stats import auroc
    assert auroc(t1.correct[:, 0], t1.conf[:, 0]) > 0.8     # the calibration verifier still reads the text
    with pytest.raises(ReplayInputError, match="t.jsonl lacks a stage confidence that .*with.jsonl has"):
        load_pair(_write(tmp_path, synthetic(100, seed=4), "with.jsonl"), tmp_path / "t.jsonl")


def test_cli_fit_eval_and_artifact(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # the command's plumbing, not the fit's quality (test above): small files keep it quick
    fit = _write(tmp_path, synthetic(240, seed=2), "fit.jsonl")
    ev = _write(tmp_path, synthetic(240, seed=3), "ev.jsonl")
    assert main(["--fit", str(fit), "--eval", str(ev)]) == 0
    assert "fit fit.jsonl -> eval ev.jsonl" in capsys.readouterr().out
    art = tmp_path / "policy.json"
    assert main([str(fit), "--artifact", str(art), "--out", str(tmp_path / "res.json")]) == 0
    book = load_policy(art)
    assert book.n == 3 and json.loads((tmp_path / "res.json").read_text())["kfold"][0]["conditions"]
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    # the small-data line prints what issue 28 bounds: cost over the hindsight cascade of the evaluated prompts
    capsys.readouterr()
    assert main([str(fit), "--small", "150", "--draws", "2", "--out", str(tmp_path / "small.json")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("fit on 150 prompts"))
    rows = json.loads((tmp_path / "small.json").read_text())["small"]["150"]
    ratio = np.mean([r["cost"] for r in rows]) / np.mean([r["hindsight_cost"] for r in rows])
    assert f"({ratio:.3f} x the hindsight cascade" in line and line.endswith("over 2 draws")
