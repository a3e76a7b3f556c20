"""The policy kernel on numbers worked out by hand, the artifact, and N = 1 vs N = many parity."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

from optistop import policy as K
from optistop.offline import policy_fit as F
from optistop.offline.operating import build_artifact
from optistop.policy_artifact import PolicyArtifactError, PolicyBook
from optistop.policy_cascade import CascadeRule
from tests.synthetic import latent

COSTS = np.array([1.0, 4.5, 10.0])
NAN = float("nan")


def synthetic_arrays(n: int = 600, seed: int = 0) -> F.Arrays:
    """tests.synthetic.latent as the fitter's arrays."""
    _, _, y, conf, ex = latent(n, seed)
    return F.Arrays(conf, y, COSTS.copy(), ex, None)


@functools.cache
def synthetic_built(lambdas: tuple[float, ...] = (0.5, 20.0, 1000.0)) -> tuple[dict, dict]:
    """(artifact, the choice that picked its operating point)."""
    return build_artifact(synthetic_arrays(), ["small", "medium", "large"], F.Criterion(), 0, lambdas)


@functools.cache
def synthetic_book(lambdas: tuple[float, ...] = (0.5, 20.0, 1000.0)) -> PolicyBook:
    art, _ = synthetic_built(lambdas)
    return PolicyBook(json.loads(json.dumps(art)))   # through JSON, as the server reads it


def state(*conf: float, ex: tuple[float, ...] | None = None) -> K.State:
    return K.State(np.array([conf], float), None if ex is None else np.array([ex], float), None)


def test_fixed_runs_its_stage_then_stops() -> None:
    rule = K.FixedRule(2)
    d = rule.decide(state(NAN, NAN, NAN))
    assert not d.stop[0] and d.next_stage[0] == 2
    d = rule.decide(state(NAN, NAN, 0.3))
    assert d.stop[0] and d.answer_stage[0] == 2


def test_paper_thresholds_by_hand() -> None:
    # lambda 1, costs 1/4.5/10: theta_0 = (1 - 0.5/4.5)/2 = 0.44444, theta_1 = (1 - 0.5 * 4.5/10)/2 = 0.3875
    rule = K.PaperRule(COSTS, 1.0, np.tile([1.0, 0.0], (3, 1)))
    d = rule.decide(K.State(np.array([[0.45, NAN, NAN], [0.44, NAN, NAN], [0.1, 0.39, NAN], [0.1, 0.38, NAN]])))
    assert d.stop.tolist() == [True, False, True, False]
    assert d.threshold == pytest.approx([0.44444, 0.44444, 0.3875, 0.3875], abs=1e-5)
    assert d.next_stage[1] == 1 and d.next_stage[3] == 2 and d.answer_stage[2] == 1


def hand_rule(lam: float) -> K.ModelRule:
    """Two stages (costs 1, 10), no ex-ante: P(stage 0 right | its conf c) = c, P(stage 1 right) = 0.9."""
    l9 = math.log(9.0)
    answer = {0: np.array([[0.0], [l9]]), 1: np.array([[0.0, 1.0, 0.0], [l9, 0.0, 0.0]]),
              2: np.array([[0.0, 0.0, 0.0], [l9, 0.0, 0.0]]), 3: np.zeros((2, 5))}
    cont = {0: {0: (np.array([0.0]), np.array([0.0]), 10.0), 1: (np.array([l9]), np.array([0.0]), 0.0)},
            1: {1: (np.array([l9, 0.0, 0.0]), np.array([0.0, 0.0, 0.0]), 0.0)}}
    return K.ModelRule(2, np.array([1.0, 10.0]), lam, False, False, answer, cont)


def test_backward_induction_by_hand() -> None:
    # After stage 0 with confidence 0.7: stop costs lam (1 - 0.7); going on costs 10 + lam (1 - 0.9).
    # lam = 20: 6 <= 12, stop; theta = 1 - 12/20 = 0.4. lam = 200: 60 > 30, run stage 1; theta = 0.85.
    for lam, stop, theta in ((20.0, True, 0.4), (200.0, False, 0.85)):
        d = hand_rule(lam).decide(state(0.7, NAN))
        assert bool(d.stop[0]) is stop and d.threshold[0] == pytest.approx(theta)
        assert (d.answer_stage[0] == 0) if stop else (d.next_stage[0] == 1)


