"""The cascade loop without Triton: a scripted backend stands in for the stage engines and predictor."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from optistop import policy as K
from optistop.cascade import CascadeRequest, StageFailure, StageOutput, run_cascade
from optistop.features import EX_ANTE_SLOT, stage_of
from optistop.spec import load_spec
from tests.unit.test_policy import synthetic_book

SPEC = load_spec(check_paths=False)  # the loop needs costs and names, not weights
ALPHA = {i: ch for i, ch in enumerate("abcdefghij")}


class ScriptedBackend:
    """Stage k answers token ids ``answers[k]``; the predictor returns ``post[k]`` / ``ante[k]``."""

    def __init__(self, answers: dict[int, Sequence[int]], post: dict[int, float], ante: Sequence[float],
                 fail_stage: int | None = None) -> None:
        self.answers, self.post, self.ante, self.fail_stage = answers, post, list(ante), fail_stage
        self.calls: list[int] = []

    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int) -> StageOutput:
        self.calls.append(stage)
        if stage == self.fail_stage:
            raise StageFailure(stage, f"stage {stage} is down")
        return StageOutput(tuple(self.answers[stage]), tuple(-0.1 for _ in self.answers[stage]), False)

    async def score(self, features: np.ndarray) -> np.ndarray:
        stages = stage_of(features)
        return np.asarray([self.ante[s] if f[EX_ANTE_SLOT] > 0.5 else self.post[s]
                           for s, f in zip(stages, features)], dtype=np.float32)


def decode(ids: Sequence[int]) -> str:
    return "".join(ALPHA[i] for i in ids)


def make_policy(name: str, n: int, lam: float = 10.0) -> K.Policy:
    """paper / fixed:k as served (identity Platt: the predictor's confidences are calibrated); optimal from
    an artifact fitted on synthetic outcomes (tests/unit/test_policy.py) at this exact lambda."""
    if name == "paper":
        return K.PaperRule(np.asarray(SPEC.costs), lam, np.tile([1.0, 0.0], (n, 1)))
    if name.startswith("fixed:"):
        return K.FixedRule(int(name[6:]), name)
    return synthetic_book().make(name, lam)[0]


def run(backend: ScriptedBackend, policy: str, lam: float = 10.0, exclude: bool = True):
    req = CascadeRequest("1+1=", (1, 5, 5), 8, lam, make_policy(policy, 3, lam), exclude)
    return asyncio.run(run_cascade(req, SPEC, backend, decode))


def test_fixed_policy_runs_only_its_stage() -> None:
    for k in range(3):
        b = ScriptedBackend({0: [0], 1: [1], 2: [2]}, {0: 0.2, 1: 0.5, 2: 0.9}, [0.3, 0.6, 0.9])
        r = run(b, f"fixed:{k}")
        assert b.calls == [k] and r.stages_run == [k] and r.stage == k
        assert r.text == ALPHA[k] and r.cost == SPEC.costs[k]
        assert len(r.confidences) == len(r.thresholds) == len(r.stage_latency_ms) == 1


def test_paper_policy_escalates_until_confidence_clears_its_threshold() -> None:
    # lambda = 1: thresholds (1 - 0.5 * 1/4.5) / 2 = 0.4444 and (1 - 0.5 * 4.5/10) / 2 = 0.3875 (ERRATA 5).
    b = ScriptedBackend({0: [0], 1: [1, 2], 2: [3]}, {0: 0.30, 1: 0.40, 2: 0.1}, [0.5, 0.5, 0.5])
    r = run(b, "paper", lam=1.0)
    assert b.calls == [0, 1] and r.stage == 1 and r.text == "bc"
    assert r.thresholds == pytest.approx([0.44444, 0.3875], abs=1e-4)
    assert r.cost == pytest.approx(1.0 + 4.5)
    assert r.confidences == pytest.approx([0.30, 0.40])


def test_optimal_never_escalates_when_quality_is_cheap() -> None:
    # lambda = 0.5 < every escalation cost: running stage 1 or 2 can never pay for itself.
    b = ScriptedBackend({0: [0], 1: [1], 2: [2]}, {0: 0.1, 1: 0.9, 2: 0.99}, [0.1, 0.9, 0.99])
    r = run(b, "optimal", lam=0.5)
    assert r.stages_run == [0] and r.cost == 1.0


def test_optimal_cost_is_the_sum_over_the_stages_it_ran() -> None:
    b = ScriptedBackend({0: [0], 1: [1], 2: [2]}, {0: 0.05, 1: 0.10, 2: 0.95}, [0.05, 0.1, 0.95])
    r = run(b, "optimal", lam=1000.0)
    assert r.stages_run[-1] == 2 and r.stage == 2
    assert r.cost == pytest.approx(sum(SPEC.costs[k] for k in r.stages_run))
    assert len(r.thresholds) == len(r.confidences) == len(r.stages_run)


def test_include_input_in_output() -> None:
    b = ScriptedBackend({0: [0, 1]}, {0: 0.9}, [0.9, 0.9, 0.9])
    assert run(b, "fixed:0", exclude=False).text == "1+1=ab"


def test_fixed_policy_never_falls_back() -> None:
    b = ScriptedBackend({0: [0]}, {0: 0.9}, [0.9] * 3, fail_stage=1)
    with pytest.raises(StageFailure) as info:
        run(b, "fixed:1")
    assert info.value.stage == 1 and b.calls == [1]


def test_failed_stage_is_paid_for_and_escalated_past() -> None:
    # Paper policy with lambda 0: thresholds 0.889 / 0.775, confidence 0.1 escalates from stage 0 to 1,
    # which fails; the cascade answers from stage 2, unscored, flagged degraded.
    b = ScriptedBackend({0: [0], 2: [2]}, {0: 0.1, 2: 0.1}, [0.5] * 3, fail_stage=1)
    r = run(b, "paper", lam=0.0)
    assert b.calls == [0, 1, 2] and r.stage == 2 and r.text == "c"
    assert r.degraded and "stage 1 is down" in r.reasons[0]
    assert r.stages_run == [0, 1, 2] and r.cost == pytest.approx(15.5)
    assert r.confidences[0] == pytest.approx(0.1) and math.isnan(r.confidences[1]) and math.isnan(r.confidences[2])


def test_last_stage_failure_returns_best_answer_so_far() -> None:
    b = ScriptedBackend({0: [0], 1: [1]}, {0: 0.3, 1: 0.2}, [0.5] * 3, fail_stage=2)
    r = run(b, "paper", lam=0.0)
    assert b.calls == [0, 1, 2] and r.stage == 0 and r.degraded  # 0.3 > 0.2: stage 0 is the best so far


class SlowBackend(ScriptedBackend):
    async def generate(self, stage, input_ids, max_tokens):
        if stage == 2:
            await asyncio.sleep(5)
        return await super().generate(stage, input_ids, max_tokens)


def test_timeout_counts_as_a_failure() -> None:
    spec = load_spec(check_paths=False)
    fast = replace(spec, stages=spec.stages[:2] + (replace(spec.stages[2], timeout_s=0.05),))
    b = SlowBackend({0: [0], 1: [1], 2: [2]}, {0: 0.1, 1: 0.6}, [0.5] * 3)
    req = CascadeRequest("1+1=", (1,), 8, 0.0, make_policy("paper", 3, 0.0))
    r = asyncio.run(run_cascade(req, fast, b, decode))
    assert r.stage == 1 and r.degraded and "timed out after 0.05s" in r.reasons[0]


def test_empty_output_is_a_stage_failure() -> None:
    b = ScriptedBackend({0: [], 1: [1]}, {1: 0.9}, [0.5] * 3)
    r = run(b, "paper", lam=0.0)
    assert r.stage == 1 and r.degraded and "returned an empty output" in r.reasons[0]


def test_nan_confidence_falls_back_to_the_largest_stage() -> None:
    b = ScriptedBackend({0: [0], 2: [2]}, {0: float("nan")}, [0.5] * 3)
    r = run(b, "paper", lam=0.0)
    assert b.calls == [0, 2] and r.stage == 2 and r.degraded
    assert "quality predictor returned [nan]" in r.reasons[0]


def test_nothing_answers_raises() -> None:
    class Down(ScriptedBackend):
        async def generate(self, stage, input_ids, max_tokens):
            raise StageFailure(stage, f"stage {stage} is down")

    with pytest.raises(StageFailure, match="stage 0 is down; stage 1 is down; stage 2 is down"):
        run(Down({}, {}, [0.5] * 3), "paper", lam=0.0)


class SkipToLargest:
    """A rule that skips straight to stage 2 and stops there, as optimal or a router does when the ex-ante
    estimates say small and medium are hopeless (not fixed:2, which never falls back)."""

    name, uses_ex_ante = "router", False
    decide_one = K.one_by_arrays

    def decide(self, s: K.State) -> K.Decision:
        ran = not np.isnan(s.conf[0]).all()
        return K.Decision(np.array([ran]), np.array([-1 if ran else 2]), np.array([2 if ran else -1]),
                          np.array([0.0]))


def test_skip_ahead_to_a_dead_stage_degrades_to_the_largest_living_smaller_one() -> None:
    b = ScriptedBackend({0: [0], 1: [1]}, {1: 0.9}, [0.01, 0.02, 0.99], fail_stage=2)
    req = CascadeRequest("1+1=", (1, 5, 5), 8, 50.0, SkipToLargest(), True)
    r = asyncio.run(run_cascade(req, SPEC, b, decode))
    assert b.calls == [2, 1] and r.stage == 1 and r.text == "b" and r.degraded
    assert "stage 2 is down" in r.reasons[0] and r.stages_run == [2, 1]


def test_dead_predictor_and_dead_largest_stage_degrade_to_the_next_living_stage() -> None:
    class NoPredictor(ScriptedBackend):
        async def score(self, features):
            raise StageFailure(-1, "quality predictor failed: Stub process 'quality_predictor_0_0' is not healthy.")

    b = NoPredictor({0: [0], 1: [1]}, {}, [], fail_stage=2)
    r = run(b, "optimal")
    assert b.calls == [2, 1] and r.stage == 1 and r.degraded
    assert "not healthy" in r.reasons[0] and "stage 2 is down" in r.reasons[1]



@pytest.mark.parametrize("ante0, calls", [(0.9, [0]), (0.3, [2])])
def test_ante_router_asks_the_predictor_first_and_runs_the_stage_it_picks(ante0: float, calls: list[int]) -> None:
    """The ex-ante router as served (policy "ante", lambda 20, the spec's costs 1 / 4.5 / 10): the loop scores
    the ex-ante estimates before any stage runs, then runs only argmin_k c_k + 20 (1 - e_k) (stage 0 at 0.9:
    3 < 10.2 < 14.5; at 0.3: 15 > 10.2, stage 2)."""
    b = ScriptedBackend({0: [0], 2: [2]}, {0: 0.1, 2: 0.9}, [ante0, 0.5, 0.99])
    rule = K.ante_rule(np.asarray(SPEC.costs, float), 20.0)
    r = asyncio.run(run_cascade(CascadeRequest("1+1=", (1, 5, 5), 8, 20.0, rule, True), SPEC, b, decode))
    assert b.calls == calls and r.stages_run == calls and r.stage == calls[0] and not r.degraded
    assert r.ex_ante is not None and r.ex_ante[0] == pytest.approx(ante0)
