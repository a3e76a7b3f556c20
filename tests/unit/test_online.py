"""Online threshold learning: losses by hand, regret behaviour, curve fits."""

from __future__ import annotations

import numpy as np
import pytest

from optistop.offline.online import fit_curves, regret_experiment, rule_outcomes, stream_regret


def test_rule_outcomes_by_hand() -> None:
    # two stages, costs 1 / 10, lambda 10: scale = 21
    P = np.array([[0.9, 0.5], [0.2, 0.5]])
    correct = np.array([[1, 1], [0, 1]], bool)
    rules, loss, extra = rule_outcomes(P, correct, (1.0, 10.0), 10.0, grid=(0.5, 1.0))
    assert rules == [(0.5,), (1.0,)]
    # theta 0.5: prompt 0 stops at stage 0 (cost 1, right); prompt 1 escalates (cost 11, right)
    assert loss[:, 0] == pytest.approx([1 / 21, 11 / 21])
    # theta 1.0: both escalate
    assert loss[:, 1] == pytest.approx([11 / 21, 11 / 21])
    assert extra[:, 0] == pytest.approx([10 / 21, 0.0]) and extra[:, 1] == pytest.approx([0.0, 0.0])


def test_single_rule_has_zero_regret() -> None:
    loss = np.random.default_rng(0).random((50, 1))
    r, w = stream_regret(loss, np.zeros_like(loss), 200, "full", seed=1)
    assert np.allclose(r, 0.0) and w == pytest.approx([1.0])


def test_full_feedback_regret_is_sublinear() -> None:
    rng = np.random.default_rng(0)
    loss = np.clip(rng.random((500, 1)) * 0.2 + np.linspace(0.2, 0.8, 10)[None, :], 0, 1)
    r, w = stream_regret(loss, np.zeros_like(loss), 4000, "full", seed=2)
    assert r[-1] / 4000 < r[399] / 400          # average regret falls
    assert np.argmax(w) == 0                    # learns the best rule


def test_unknown_feedback() -> None:
    with pytest.raises(ValueError, match="valid: full, explore"):
        stream_regret(np.zeros((2, 2)), np.zeros((2, 2)), 5, "bandit", 0)


def test_fit_curves_recovers_the_constant() -> None:
    t = np.geomspace(50, 20000, 20)
    f = fit_curves(t, 0.3 * np.sqrt(t) * np.log(t))
    assert f["sqrtT_logT"]["c"] == pytest.approx(0.3) and f["sqrtT_logT"]["r2"] == pytest.approx(1.0)
    f = fit_curves(t, 2.0 * t ** 0.66)
    assert f["power"]["a"] == pytest.approx(0.66) and f["power"]["c"] == pytest.approx(2.0)


def test_experiment_is_deterministic_and_complete() -> None:
    rng = np.random.default_rng(1)
    P = rng.random((300, 3))
    correct = rng.random((300, 3)) < np.array([0.5, 0.7, 0.9])
    a = regret_experiment(P, correct, (1.0, 4.5, 10.0), 20.0, T=400, seeds=2, points=6)
    b = regret_experiment(P, correct, (1.0, 4.5, 10.0), 20.0, T=400, seeds=2, points=6)
    assert a == b
    assert a["K"] == 21 * 21 and set(a["feedback"]) == {"full", "explore"}
    assert len(a["feedback"]["explore"]["regret_mean"]) == len(a["T"])