def test_router_picks_argmin_cost_plus_lost_quality() -> None:
    # Before any stage: stage 0 costs 1 + lam * 0.5, stage 1 costs 10 + lam * 0.1: stage 1 iff lam > 22.5.
    for lam, k in ((20.0, 0), (25.0, 1)):
        rule = hand_rule(lam)
        rule.router_only = True
        ran, ans = K.simulate(rule, np.array([[0.3, 0.8]]))
        assert ans[0] == k and ran[0].tolist() == [k == 0, k == 1]


def test_simulate_on_many_equals_the_loop_on_one() -> None:
    """The replay (N = 600) and the served loop (N = 1, one stage at a time) make the same decisions."""
    a = synthetic_arrays()
    book = synthetic_book()
    for name, lam in (("optimal", 20.0), ("router", 20.0), ("paper", 1.0), ("optimal", 1000.0)):
        rule, _ = book.make(name, lam)
        ran, ans = K.simulate(rule, a.conf, a.ex_ante)
        for i in range(0, 600, 37):
            s = K.State(np.full((1, 3), NAN), a.ex_ante[i:i + 1], np.full((1, 3), -1))
            while True:
                d = rule.decide(s)
                if d.stop[0]:
                    break
                s.conf[0, d.next_stage[0]] = a.conf[i, d.next_stage[0]]
            assert d.answer_stage[0] == ans[i] and (~np.isnan(s.conf[0])).tolist() == ran[i].tolist()


def test_book_builds_each_rule_once_per_grid_point() -> None:
    """A served request looks its rule up: same policy and grid point, same object; decisions unchanged."""
    book = synthetic_book()
    a, _ = book.make("optimal", 20.0)
    b, _ = book.make("optimal", 21.0)   # nearest grid point is the same
    assert a is b and book.make("router", 20.0)[0] is not a and book.make("optimal", 1000.0)[0] is not a
    s = K.State(np.array([[0.7, NAN, NAN]]), synthetic_arrays().ex_ante[:1], np.full((1, 3), -1))
    first = a.decide(s)
    assert a.decide(s).stop.tolist() == first.stop.tolist()


def test_router_outcomes_at_every_lambda_equal_the_rule() -> None:
    """The one-pass router scoring that cross-fitting uses (141 lambdas) decides as the served rule."""
    a = synthetic_arrays()
    answer = synthetic_book().answer
    lams = F.router_lambdas(F.LAMBDAS)
    Q, C = F.router_outcomes(a, answer, lams)
    assert Q.shape == C.shape == (len(lams), len(a.conf))
    for i in range(0, len(lams), 7):
        q, c = F.outcome(F.fit_router(a, lams[i], answer), a)
        np.testing.assert_array_equal(Q[i], q)
        np.testing.assert_array_equal(C[i], c)
    assert C[0].mean() < C[-1].mean()          # lambda buys the dearer stages


def test_router_runs_at_the_exact_lambda() -> None:
    """The router needs no fitted continuation: a lambda between grid points is served as given (the
    operating point is certified on a finer router grid than the fitted-Q one), decides as the offline fit
    at that lambda, and is built once."""
    book, a = synthetic_book(), synthetic_arrays()
    lam = float(np.sqrt(book.grid[0][0] * book.grid[1][0]))       # halfway on a log scale
    rule, used = book.make("router", lam)
    assert used == lam == rule.lam and book.make("router", lam)[0] is rule
    off = F.fit_router(a, lam, book.answer)
    np.testing.assert_array_equal(F.outcome(rule, a)[1], F.outcome(off, a)[1])
    assert F.router_lambdas(F.LAMBDAS)[::F.ROUTER_REFINE] == F.LAMBDAS      # the fitted-Q grid, kept exact


@pytest.mark.parametrize("artifact", ["model_repository/quality_predictor/1/policy.json",
                                      "models/chat/predictor/policy.json"])
