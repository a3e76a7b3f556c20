"""The sequential detectors and the audit budget (optistop.drift), shared by the server and the twin."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from optistop import drift as D
from optistop.offline import policy_fit as F
from optistop.offline.stream import run_stream


def test_cusum_steps_are_the_log_likelihood_ratio_and_it_crosses_once() -> None:
    c = D.Cusum(0.2, 0.2, h=2.0)
    assert math.isclose(c.up, math.log(0.4 / 0.2)) and math.isclose(c.down, math.log(0.6 / 0.8))
    assert not c.add(False) and c.s == 0.0                      # never below 0
    assert not c.add(True) and math.isclose(c.s, math.log(2))
    assert not c.add(True) and math.isclose(c.s, 2 * math.log(2))
    assert c.add(True) and c.s >= 2.0                           # 3 log 2 = 2.08: crosses here
    assert not c.add(True)                                      # reported once, while above
    c.rebase(0.5)
    assert c.s == 0.0 and c.n == 0 and math.isclose(c.up, math.log(0.7 / 0.5))


def test_budget_never_spends_more_than_it_earned_and_banks_for_a_boost() -> None:
    rng = random.Random(0)
    b = D.Budget(0.05, p_early=0.5, calm=0.5, bank=20)
    for i in range(1, 2001):
        b.earn()
        if rng.random() < 0.5:     # half the requests are accepted before the reference (p_early)
            b.draw(rng.random())
        assert b.spent <= 0.05 * i + 1e-9
    calm_rate = b.spent / 2000
    assert 0.018 <= calm_rate <= 0.032        # calm: half the rate, 0.025 (chance 0.5 x 0.05 / 0.5, on half)
    banked = b.credit
    assert banked >= 20                        # full bank
    b.boost = True
    spent = sum(b.draw(0.999) for _ in range(100))
    assert spent == int(banked)                # a boost audits everything the bank allows, no more


def arrays(n: int, rng: np.random.Generator, hard: bool) -> F.Arrays:
    """Stage 0 calibrated; hard traffic: stage 0 less sure and less often right (the cascade escalates more)."""
    conf0 = rng.uniform(0.0, 0.6 if hard else 1.0, n)
    right0 = rng.random(n) < conf0
    resp = np.column_stack([np.where(right0, 1, 2), np.ones(n, int)])
    return F.Arrays(np.column_stack([conf0, np.full(n, 0.99)]), np.column_stack([right0, np.ones(n, bool)]),
                    np.array([1.0, 10.0]), None, resp)


def test_twin_audits_only_requests_accepted_before_the_reference_and_warns_soon_after_a_shift() -> None:
    rng = np.random.default_rng(0)
    cal, pre, post = arrays(1000, rng, False), arrays(1000, rng, False), arrays(1000, rng, True)
    tr = F.Arrays(np.concatenate([pre.conf, post.conf]), np.concatenate([pre.correct, post.correct]),
                  pre.costs, None, np.concatenate([pre.resp, post.resp]))
    res = run_stream(cal, tr, 0.05, F.Criterion(), seed=1, on_drift="none", recal_audits=10_000)
    s = res["summary"]
    assert s["audits"] <= 0.05 * 2000
    # every audit is of a request served by stage 0 (the only one whose answer can differ): its audit
    # cost is the reference's 10; a request served by the reference ran everything and is never audited
    assert s["audit_cost"] * 2000 == 10.0 * s["audits"]
    assert s["first_mix_warning"] is not None and 1000 <= s["first_mix_warning"] < 1300, s["alarms"]
    quiet = run_stream(cal, pre, 0.05, F.Criterion(), seed=1, on_drift="none")["summary"]
    assert quiet["alarms"] == []


def test_drift_baselines_written_for_the_server_are_the_twins() -> None:
    from optistop import policy as K
    from optistop.pipeline.recalibrate import drift_baselines_of

    rng = np.random.default_rng(4)
    a = arrays(500, rng, False)
    rule = K.ThresholdRule(0, np.array([0.5]))   # stage 0 accepted when its confidence is >= 0.5
    b = drift_baselines_of(a, rule)
    early = a.conf[:, 0] >= 0.5
    assert b["early"] == pytest.approx(early.mean(), abs=1e-6)
    assert b["reach"] == pytest.approx(1 - early.mean(), abs=1e-6)
    assert b["disagree_early"] == pytest.approx((~a.correct[early, 0]).mean(), abs=1e-6)   # wrong = disagrees here


def test_replay_refuses_a_nonpositive_cusum_threshold(tmp_path, capsys) -> None:
    from optistop.offline.replay import main

    assert main(["--fit", str(tmp_path / "c.jsonl"), "--stream", str(tmp_path / "s.jsonl"), "--h-mix", "0"]) == 2
    assert "--h-mix is 0.0; it must be > 0" in capsys.readouterr().err
