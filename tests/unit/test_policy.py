"""Stopping rules: cases worked out by hand, and properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from optistop.policy import (
    Decision,
    OptimalPolicy,
    make_policy,
    optimal_thresholds,
    paper_threshold,
    paper_thresholds,
)

COSTS = (1.0, 4.5, 10.0)


# ---------------------------------------------------------------- paper, by hand

def test_paper_thresholds_by_hand() -> None:
    # (1 - 0.5 * 1/4.5) = 0.8889 and (1 - 0.5 * 4.5/10) = 0.775, divided by (1 + lambda) (ERRATA item 5)
    assert paper_threshold(0, 1.0, COSTS) == pytest.approx(0.8888889 / 2, abs=1e-6)
    assert paper_threshold(1, 1.0, COSTS) == pytest.approx(0.775 / 2)
    assert paper_threshold(0, 0.0, COSTS) == pytest.approx(0.8888889, abs=1e-6)
    th = paper_thresholds([0.1, 1.0, 10.0], COSTS)
    assert th.shape == (3, 2)
    assert (th[1:] < th[:-1]).all()          # inverted: falls as lambda rises


def test_paper_runs_in_order_and_last_stage_answers() -> None:
    pol = make_policy("paper", 3)
    assert pol.decide([], [], COSTS, 1.0) == Decision(False, 0, None, 1.0)
    d = pol.decide([(0, 0.40)], [], COSTS, 1.0)          # 0.40 < 0.444
    assert (d.stop, d.next_stage) == (False, 1) and d.threshold == pytest.approx(0.4444444, abs=1e-6)
    d = pol.decide([(0, 0.40), (1, 0.39)], [], COSTS, 1.0)   # 0.39 >= 0.3875
    assert (d.stop, d.answer_stage) == (True, 1) and d.threshold == pytest.approx(0.3875)
    d = pol.decide([(0, 0.0), (1, 0.0), (2, 0.0)], [], COSTS, 1.0)
    assert d == Decision(True, None, 2, 0.0)


# ---------------------------------------------------------------- optimal, by hand

def test_optimal_two_stage_matches_errata_rule() -> None:
    # s = 0: after the weak stage, stop iff p >= r_2 - c_2 / lambda = 0.9 - 10/20 = 0.4
    pol = OptimalPolicy()
    ex = (0.6, 0.9)
    assert pol.threshold(0, ex, (1.0, 10.0), 20.0) == pytest.approx(0.4, abs=1e-9)
    assert pol.threshold(0, ex, (1.0, 10.0), 100.0) == pytest.approx(0.8, abs=1e-9)
    d = pol.decide([(0, 0.6)], ex, (1.0, 10.0), 20.0)     # stop 20*0.4 = 8 <= 10 + 20*0.1 = 12
    assert (d.stop, d.answer_stage) == (True, 0)
    d = pol.decide([(0, 0.3)], ex, (1.0, 10.0), 20.0)     # stop 14 > 12
    assert (d.stop, d.next_stage) == (False, 1)
    # strong model not better than the weak answer: never worth paying for
    assert pol.threshold(0, (0.5, 0.3), (1.0, 10.0), 1e6) == pytest.approx(0.3 - 1e-5, abs=1e-9)


def test_optimal_skips_the_first_stage_when_it_is_hopeless() -> None:
    # run 0 first: 1 + min(100*0.8, 10 + 100*0.1) = 21 ; run 1 first: 10 + 100*0.1 = 20
    pol = make_policy("optimal", 2)
    d = pol.decide([], (0.2, 0.9), (1.0, 10.0), 100.0)
    assert (d.stop, d.next_stage) == (False, 1)
    d = pol.decide([], (0.3, 0.9), (1.0, 10.0), 100.0)    # 1 + min(70, 20) = 21 > 20: still skip
    assert d.next_stage == 1
    d = pol.decide([], (0.5, 0.9), (1.0, 10.0), 20.0)     # 1 + min(10, 12) = 11 < 10 + 2 = 12
    assert d.next_stage == 0


def test_optimal_three_stage_with_resolution_by_hand() -> None:
    # costs 1 / 4.5 / 10, r = (., 0.8, 0.9), s = 0.5, lambda = 20, best so far m = 0.5 after stage 0.
    # p_k takes {0, r, 1} with weights {s(1-r), 1-s, s r}.
    # run 2 now: 10 + 0.05*10 + 0.5*2 + 0.45*0 = 11.5
    # run 1 now: 4.5 + 0.1*V(.5) + 0.5*V(.8) + 0.4*0, V(.5) = min(10, 11.5) = 10,
    #            V(.8) = min(4, 10 + 0.05*4 + 0.5*2) = 4  ->  4.5 + 1 + 2 = 7.5 < stop 10: run stage 1
    pol = OptimalPolicy(resolution=0.5)
    ex = (0.5, 0.8, 0.9)
    d = pol.decide([(0, 0.5)], ex, COSTS, 20.0)
    assert (d.stop, d.next_stage) == (False, 1)
    # threshold: on m in [0.42, 0.8], continue = 6.5 + 2(1-m) vs stop 20(1-m) -> m* = 1 - 6.5/18
    assert d.threshold == pytest.approx(1 - 6.5 / 18, abs=1e-9)
    d = pol.decide([(0, 0.65)], ex, COSTS, 20.0)
    assert (d.stop, d.answer_stage) == (True, 0)


def test_optimal_returns_the_best_answer_so_far() -> None:
    pol = OptimalPolicy()
    d = pol.decide([(0, 0.7), (2, 0.4)], (0.5, 0.6, 0.9), COSTS, 50.0)
    assert d == Decision(True, None, 0, 0.0)               # last stage run: forced stop, best answer
    d = pol.decide([(0, 0.2), (1, 0.95)], (0.5, 0.8, 0.9), COSTS, 50.0)
    assert (d.stop, d.answer_stage) == (True, 1)


def test_optimal_threshold_helper_shape() -> None:
    th = optimal_thresholds([1.0, 10.0, 100.0], COSTS, (0.5, 0.8, 0.9), resolution=0.3)
    assert th.shape == (3, 2)
    assert (th[1:] >= th[:-1] - 1e-9).all()


# ---------------------------------------------------------------- baselines and errors

def test_fixed_and_random() -> None:
    pol = make_policy("fixed:2", 3)
    assert pol.decide([], [], COSTS, 1.0) == Decision(False, 2, None, 1.0)
    assert pol.decide([(2, 0.1)], [], COSTS, 1.0) == Decision(True, None, 2, 0.0)
    counts = [0, 0, 0]
    pol = make_policy("random", 3, seed=1)
    for _ in range(3000):
        run: list[tuple[int, float]] = []
        d = pol.decide(run, [], COSTS, 1.0)
        while not d.stop:
            run.append((d.next_stage, 0.5))
            d = pol.decide(run, [], COSTS, 1.0)
        counts[d.answer_stage] += 1
    assert all(900 < c < 1100 for c in counts)            # uniform stopping stage


@pytest.mark.parametrize("name,msg", [
    ("foo", r"^unknown policy 'foo'; valid: optimal, paper, fixed:0\.\.2, random$"),
    ("fixed:3", r"fixed:<k> needs k in 0\.\.2"),
    ("fixed:x", r"fixed:<k> needs k in 0\.\.2"),
    ("oracle", r"offline replay"),
])
def test_bad_policy_names(name: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        make_policy(name, 3)


# ---------------------------------------------------------------- properties

@st.composite
def cascades(draw: st.DrawFn) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    n = draw(st.integers(2, 4))
    steps = draw(st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n))
    costs = tuple(float(sum(steps[: i + 1])) for i in range(n))
    ex = tuple(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    s = draw(st.floats(0.0, 1.0))
    return costs, ex, s


@settings(max_examples=150, deadline=None)
@given(cascades(), st.floats(0.0, 500.0), st.floats(0.0, 500.0))
def test_optimal_thresholds_never_fall_as_lambda_rises(c: tuple, lam1: float, lam2: float) -> None:
    costs, ex, s = c
    lo, hi = sorted((lam1, lam2))
    pol = OptimalPolicy(s)
    for i in range(len(costs) - 1):
        assert pol.threshold(i, ex, costs, lo) <= pol.threshold(i, ex, costs, hi) + 1e-9


@settings(max_examples=150, deadline=None)
@given(cascades(), st.data())
def test_optimal_never_escalates_below_cheapest_escalation_cost(c: tuple, data: st.DataObject) -> None:
    costs, ex, s = c
    n = len(costs)
    last = data.draw(st.integers(0, n - 2))
    run = [(k, data.draw(st.floats(0.0, 1.0))) for k in range(last + 1)]
    cheapest = min(costs[last + 1:])
    lam = data.draw(st.floats(0.0, cheapest, exclude_max=True))
    d = OptimalPolicy(s).decide(run, ex, costs, lam)
    assert d.stop


@settings(max_examples=200, deadline=None)
@given(cascades(), st.data())
def test_optimal_with_perfect_confidences_matches_oracle(c: tuple, data: st.DataObject) -> None:
    costs, _, s = c
    n = len(costs)
    correct = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    lam = data.draw(st.floats(sum(costs) + 1e-3, 1e4))
    assume(lam > 0)
    pol = OptimalPolicy(s)
    ex = [float(y) for y in correct]
    run: list[tuple[int, float]] = []
    d = pol.decide(run, ex, costs, lam)
    while not d.stop:
        run.append((d.next_stage, float(correct[d.next_stage])))
        d = pol.decide(run, ex, costs, lam)
    paid = sum(costs[k] for k, _ in run)
    oracle = next((k for k in range(n) if correct[k]), 0)   # cheapest correct stage, else the cheapest
    assert paid == pytest.approx(costs[oracle])
    assert correct[d.answer_stage] == correct[oracle]