def test_one_prompt_path_decides_as_the_array_path(artifact: str) -> None:
    """decide_one (Python floats, the served N = 1) and the array path (the replay) agree on every decision
    of every rule of a committed artifact, on random histories; thresholds to rounding."""
    from optistop import ROOT
    from optistop.policy_artifact import load_policy

    book = load_policy(ROOT / artifact)
    rng = np.random.default_rng(0)
    n = book.n
    for name in ("optimal", "router"):
        for lam in (1.0, book.default_lambda, 200.0):
            rule, _ = book.make(name, lam)
            for _ in range(150):
                ran = rng.random(n) < 0.5
                conf = np.where(ran, rng.choice([0.0, 0.02, 0.5, 0.97, 1.0, rng.random()], n), NAN)
                resp = np.where(ran, rng.integers(0, 2, n), -1)
                ex = rng.random(n)
                two = K.State(np.repeat(conf[None], 2, 0), np.repeat(ex[None], 2, 0), np.repeat(resp[None], 2, 0))
                a, b = rule.decide_one(conf.tolist(), ex.tolist(), resp.tolist()), rule.decide(two)
                assert (a.stop, a.next_stage, a.answer_stage) == (b.stop[0], b.next_stage[0], b.answer_stage[0])
                assert a.threshold == pytest.approx(b.threshold[0], abs=1e-9, nan_ok=True)
                assert all(type(v) is t for v, t in zip(a, (bool, int, int, float)))   # Python scalars


def test_plan_follows_changes_to_the_continuation_models() -> None:
    """policy_fit fills ``cont`` while it simulates the rule: a decision after a change sees the change."""
    rule = hand_rule(20.0)
    assert rule.decide(state(0.7, NAN)).stop[0]             # stop: 6 <= 12 (test above)
    l9 = math.log(9.0)
    rule.cont[1] = {1: (np.array([l9, 0.0, 0.0]), np.array([0.0, 0.0, 0.0]), 0.0)}
    rule.costs = np.array([1.0, 1.0])                       # the plan reads costs when it is rebuilt
    rule.cont[1] = dict(rule.cont[1])                       # replaced: rebuilt with stage 1 at cost 1
    d = rule.decide(state(0.7, NAN))
    assert not d.stop[0] and d.next_stage[0] == 1           # 6 > 1 + 2


def test_lambda_buys_quality() -> None:
    a = synthetic_arrays()
    book = synthetic_book()
    (q_lo, c_lo), (q_hi, c_hi) = (F.outcome(book.make("optimal", lam)[0], a) for lam in (0.5, 1000.0))
    assert c_lo.mean() <= 1.0 + 1e-9 < c_hi.mean() and q_lo.mean() < q_hi.mean()


def test_operating_point_never_dearer_than_a_stage_that_meets_the_target() -> None:
    a = synthetic_arrays()
    a.correct[:, 0] = a.correct[:, 2]   # the small stage is as good as the large one
    ch = F.choose(a, F.Criterion(), seed=0)
    q, c = F.outcome(ch["rule"], a)
    assert c.mean() <= 1.0 + 1e-9 and q.mean() >= 0.95 * a.correct[:, 2].mean()


def test_book_names_defaults_and_errors() -> None:
    book = synthetic_book()
    assert book.make("optimal", 700.0)[1] == 1000.0        # nearest grid lambda on a log scale
    # no policy named: the operating point the calibration chose, deciding exactly as the chosen rule
    _, ch = synthetic_built()
    name, param = ch["choice"]
    served, lam = book.make(None, None)
    assert served.name == name.split(":")[0] and (name not in ("optimal", "router", "ante") or lam == param)
    a = synthetic_arrays()
    (q1, c1), (q2, c2) = F.outcome(served, a), F.outcome(ch["rule"], a)
    assert q1.tolist() == q2.tolist() and c1.tolist() == c2.tolist()
    with pytest.raises(ValueError, match="valid: optimal, router, ante, paper, fixed:0..2, random"):
        book.make("greedy", None)
    with pytest.raises(ValueError):
        book.make("fixed:3", None)
    with pytest.raises(PolicyArtifactError, match="recalibrate"):
        book.check_matches(["a", "b", "c"], [1.0, 4.5, 10.0], "policy.json")
    with pytest.raises(PolicyArtifactError, match="format"):
        PolicyBook({"format": "other"})


