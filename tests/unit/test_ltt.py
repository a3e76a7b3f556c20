"""Learn-then-Test and the subset cascades on numbers worked out by hand; the miss rate, simulated."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from optistop import policy as K
from optistop.offline import cascades, ltt
from optistop.offline import policy_fit as F
from optistop.policy_cascade import CascadeRule

NAN = float("nan")


def test_betting_capital_by_hand() -> None:
    # n = 3, m = 1/2: lam = min(sqrt(2 ln 10 / (3 sigma2)), 0.5 / m = 1) = 1 at every step (sigma2 <= 1/4)
    # K = 1.5, then 1.5 (1 - 0.5) = 0.75, then 0.75 x 1.5 = 1.125
    np.testing.assert_allclose(ltt.betting_capital(np.array([1.0, 0.0, 1.0]), 0.5, 0.1), [1.5, 0.75, 1.125])
    # n = 100: the first bet is sqrt(2 ln 10 / (100 x 1/4)) = 0.429193 (under the cap), K_1 = 1 + 0.429193 / 2
    k = ltt.betting_capital(np.ones(100), 0.5, 0.1)
    assert k[0] == pytest.approx(1 + 0.5 * math.sqrt(2 * math.log(10) / 25), rel=1e-9)


def test_rejects_needs_enough_evidence() -> None:
    # a rule that always agrees with the reference: d = 1 - 0.945 = 0.055 per prompt, x - m = 0.055 / 1.945;
    # the bet is capped at 1 / (2m) = 1.945 / 1.89, so the capital grows by at most 1.0291 a prompt: 20 prompts
    # give at most 1.0291^20 = 1.77 < 10 (not certified at delta 0.1), 1000 prompts pass 10 after ~80
    ones = np.ones(20)
    assert not ltt.rejects(ones, ones, 0.945, 0.1)
    ones = np.ones(1000)
    assert ltt.rejects(ones, ones, 0.945, 0.1)
    # a rule right on 90% of the prompts the reference gets right: ratio 0.9 < 0.945, never certified
    q = np.tile([1.0] * 9 + [0.0], 100)
    assert not ltt.rejects(q, np.ones(1000), 0.945, 0.1)
    assert not ltt.rejects(q, np.ones(1000), 0.945, 0.1, test="normal")


def test_normal_test_by_hand() -> None:
    # d = q - 0.5 q_ref = [.5, .5, .5, -.5]: mean 0.25, sd 0.5, se 0.25:
    # z_0.9 = 1.2816 -> lcb < 0; z_0.6 = 0.2533 -> lcb > 0
    q, r = np.array([1.0, 1, 1, 0]), np.ones(4)
    assert not ltt.rejects(q, r, 0.5, 0.1, test="normal")
    assert ltt.rejects(q, r, 0.5, 0.4, test="normal")
    with pytest.raises(ValueError, match="unknown test .hoeffding.; valid: betting, normal, likelihood"):
        ltt.rejects(q, r, 0.5, 0.1, test="hoeffding")


def test_fixed_sequence_stops_at_first_failure() -> None:
    calls: list[int] = []

    def t(i: int, ok: bool):
        return lambda: calls.append(i) or ok

    assert ltt.fixed_sequence([t(0, True), t(1, True), t(2, False), t(3, True)]) == 1
    assert calls == [0, 1, 2]      # candidate 3 is never tested: its pass would not count
    assert ltt.fixed_sequence([t(0, False), t(1, True)]) == -1


def test_frontier_path_by_hand() -> None:
    cost, q = np.array([1.0, 2, 3, 4]), np.array([0.5, 0.7, 0.6, 0.9])   # (3, 0.6) is dominated by (2, 0.7)
    assert ltt.frontier_path(cost, q, 0.6).tolist() == [3, 1, 0]        # 0 is the first below the floor: kept
    assert ltt.frontier_path(cost, q, 0.8).tolist() == [3, 1]


def test_subset_cascade_grid_by_hand() -> None:
    # 3 stages, costs 1 / 3 / 10; cascade 0 -> 2 (skips stage 1) at threshold 0.5 on stage 0:
    conf = np.array([[0.9, 0.2, 0.5], [0.4, 0.9, 0.5], [0.6, 0.1, 0.5], [0.1, 0.8, 0.5]])
    correct = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0], [0, 1, 1]], bool)
    a = F.Arrays(conf, correct, np.array([1.0, 3.0, 10.0]))
    # prompts 0 and 2 stop at stage 0 (0.9, 0.6 >= 0.5): right, wrong; 1 and 3 go to stage 2: right, right
    # quality 3/4; cost (1 + 1 + 11 + 11) / 4 = 6
    q, c = cascades.evaluate(cascades.scores(a, (0, 2), False), correct[:, [0, 2]], a.costs[[0, 2]], np.array([[0.5]]))
    assert (q[0], c[0]) == (0.75, 6.0)
    rule = CascadeRule((0, 2), np.array([0.5]))
    qs, cs = F.outcome(rule, a)
    assert (qs.mean(), cs.mean()) == (0.75, 6.0)
    g = cascades.grid(a, agree=False)
    assert set(g.blocks[i][0] for i in range(len(g.blocks))) == set(cascades.subsets(3))
    assert len(cascades.subsets(3)) == 7
    # every grid configuration agrees with the served rule replayed through the kernel
    for i in range(0, len(g.quality), max(1, len(g.quality) // 150)):
        qs, cs = F.outcome(g.rule(i), a)
        assert (qs.mean(), cs.mean()) == pytest.approx((g.quality[i], g.cost[i]))
    # the cheapest reaching quality 0.75 (stage 2's): 0 -> 1 stopping at 0.6 on stage 0 (prompts 0 and 2
    # stop: right, wrong; 1 and 3 run stage 1: right, right) costs (1 + 1 + 4 + 4) / 4 = 2.5; stage 1 alone 3
    i = g.cheapest(0.75)
    assert g.cost[i] == 2.5
    assert g.rule(i).stages == (0, 1) and 0.4 < g.rule(i).thresholds[0] <= 0.6


def test_cascade_rule_agreement_and_parity() -> None:
    rule = CascadeRule((0, 1, 2), np.array([0.9, 1.5]), agree=True)
    conf = np.array([[0.5, 0.6, NAN], [0.5, 0.4, NAN], [0.95, NAN, NAN], [NAN, NAN, NAN]])
    resp = np.array([[3, 3, -1], [3, 3, -1], [1, -1, -1], [-1, -1, -1]])
    d = rule.decide(K.State(conf, None, resp))
    # row 0: agree and 0.6 >= 0.5 -> score 1.6 >= 1.5 stop; row 1: 1.4 < 1.5 go on; row 2: 0.95 >= 0.9 stop
    assert d.stop.tolist() == [True, False, True, False]
    assert d.next_stage.tolist() == [-1, 2, -1, 0]
    assert d.answer_stage.tolist() == [1, -1, 0, -1]
    for i in range(4):
        one = rule.decide_one(conf[i].tolist(), None, resp[i].tolist())
        assert (one.stop, one.next_stage, one.answer_stage) == (d.stop[i], d.next_stage[i], d.answer_stage[i])
    with pytest.raises(ValueError, match="must be increasing"):
        CascadeRule((2, 1), np.array([0.5]))


def test_reference_stage() -> None:
    a = F.Arrays(np.zeros((10, 3)), np.array([[1, 1, 0]] * 5 + [[0, 1, 1]] * 3 + [[0, 0, 1]] * 2, bool),
                 np.array([1.0, 2.0, 5.0]))
    # accuracies 0.5, 0.8, 0.5: best is stage 1, even though the last stage is dearer
    assert F.reference_stage(a, "best") == 1
    assert F.reference_stage(a, "last") == 2
    assert F.reference_stage(a, "0") == 0
    assert F.reference_stage(a, "large", ["small", "medium", "large"]) == 2
    with pytest.raises(ValueError, match="reference 'huge' is not a stage; valid: best, last, 0..2"):
        F.reference_stage(a, "huge")
    tie = F.Arrays(np.zeros((2, 2)), np.array([[1, 1], [0, 0]], bool), np.array([1.0, 2.0]))
    assert F.reference_stage(tie, "best") == 0   # equal accuracy: the cheaper stage


def population(n: int, rng: np.random.Generator, skill: tuple[float, ...] = (-0.3, 1.2, 1.0)) -> F.Arrays:
    """Three stages sharing a latent difficulty; by default the middle stage sometimes above the last
    (non-monotone)."""
    d = rng.normal(0, 1.5, n)
    pr = 1 / (1 + np.exp(-(np.array(skill)[None, :] - d[:, None])))
    y = rng.random(pr.shape) < pr
    conf = np.clip(0.5 * pr + 0.3 * y + rng.normal(0, 0.15, pr.shape), 0.01, 0.99)
    return F.Arrays(conf, y, np.array([1.0, 4.0, 10.0]))


def test_miss_rate_at_confidence_0_9_simulated() -> None:
    """Fit on 300 prompts, 20 seeded draws: the share of served rules whose quality on a 20,000-prompt
    population is below 94.5% of the reference must stay near 10% (here it must be <= 3 of 20, allowing
    the binomial spread of 20 draws around 0.1)."""
    rng = np.random.default_rng(7)
    pop = population(20000, rng)
    misses, costs = 0, []
    crit = F.Criterion()
    for s in range(20):
        cal = population(300, np.random.default_rng(100 + s))
        ch = F.choose(cal, crit, s, lambdas=(), optimal=False)
        q, c = F.outcome(ch["rule"], pop)
        misses += q.mean() < crit.t_lcb * pop.correct[:, ch["reference"]].mean()
        costs.append(c.mean())
    assert misses <= 3
    assert np.mean(costs) < 10.0     # cheaper than the reference stage alone: the procedure has power


def test_product_grid_by_suffix_sums_equals_direct_simulation() -> None:
    """The fast path (sorted last position, suffix sums) gives what walking every configuration gives."""
    rng = np.random.default_rng(3)
    sc = rng.random((200, 4))
    sc[:, 2] += rng.random(200) < 0.3          # agreement-shifted scores reach above 1
    corr = rng.random((200, 4)) < 0.6
    costs = np.array([1.0, 2.0, 5.0, 9.0])
    levels = [np.append(np.quantile(sc[:, j], [0, 0.3, 0.7, 1]), np.inf) for j in range(3)]
    q, c, T = cascades.evaluate_product(sc, corr, costs, levels)
    q2, c2 = cascades.evaluate(sc, corr, costs, T)
    assert len(T) == 5 ** 3
    np.testing.assert_allclose(q, q2)
    np.testing.assert_allclose(c, c2)


def test_pair_paths_on_all_prompts_by_hand() -> None:
    # stage 0 (cost 1) is right exactly when its confidence is 0.99, wrong when 0.01; stage 1 (cost 10, the
    # reference) is always right. The grid is stage 0's confidence quantiles: 0.99, then 0.01. At 0.99 only the
    # right answers stop: quality = the reference's on all 1,000 prompts (certified, see
    # test_rejects_needs_enough_evidence) at cost 1 + 0.4 x 10 = 5; at 0.01 400 wrong answers are served
    # (quality 0.6): the path ends
    conf = np.column_stack([np.r_[np.full(600, 0.99), np.full(400, 0.01)], np.full(1000, 0.5)])
    correct = np.column_stack([np.r_[np.ones(600), np.zeros(400)], np.ones(1000)]).astype(bool)
    # (the bet sees the prompts in a seeded random order, as choose passes it: sorted as here, 600 agreeing
    # prompts first would bank the capital before the 400 wrong ones are seen)
    order = np.random.default_rng(0).permutation(1000)
    won = ltt.pair_paths(F.Arrays(conf, correct, np.array([1.0, 10.0])), 1, 0.945, 0.1, order=order)
    assert [(r.stages, float(r.thresholds[0]), c) for r, c in won] == [((0, 1), 0.99, 5.0)]
    # no stage before the reference: no pair to test
    assert ltt.pair_paths(F.Arrays(conf, correct, np.array([1.0, 10.0])), 0, 0.945, 0.1) == []
    with pytest.raises(ValueError, match="whole in \\[0, 1\\)"):
        F.Criterion(whole=1.0)


def test_pair_paths_do_not_depend_on_the_confidences_scale() -> None:
    """A monotone rescaling of a stage's confidences (here into the range of raw top-token probabilities,
    1 - 1e-4 .. 1 - 1e-8) leaves every threshold cascade's decisions as they were, so it must leave the
    certified rules' costs as they were. A grid fixed in confidence (sigmoid(8 .. -8), before quantiles)
    put all those prompts above its first threshold and certified far dearer rules."""
    cal = population(1000, np.random.default_rng(5))
    squash = dataclasses.replace(cal, conf=1 / (1 + np.exp(-np.log(cal.conf / (1 - cal.conf)) - 14)))
    assert squash.conf.min() > 1 - 1e-4 and np.all(np.argsort(squash.conf, 0) == np.argsort(cal.conf, 0))
    order = np.random.default_rng(0).permutation(1000)
    won = [c for _, c in ltt.pair_paths(cal, 2, 0.945, 0.1, "likelihood", order)]
    assert min(won) < 9.0                                                # the paths certify real savings
    assert [c for _, c in ltt.pair_paths(squash, 2, 0.945, 0.1, "likelihood", order)] == won


def test_pair_paths_miss_rate_simulated() -> None:
    """The whole-data pair paths alone at delta 0.1, fitted on 300 prompts, 20 seeded draws: the cheapest
    certified pair cascade is below 94.5% of the reference on a 20,000-prompt population in <= 3 of 20
    draws, and it is cheaper than the reference (stage 1, cost 4) on average: the paths have power."""
    pop = population(20000, np.random.default_rng(7))
    misses, costs = 0, []
    for s in range(20):
        cal = population(300, np.random.default_rng(100 + s))
        ref = F.reference_stage(cal)
        won = ltt.pair_paths(cal, ref, 0.945, 0.1, order=np.random.default_rng(s).permutation(300))
        rule = min(won, key=lambda w: w[1])[0] if won else K.FixedRule(ref)
        q, c = F.outcome(rule, pop)
        misses += q.mean() < 0.945 * pop.correct[:, ref].mean()
        costs.append(c.mean())
    assert misses <= 3
    assert np.mean(costs) < 4.0
    # the default share depends on the calibration set's size only: 0.8 up to WHOLE_N prompts, none above
    assert (F.whole_share(300), F.whole_share(F.WHOLE_N), F.whole_share(F.WHOLE_N + 1)) == (0.8, 0.8, 0.0)


def test_ante_path_on_all_prompts_by_hand() -> None:
    # stage 0 (cost 1) is right exactly when its ex-ante estimate is 0.9, wrong when 0.1; stage 1 (cost 10,
    # the reference, estimate 0.99) always right; confidences say nothing (0.5). argmin c_k + lam (1 - e_k):
    # stage 0 on the 0.9 prompts once lam (0.09 - 0.01) < 9, i.e. lam < 112.5; on the 0.1 prompts once
    # lam < 10 / 0.89. Down the fixed grid (x 10), lam in [11.3, 112.5) serves the reference's quality at
    # cost 0.6 + 4 = 4.6 (certified on 1,000 prompts); below, 400 wrong answers end the path. The confidence
    # pairs certify nothing cheaper than the reference
    ex = np.column_stack([np.r_[np.full(600, 0.9), np.full(400, 0.1)], np.full(1000, 0.99)])
    correct = np.column_stack([np.r_[np.ones(600), np.zeros(400)], np.ones(1000)]).astype(bool)
    cal = F.Arrays(np.full((1000, 2), 0.5), correct, np.array([1.0, 10.0]), ex)
    order = np.random.default_rng(0).permutation(1000)
    won = ltt.ante_path(cal, 1, 0.945, 0.1, "likelihood", order)
    rule, cost = min(won, key=lambda w: w[1])
    assert cost == pytest.approx(4.6) and rule.name == "ante" and 10 / 0.89 < rule.lam < 112.5
    assert max(c for _, c in won) == 10.0 and F.outcome(rule, cal)[0].mean() == 1.0
    assert min((c for _, c in ltt.pair_paths(cal, 1, 0.945, 0.1, "likelihood", order)), default=10.0) >= 10.0
    assert ltt.ante_path(F.Arrays(cal.conf, correct, cal.costs), 1, 0.945, 0.1) == []   # no estimates


def test_ante_path_miss_rate_simulated() -> None:
    """Two stages whose confidences say little and whose prompt-only estimates say much: fitted on 300
    prompts, 20 seeded draws, choose serves an ex-ante router (certified at ANTE_SHARE of the whole-data
    budget) in >= 15 draws, cheaper than the reference on average, below 94.5% of it on a 20,000-prompt
    population in <= 3 draws."""
    def pop2(n: int, rng: np.random.Generator) -> F.Arrays:
        d = rng.normal(0, 1.5, n)
        pr = 1 / (1 + np.exp(-(np.array([0.0, 2.5])[None, :] - d[:, None])))
        y = rng.random(pr.shape) < pr
        conf = np.clip(0.5 + 0.1 * (y - 0.5) + rng.normal(0, 0.2, pr.shape), 0.01, 0.99)
        ex = np.clip(pr + rng.normal(0, 0.05, pr.shape), 0.01, 0.99)
        return F.Arrays(conf, y, np.array([1.0, 10.0]), ex)

    pop = pop2(20000, np.random.default_rng(7))
    ante = misses = 0
    costs = []
    for s in range(20):
        rule = F.choose(pop2(300, np.random.default_rng(100 + s)), F.Criterion(reference="1"), s,
                        lambdas=(), optimal=False)["rule"]
        ante += rule.name == "ante"
        q, c = F.outcome(rule, pop)
        misses += q.mean() < 0.945 * pop.correct[:, 1].mean()
        costs.append(c.mean())
    assert ante >= 15 and np.mean(costs) < 9.0 and misses <= 3


def test_pair_paths_chain_below_an_adequate_middle_stage() -> None:
    """The middle stage is within 1% of the last (the reference): its path into the reference is
    certified to its end (the middle stage alone), which hands the level on to the cascade small -> middle,
    cheaper than anything that runs the reference. 20 draws of 1,000 prompts (300 rarely certify a stage
    that disagrees with the reference on a quarter of the prompts): that chain is where the cheapest
    certified rule comes from, and it misses 94.5% of the reference on a 20,000-prompt population in <= 3."""
    skill = (-0.3, 1.45, 1.5)
    pop = population(20000, np.random.default_rng(7), skill)
    assert 0.98 < pop.correct[:, 1].mean() / pop.correct[:, 2].mean() < 1.0
    misses, chained = 0, 0
    for s in range(20):
        cal = population(1000, np.random.default_rng(100 + s), skill)
        won = ltt.pair_paths(cal, 2, 0.945, 0.1, "likelihood")
        rule, cost = min(won, key=lambda w: w[1])
        chained += rule.stages in ((1,), (0, 1)) and cost < 4.0
        q, _ = F.outcome(rule, pop)
        misses += q.mean() < 0.945 * pop.correct[:, 2].mean()
    assert chained >= 10            # 13 of 20 here; none could without the chain (every rule ran stage 2)
    assert misses <= 3
    # the middle stage well below the reference: its path stops early and nothing below it is tested
    cal = population(1000, np.random.default_rng(1), (-0.3, 0.5, 1.5))
    assert all(r.stages[-1] == 2 for r, _ in ltt.pair_paths(cal, 2, 0.945, 0.1, "likelihood"))


def test_stage_alone_wins_a_tie_with_a_cascade_that_never_escalates_here() -> None:
    """Down the grid, "stage 1, then 2 below t" with t at or under every stage-1 confidence of the
    calibration set costs what stage 1 alone costs there; on new prompts it escalates some. The served
    rule must be stage 1 alone then (it was the cascade: 3.03 vs 3.00 on a real MMLU-Pro ladder)."""
    skill = (-3.0, 1.45, 1.5)        # stage 0 useless: nothing below stage 1 is cheaper than it
    served = []
    for s in range(6):
        cal = population(1000, np.random.default_rng(100 + s), skill)
        rule = F.choose(cal, F.Criterion(), s, lambdas=(), optimal=False)["rule"]
        served.append(getattr(rule, "stages", rule.name))
        lowest = isinstance(rule, CascadeRule) and rule.stages == (1, 2) and \
            rule.thresholds[0] <= cal.conf[:, 1].min()
        assert not lowest, (s, rule)      # draws 0 and 5 served it before
    assert (1,) in served                 # stage 1 alone, from the chain


def test_a_mixed_rule_must_be_surely_cheaper_than_a_certified_single_stage() -> None:
    """ltt.single_stage_guard on 150 testing prompts, stages costing 1 and 10. "Stage 0, then 1
    below t" stopping at stage 0 on 12% of them costs 1 + 0.88 x 10 = 9.8 there, with standard error
    10 sqrt(0.12 x 0.88 / 150) = 0.265: 9.8 + 1.2816 x 0.265 = 10.14 is not below the reference's 10, so
    the reference serves; stopping on half (6.0 + 1.2816 x 0.41 = 6.52) keeps the cascade; a certified
    stage 0 alone (cost 1) beats any mixed rule."""
    n = 150
    for stop_share, keeps in ((0.12, False), (0.5, True)):
        conf = np.column_stack([(np.arange(n) < stop_share * n).astype(float), np.zeros(n)])
        b = F.Arrays(conf, np.ones((n, 2), bool), np.array([1.0, 10.0]))
        cascade = ("cascade", None, CascadeRule((0, 1), np.array([0.5])), 0.0, 0.0)
        ref = ("fixed:1", None, K.FixedRule(1, "fixed:1"), 10.0, 1.0)
        assert F.outcome(cascade[2], b)[1].mean() == pytest.approx(1 + (1 - stop_share) * 10)
        cost = F.outcome(cascade[2], b)[1]
        assert ltt.single_stage_guard(cascade, [ref], cost, b.costs, 0.9) is (cascade if keeps else ref)
        alone = ("cascade", None, CascadeRule((0,), np.zeros(0)), 1.0, 1.0)
        assert ltt.single_stage_guard(cascade, [ref, alone], cost, b.costs, 0.9) is alone
        assert ltt.single_stage_guard(ref, [ref, alone], cost, b.costs, 0.9) is ref   # a single stage is never swapped


def test_likelihood_test_needs_a_loss_to_reweight() -> None:
    # 5 prompts, rule and reference always right: d = 0.055 each, sd 0, so the plain z-test certifies on
    # 5 prompts. With half a pseudo-prompt per cell the likelihood ratio has a loss (-0.945) to reweight:
    # (mean 0.0471 over weight 7; mu solving sum w v / (1 + mu v) = 0) the signed root is 0.33 < z_0.9 = 1.28
    ones = np.ones(5)
    assert ltt.rejects(ones, ones, 0.945, 0.1, test="normal")
    assert not ltt.rejects(ones, ones, 0.945, 0.1, test="likelihood")
    assert ltt.likelihood_z(np.full(5, 0.055), 0.945) == pytest.approx(_el_by_dual(np.full(5, 0.055), 0.945), abs=1e-6)
    # 2,000 agreeing prompts: certified; a rule 1 point below the tolerance on 2,000 prompts never is
    ones = np.ones(2000)
    assert ltt.rejects(ones, ones, 0.945, 0.1, test="likelihood")
    q = np.tile([1.0] * 93 + [0.0] * 7, 20)
    assert ltt.likelihood_z(q - 0.945, 0.945) < 0


@pytest.mark.parametrize("test", ["likelihood"])
def test_asymptotic_tests_hold_their_level_at_the_boundary(test: str) -> None:
    """H0 on its boundary, E[q - 0.945 q_ref] = 0 exactly, with few disagreements (the hard case for a
    z-test): cells (q, q_ref) = (1,1) 0.80, (1,0) p10, (0,1) 0.06, (0,0) rest, p10 = (0.945 x 0.86 - 0.80).
    Over 3,000 simulated calibration sets of 300 prompts the rejection rate must stay near delta = 0.1
    (binomial sd 0.0055: <= 0.12)."""
    rng = np.random.default_rng(11)
    p11, p01 = 0.80, 0.06
    p10 = 0.945 * (p11 + p01) - p11
    cells = rng.choice(4, size=(3000, 300), p=[p11, p10, p01, 1 - p11 - p10 - p01])
    q, r = np.isin(cells, (0, 1)).astype(float), np.isin(cells, (0, 2)).astype(float)
    rate = np.mean([ltt.rejects(q[i], r[i], 0.945, 0.1, test=test) for i in range(len(q))])
    assert rate <= 0.12
    assert rate >= 0.03            # and it is a test of level ~0.1, not a refusal to ever certify


def _el_by_dual(d: np.ndarray, tol: float) -> float:
    """The same statistic computed independently: maximise sum w log p over the probability simplex with
    sum p v = 0 by scipy's SLSQP (the primal), -2 x (that - the unconstrained sum w log(w / W))."""
    from scipy.optimize import minimize

    vals = np.concatenate([d, [1 - tol, 1.0, -tol, 0.0]])
    w = np.concatenate([np.ones(len(d)), np.full(4, 0.5)])
    cons = [{"type": "eq", "fun": lambda p: p.sum() - 1}, {"type": "eq", "fun": lambda p: p @ vals}]
    res = minimize(lambda p: -(w @ np.log(np.maximum(p, 1e-300))), w / w.sum(), constraints=cons,
                   bounds=[(1e-12, 1)] * len(w), method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    stat = 2 * (w @ np.log(w / w.sum()) + res.fun)
    return float(np.sign(w @ vals) * np.sqrt(max(stat, 0.0)))


def test_margin_cost() -> None:
    from optistop.offline.ltt_sweep import margin_cost

    # stage 0 (cost 1) right exactly where the reference (cost 10) is: d = 0.055 on every prompt, sd 0, so
    # stopping everything at stage 0 clears the tolerance at any m; it is also the hindsight cascade
    n = 1000
    right = np.arange(n) % 5 != 0
    conf = np.column_stack([np.where(right, 0.9, 0.2), np.full(n, 0.5)])
    same = F.Arrays(conf, np.column_stack([right, right]), np.array([1.0, 10.0]))
    assert margin_cost(same, 1, 30) == (pytest.approx(1.0), pytest.approx(1.0))
    # the reference always right, stage 0 wrong on 20% with confidences spread below the right ones:
    # more prompts, a smaller margin: quality falls towards the tolerance and the cost with it
    conf = np.column_stack([np.where(right, 0.9, 0.1 + 0.7 * (np.arange(n) % 7) / 7), np.full(n, 0.5)])
    a = F.Arrays(conf, np.column_stack([right, np.ones(n, bool)]), np.array([1.0, 10.0]))
    got = [margin_cost(a, 1, m) for m in (30, 300, 10**9)]
    assert got[0][0] >= got[1][0] >= got[2][0] and got[0][1] >= got[1][1] >= got[2][1]
    assert got[2] == (pytest.approx(0.972), pytest.approx(1.0))   # no margin: the hindsight cascade itself
    assert got[0] == (1.0, pytest.approx(3.0 / cascades.hindsight_cost(a, 1, 0.95)))  # 30: no wrong stop


def test_known_frontier_yardstick() -> None:
    """ltt_sweep.KnownFrontier: one z-test on the population's frontier, on the replay's folds and draws."""
    from optistop.offline.ltt_sweep import KnownFrontier

    n = 1000
    right = np.arange(n) % 5 != 0
    # stage 0 right exactly where the reference is: d = 0.055 on every prompt, so any fitting set certifies
    # stopping everything at stage 0 (cost 1), and it meets the tolerance on every evaluated set
    conf = np.column_stack([np.where(right, 0.9, 0.2), np.full(n, 0.5)])
    kf = KnownFrontier(F.Arrays(conf, np.column_stack([right, right]), np.array([1.0, 10.0])), 1)
    cost, met = kf.small(30, 5)
    assert kf.kfold(2) == pytest.approx(1.0) and np.allclose(cost, 1.0) and met.all()
    # stage 0 a coin flip whose confidence says nothing, the reference always right: stopping a share f at
    # stage 0 loses f / 2 of the reference's quality, so no rule stopping more than 11% clears 94.5%:
    # every fit serves at cost >= 1 + 0.89 x 10
    rng = np.random.default_rng(0)
    coin = F.Arrays(np.column_stack([rng.random(n), np.full(n, 0.5)]),
                    np.column_stack([rng.random(n) < 0.5, np.ones(n, bool)]), np.array([1.0, 10.0]))
    assert KnownFrontier(coin, 1).kfold(2) >= 9.9 - 1e-9
    # informative but imperfect confidences: more fitting prompts, a smaller margin, a cheaper rule
    conf = np.column_stack([np.where(right, 0.9, 0.1 + 0.7 * (np.arange(n) % 7) / 7), np.full(n, 0.5)])
    kf = KnownFrontier(F.Arrays(conf, np.column_stack([right, np.ones(n, bool)]), np.array([1.0, 10.0])), 1)
    assert kf.small(30, 10)[0].mean() > kf.small(900, 10)[0].mean()


def test_cascade_levels_are_scored_out_of_fold() -> None:
    """Confidences that carry no information: the cascade frontier scored on the data that picked it is
    the envelope of lucky estimates, above the picked rules' true quality (a 100,000-prompt population of
    the same law). crossfit.levels scores each level out of fold, which takes most of that optimism away."""
    from optistop.offline import crossfit

    acc, costs = np.array([0.5, 0.6, 0.7, 0.9]), np.array([1.0, 2.0, 4.0, 10.0])

    def draw(n: int, seed: int) -> F.Arrays:
        rng = np.random.default_rng(seed)
        return F.Arrays(rng.random((n, 4)), rng.random((n, 4)) < acc, costs)

    a, pop = draw(300, 0), draw(100_000, 1)
    gr = cascades.grid(a)
    front = ltt.frontier_path(gr.cost, gr.quality, -np.inf, cap=10**9)
    true_q = np.array([F.outcome(gr.rule(int(i)), pop)[0].mean() for i in front])
    out = np.array(crossfit.levels(a, gr.quality[front], seed=0))          # (cost, quality) per level
    optimism_in, optimism_out = (gr.quality[front] - true_q).mean(), (out[:, 1] - true_q).mean()
    assert optimism_in > 0.03              # 0.056 here: four stages, thousands of configurations
    assert optimism_out < optimism_in / 2  # 0.012


def test_candidates_fitted_once_serve_every_target() -> None:
    """choose with the candidates fitted once (the report's served frontier, 4 targets per fold) equals
    choose fitting them itself, target by target; candidates fitted on other data are refused."""
    from optistop.offline import candidates

    cal = population(600, np.random.default_rng(5))
    fitted = candidates.fit(cal, seed=3, fit_share=0.5)
    depth = set()
    for target in (0.85, 0.95):
        crit = F.Criterion.at(target, reference="2")
        fresh, shared = F.choose(cal, crit, 3), F.choose(cal, crit, 3, fitted=fitted)
        assert shared["choice"] == fresh["choice"] and shared["path"] == fresh["path"]
        assert np.array_equal(shared["fit_idx"], fresh["fit_idx"])
        depth.add(sum(p["certified"] for p in shared["path"]))
    assert len(depth) == 2          # the targets certify the same sequence to different depths
    other = population(600, np.random.default_rng(6))
    with pytest.raises(ValueError, match="other data"):
        F.choose(other, F.Criterion.at(0.95), 3, fitted=fitted)
    with pytest.raises(ValueError, match="another seed"):
        F.choose(cal, F.Criterion.at(0.95), 4, fitted=fitted)


def test_fitted_q_walks_alone_as_a_comparator() -> None:
    """Fitted-Q candidates are fitted, certified on their own walk with the whole budget (the report's
    comparator, as the router's), and never on the served sequence (policy_fit.COMPARATOR_ONLY)."""
    cal = population(600, np.random.default_rng(5))
    ch = F.choose(cal, F.Criterion.at(0.95, reference="2"), 3)
    assert not any(p["name"].startswith("optimal") for p in ch["path"])
    assert ch["optimal_choice"][0] in ("optimal", "fixed:0", "fixed:1", "fixed:2")
    q, c = F.outcome(ch["optimal"], cal)
    assert ch["optimal_choice"][0] != "optimal" or isinstance(ch["optimal"], K.ModelRule)
    assert 0 < c.mean() <= cal.costs[2] and q.mean() > 0
    # the comparator's own walk: the same rule choose finds with fitted-Q as the only model family
    alone = F.choose(cal, F.Criterion.at(0.95, reference="2", whole=0.0), 3, thresholds=False)
    assert alone["optimal_choice"] == ch["optimal_choice"]
    assert F.choose(cal, F.Criterion.at(0.95, reference="2"), 3, optimal=False)["optimal"] is None
