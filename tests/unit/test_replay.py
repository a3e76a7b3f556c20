"""Offline replay: vectorised rules agree with the serving policies; protocol and CLI on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optistop.offline import simulate as sim
from optistop.offline.replay import evaluate, from_records, main, public
from optistop.policy import OptimalPolicy, PaperPolicy

COSTS = (1.0, 4.5, 10.0)


def synthetic(n: int = 400, seed: int = 0, with_conf: bool = True) -> list[dict]:
    """Latent difficulty; stage k is right with prob sigmoid(skill_k - d); noisy but informative scores."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 1.5, n)
    skill = np.array([-0.5, 0.8, 1.8])
    pr = 1 / (1 + np.exp(-(skill[None, :] - d[:, None])))
    y = rng.random(pr.shape) < pr
    post = np.clip(0.6 * pr + 0.4 * y + rng.normal(0, 0.1, pr.shape), 0.01, 0.99)
    ex = np.clip(pr + rng.normal(0, 0.1, pr.shape), 0.01, 0.99)
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


def _scalar_run(pol, p: np.ndarray, r: np.ndarray, lam: float) -> tuple[list[int], int]:
    run: list[tuple[int, float]] = []
    dec = pol.decide(run, list(r), COSTS, lam)
    while not dec.stop:
        run.append((dec.next_stage, float(p[dec.next_stage])))
        dec = pol.decide(run, list(r), COSTS, lam)
    return [k for k, _ in run], dec.answer_stage


@pytest.mark.parametrize("lam", [0.5, 5.0, 20.0, 80.0, 1000.0])
@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_vectorised_optimal_matches_serving_policy(lam: float, s: float) -> None:
    rng = np.random.default_rng(int(lam * 10 + s * 100))
    P, R = rng.random((150, 3)), rng.random((150, 3))
    out = sim.optimal(P, R, COSTS, lam, s)
    pol = OptimalPolicy(s)
    for i in range(len(P)):
        ran, ans = _scalar_run(pol, P[i], R[i], lam)
        assert sorted(ran) == list(np.flatnonzero(out.ran[i])), i
        assert ans == out.answer[i]


@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_vectorised_paper_matches_serving_policy(lam: float) -> None:
    P = np.random.default_rng(3).random((200, 3))
    out = sim.paper(P, COSTS, lam)
    for i in range(len(P)):
        ran, ans = _scalar_run(PaperPolicy(), P[i], P[i], lam)
        assert ran == list(np.flatnonzero(out.ran[i])) and ans == out.answer[i]


def test_oracles_by_hand() -> None:
    correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], bool)
    o = sim.oracle(correct)
    assert o.answer.tolist() == [0, 1, 2, 0]
    assert o.cost(COSTS).tolist() == [1.0, 4.5, 10.0, 1.0]
    # target 3/4 accuracy: stage 0 gets 1 of 4, needs 2 more moves, the cheapest first (prompt 1, then 2)
    o = sim.oracle_at_target(correct, COSTS, 0.75)
    assert o.answer.tolist() == [0, 1, 2, 0]
    o = sim.oracle_at_target(correct, COSTS, 0.5)
    assert o.answer.tolist() == [0, 1, 0, 0]


def test_evaluate_with_given_confidences() -> None:
    res = evaluate(from_records(synthetic()), seed=0, folds=3)
    pol = res["policies"]
    assert pol["fixed:2"]["quality_rel"] == pytest.approx(1.0)
    assert pol["fixed:0"]["cost"] == pytest.approx(1.0) and pol["fixed:2"]["strong_share"] == 1.0
    assert pol["oracle"]["quality_rel"] >= 1.0
    opt = pol["optimal"]
    assert opt["reached_target_on_training"] and opt["cost"] < 10.0
    assert set(opt) >= {"quality_rel", "cost", "strong_share", "cost_at_target", "stage_dist"}
    assert sum(opt["stage_dist"]) == pytest.approx(1.0)
    # every prompt is held out once: per-prompt arrays cover the whole set
    assert len(res["_arrays"]["per_prompt"]["optimal"]["cost"]) == 400
    json.dumps(public(res))          # JSON-able


def test_evaluate_fits_a_predictor_when_no_confidences() -> None:
    res = evaluate(from_records(synthetic(300, with_conf=False)), seed=1, folds=3)
    assert res["predictor"][0]["post_hoc"]["auroc"] > 0.9     # the response gives the label away here
    assert res["policies"]["optimal"]["quality_rel"] > 0.9


def test_evaluate_is_deterministic() -> None:
    data = from_records(synthetic(200))
    a, b = public(evaluate(data, seed=4, folds=3)), public(evaluate(data, seed=4, folds=3))
    assert json.dumps(a) == json.dumps(b)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in synthetic(120)) + "\n")
    assert main([str(f), "--folds", "2", "--out", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["n"] == 120 and "optimal" in out["policies"]
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "optistop replay:" in capsys.readouterr().err
    f.write_text(json.dumps({"id": "x", "stages": []}) + "\n")
    assert main([str(f)]) == 2