# Worked out by hand. Paper at lambda 4 with identity Platt maps: thresholds 1/5 (1 - 0.5 / 4.5) = 0.17778
# after stage 0 and 1/5 (1 - 0.5 / (10 / 4.5)) = 0.155 after stage 1; the last stage always answers. Nothing
# run yet: threshold 1.0 (no decision taken).
HISTORIES = ([NAN] * 3, [0.9, NAN, NAN], [0.1, NAN, NAN], [0.1, 0.12, NAN], [0.1, 0.2, 0.3])
T0, T1 = 0.2 * (1 - 0.5 / 4.5), 0.2 * (1 - 0.5 / (10 / 4.5))
EXPECTED = {   # (stop, next_stage, answer_stage, threshold) per history
    "paper": [(False, 0, -1, 1.0), (True, -1, 0, T0), (False, 1, -1, T0), (False, 2, -1, T1), (True, -1, 2, 0.0)],
    "fixed": [(False, 1, -1, 1.0)] + [(True, -1, 1, 0.0)] * 4,
    "threshold": [(False, 0, -1, 1.0), (True, -1, 0, 0.8), (False, 1, -1, 0.8), (False, 2, -1, 0.6),
                  (True, -1, 2, 0.0)],
    # cascade (0, 1, 2), thresholds 0.6 / 0.5 with agreement: no answer ids here (resp -1), so the score is
    # the confidence alone: 0.9 >= 0.6 stops, 0.1 < 0.6 and 0.12 < 0.5 go on, the last stage answers
    "cascade": [(False, 0, -1, 1.0), (True, -1, 0, 0.6), (False, 1, -1, 0.6), (False, 2, -1, 0.5),
                (True, -1, 2, 0.0)],
}


@pytest.mark.parametrize("rule", [K.PaperRule(COSTS, 4.0, np.tile([1.0, 0.0], (3, 1))), K.FixedRule(1),
                                  K.ThresholdRule(0, np.array([0.8, 0.6, 0.0])),
                                  CascadeRule((0, 1, 2), np.array([0.6, 0.5]), agree=True)], ids=lambda r: r.name)
def test_every_rule_decides_one_prompt_on_python_scalars(rule) -> None:
    """The served loop keeps its state in lists and reads ``One`` fields as plain bool / int / float."""
    for conf, want in zip(HISTORIES, EXPECTED[rule.name], strict=True):
        d = rule.decide_one(conf, None, [-1] * 3)
        assert [type(v) for v in d] == [bool, int, int, float]
        assert d[:3] == want[:3] and d.threshold == pytest.approx(want[3], abs=1e-12), conf


def test_optimal_reports_no_threshold_when_no_stage_is_left() -> None:
    """With every later stage run (or none in the spec), the answer stands whatever its confidence: the
    threshold is NaN (shown as none/null), not 0.0; with a stage left it is a probability."""
    from optistop import ROOT
    from optistop.policy_artifact import load_policy

    rule, _ = load_policy(ROOT / "model_repository/quality_predictor/1/policy.json").make("optimal", None)
    last = rule.decide_one([NAN, NAN, 0.3], [0.5, 0.5, 0.5], [-1, -1, 0])
    assert last.stop and last.answer_stage == 2 and math.isnan(last.threshold)
    d = rule.decide(K.State(np.array([[NAN, NAN, 0.3]] * 2), np.full((2, 3), 0.5), np.array([[-1, -1, 0]] * 2)))
    assert np.isnan(d.threshold).all()
    first = rule.decide_one([0.9, NAN, NAN], [0.5, 0.5, 0.5], [0, -1, -1])
    assert 0.0 <= first.threshold <= 1.0


def test_cascade_operating_point_round_trips_through_policy_json() -> None:
    """A format-2 artifact whose operating point is a subset cascade with agreement: the server's book builds
    the same rule (same decisions on every history) and names it among the valid policies."""
    art, _ = build_artifact(synthetic_arrays(300), ["small", "medium", "large"], F.Criterion(), 0, (20.0,))
    fitted = CascadeRule((0, 2), np.array([0.7]), agree=True)
    art["operating"] = fitted.to_json()
    book = PolicyBook(json.loads(json.dumps(art)))
    rule, _ = book.make(None, None)
    assert isinstance(rule, CascadeRule) and book.make("cascade", None)[0] is rule
    assert (rule.stages, rule.thresholds.tolist(), rule.agree) == ((0, 2), [0.7], True)
    for conf, resp in (([NAN] * 3, [-1] * 3), ([0.75, NAN, NAN], [0, -1, -1]), ([0.6, NAN, NAN], [0, -1, -1]),
                       ([0.6, NAN, 0.2], [0, -1, 0])):
        assert rule.decide_one(conf, None, resp) == fitted.decide_one(conf, None, resp)
    assert "cascade" in book.valid_names()
    path = art["calibration"]["path"]
    assert path[0]["certified"] and path[0]["operating"]["policy"].startswith("fixed:")   # the reference
    for p in path:   # every point of the tested sequence can be served as it stands (a safer fallback)
        book_p = PolicyBook(json.loads(json.dumps(dict(art, operating=p["operating"]))))
        assert book_p.make(None, None)[0].name == p["operating"]["policy"].split(":")[0] or \
            book_p.make(None, None)[0].name == p["operating"]["policy"]
    art["operating"]["stages"] = [0, 3]
    with pytest.raises(PolicyArtifactError, match="malformed"):
        PolicyBook(art)
    with pytest.raises(PolicyArtifactError, match="this code reads 'optistop-policy/1' or 'optistop-policy/2'"):
        PolicyBook(dict(art, format="optistop-policy/9"))


