"""End to end against a real tritonserver (started once per session): gRPC and HTTP, policies, costs,
lambda monotonicity, concurrency, and parity with the stage runner outside Triton."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from optistop.client.cascade import Answer, ask, make_client
from optistop.engines.runner import StageModel
from optistop.spec import load_spec
from optistop.tiny.tasks import generate_split

SPEC = load_spec()
PROMPTS = [it.prompt for it in generate_split("test", 1, seed=11)]  # 12 prompts, every family and level


@pytest.fixture(scope="module")
def grpc(server):
    return make_client(server.cfg.grpc_url, "grpc")


@pytest.fixture(scope="module")
def http(server):
    return make_client(server.cfg.http_url, "http")


def _same(a: Answer, b: Answer) -> None:
    assert (a.text, a.stage, a.stage_model, a.stages_run, a.cost) == (b.text, b.stage, b.stage_model,
                                                                     b.stages_run, b.cost)
    assert a.confidences == pytest.approx(b.confidences, abs=1e-4)
    assert a.thresholds == pytest.approx(b.thresholds, abs=1e-4, nan_ok=True)   # NaN: no stage left


def test_grpc_and_http_give_the_same_result(grpc, http) -> None:
    for p in PROMPTS[:6]:
        _same(ask(grpc, "grpc", p), ask(http, "http", p))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_fixed_policy_answers_from_that_stage(grpc, k: int) -> None:
    for p in PROMPTS[:4]:
        a = ask(grpc, "grpc", p, policy=f"fixed:{k}")
        assert a.stage == k and a.stages_run == [k]
        assert a.stage_model == SPEC.stages[k].triton_model
        assert a.cost == pytest.approx(SPEC.costs[k])
        assert 0.0 <= a.confidences[0] <= 1.0


@pytest.mark.parametrize("policy", ["optimal", "paper", "random"])
def test_arrays_have_one_entry_per_stage_run_and_cost_adds_up(grpc, policy: str) -> None:
    for p in PROMPTS:
        a = ask(grpc, "grpc", p, policy=policy)
        n = len(a.stages_run)
        assert n >= 1 and len(a.confidences) == len(a.thresholds) == len(a.stage_latency_ms) == n
        assert len(set(a.stages_run)) == n and a.stage in a.stages_run
        assert a.cost == pytest.approx(sum(SPEC.costs[k] for k in a.stages_run))
        assert all(ms > 0 for ms in a.stage_latency_ms)


def test_ante_router_runs_the_one_stage_the_ex_ante_estimates_pick(grpc) -> None:
    """Policy "ante" (the whole-data ex-ante router): one stage per request, chosen before any stage runs;
    at lambda 0.01 quality is worth nothing next to a cost step (>= 3.5), so stage 0 always; at 1e6 only
    the estimates count, which send the hard prompts on (the 12 prompts span every task level)."""
    cheap = [ask(grpc, "grpc", p, policy="ante", lam=0.01) for p in PROMPTS]
    assert all(a.stages_run == [0] and a.cost == pytest.approx(SPEC.costs[0]) for a in cheap)
    dear = [ask(grpc, "grpc", p, policy="ante", lam=1e6) for p in PROMPTS]
    assert all(len(a.stages_run) == 1 and a.stage == a.stages_run[0] for a in dear)
    assert any(a.stage > 0 for a in dear)
    assert all(a.cost == pytest.approx(SPEC.costs[a.stage]) for a in dear)


def test_raising_lambda_buys_quality(grpc) -> None:
    """lambda prices quality: over the prompts, a higher lambda never spends less on stages on average.
    (Per prompt the fitted rule at one lambda is not forced to nest inside the next lambda's.)"""
    lambdas = [2.0, 30.0, 1000.0]
    cost = [sum(ask(grpc, "grpc", p, lam=lam, policy="optimal").cost for p in PROMPTS) for lam in lambdas]
    assert cost == sorted(cost) and cost[-1] > cost[0], cost


def test_answer_equals_the_reported_stage_run_directly(grpc, tiny_dir) -> None:
    models = [StageModel(s.checkpoint) for s in SPEC.stages]
    for p in PROMPTS:
        a = ask(grpc, "grpc", p)
        direct = models[a.stage].generate([p], SPEC.max_tokens_default)[0]
        assert a.text == direct.text, (p, a.stage)


def test_32_concurrent_requests_all_succeed_and_match_sequential(grpc, server) -> None:
    prompts = (PROMPTS * 3)[:32]
    sequential = {p: ask(grpc, "grpc", p) for p in set(prompts)}

    def one(p: str) -> Answer:  # one client per thread: gRPC clients are not shared across threads here
        return ask(make_client(server.cfg.grpc_url, "grpc"), "grpc", p)

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(one, prompts))
    for p, a in zip(prompts, answers):
        _same(a, sequential[p])


def test_chat_messages_answer_like_the_raw_text(grpc) -> None:
    """The tiny family has no chat template: a messages request is its last user turn, answered alike."""
    for p in PROMPTS[:4]:
        msgs = [{"role": "system", "content": "You add."}, {"role": "user", "content": p}]
        _same(ask(grpc, "grpc", msgs), ask(grpc, "grpc", p))