def test_the_artifact_serves_the_rule_it_certified() -> None:
    """build_artifact (what `optistop calibrate` writes) through JSON into PolicyBook: the rule a request
    without a policy gets decides every calibration prompt as the certified rule does, at its lambda. On
    data where only the prompt-only estimates say who is right, the certified rule is the ex-ante router:
    its operating entry was written with lambda null (the book then ran the fitted-Q grid's largest lambda,
    which sends every prompt to the dearest stage)."""
    rng = np.random.default_rng(100)
    d = rng.normal(0, 1.5, 400)
    pr = 1 / (1 + np.exp(-(np.array([0.0, 2.5])[None, :] - d[:, None])))
    y = rng.random(pr.shape) < pr
    conf = np.clip(0.5 + rng.normal(0, 0.2, pr.shape), 0.01, 0.99)          # confidences say nothing
    ex = np.clip(pr + rng.normal(0, 0.05, pr.shape), 0.01, 0.99)
    choices = []
    for cal in (F.Arrays(conf, y, np.array([1.0, 10.0]), ex), synthetic_arrays(300)):
        art, ch = build_artifact(cal, [f"s{k}" for k in range(len(cal.costs))], F.Criterion(), 0, (1.0, 20.0))
        choices.append(ch["choice"][0])
        rule, lam = PolicyBook(json.loads(json.dumps(art))).make(None, None)
        want = K.simulate(ch["rule"], cal.conf, cal.ex_ante)
        got = K.simulate(rule, cal.conf, cal.ex_ante)
        assert all(np.array_equal(w, g) for w, g in zip(want, got, strict=True)), ch["choice"]
        if ch["choice"][0] in ("router", "ante", "optimal"):
            assert lam == pytest.approx(ch["choice"][1])
    assert choices[0] == "ante", choices


def test_ante_router_reads_the_ex_ante_estimates_as_they_are_and_round_trips() -> None:
    """The ex-ante router (ltt.ante_path's rule) runs the one stage argmin_k c_k + lam (1 - e_k), worked out
    here by hand; policy.json's operating {"policy": "ante", "lambda"} serves it (by name too, at a request's
    own lambda); a predictor without ex-ante estimates cannot."""
    costs = np.array([1.0, 4.0, 10.0])
    ex = np.array([[0.9, 0.95, 0.99], [0.2, 0.9, 0.99], [0.1, 0.2, 0.9], [0.5, 0.5, 0.5]])
    for lam, want in ((20.0, [0, 1, 2, 0]), (200.0, [2, 2, 2, 0]), (2.0, [0, 0, 0, 0])):
        by_hand = np.argmin(costs[None, :] + lam * (1 - ex), axis=1)
        assert by_hand.tolist() == want
        ran, ans = K.simulate(K.ante_rule(costs, lam), np.full((4, 3), 0.5), ex)
        assert ans.tolist() == want and ran.sum(axis=1).tolist() == [1] * 4
    art, _ = build_artifact(synthetic_arrays(300), ["small", "medium", "large"], F.Criterion(), 0, (20.0,))
    art["operating"] = {"policy": "ante", "lambda": 20.0}
    book = PolicyBook(json.loads(json.dumps(art)))
    rule, lam = book.make(None, None)
    assert rule.name == "ante" and lam == 20.0 and rule.uses_ex_ante and "ante" in book.valid_names()
    assert rule.decide_one([NAN] * 3, ex[1].tolist(), None).next_stage == 1
    assert book.make("ante", 200.0)[0].decide_one([NAN] * 3, ex[0].tolist(), None).next_stage == 2
    with pytest.raises(PolicyArtifactError, match="routes by ex-ante estimates"):
        PolicyBook(dict(art, use_ex_ante=False))
    book_plain = PolicyBook(json.loads(json.dumps(dict(art, use_ex_ante=False, operating={"policy": "router",
                                                                                         "lambda": 20.0}))))
    with pytest.raises(ValueError, match="unknown policy 'ante'"):
        book_plain.make("ante", None)
