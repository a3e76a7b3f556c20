"""The cascade loop: run a stage, score its answer, ask the stopping rule, maybe escalate.

Triton sits behind one seam, ``CascadeBackend``: the BLS adapter (optistop/serving/bls.py) implements it
with ``InferenceRequest.async_exec``; tests and offline tools implement it directly. Nothing here
imports Triton.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from optistop.config import CascadeSpec
from optistop.features import ex_ante_features, stage_features
from optistop.policy import Policy


@dataclass(frozen=True)
class StageOutput:
    """What a stage engine returns for one prompt (TensorRT-LLM's tensorrt_llm contract, one beam)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    hit_max_tokens: bool


class StageFailure(RuntimeError):
    """A stage engine or the predictor failed for this request; ``stage`` says which (-1: predictor)."""

    def __init__(self, stage: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class CascadeBackend(Protocol):
    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int) -> StageOutput: ...

    async def score(self, features: np.ndarray) -> np.ndarray:
        """(N, 64) float32 features -> (N,) calibrated confidences."""
        ...


@dataclass(frozen=True)
class CascadeRequest:
    prompt: str
    input_ids: tuple[int, ...]
    max_tokens: int
    lam: float
    policy: Policy
    exclude_input_in_output: bool = True


@dataclass
class CascadeResult:
    text: str
    stage: int
    stage_model: str
    stages_run: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    stage_latency_ms: list[float] = field(default_factory=list)
    cost: float = 0.0
    controller_ms: float = 0.0  # time spent outside stage engines: features, predictor, policy


async def run_cascade(req: CascadeRequest, spec: CascadeSpec, backend: CascadeBackend,
                      decode: Callable[[Sequence[int]], str]) -> CascadeResult:
    """Run the stopping loop for one request. Stage failures propagate as ``StageFailure``."""
    n = len(spec.stages)
    costs = spec.costs
    t_start = time.perf_counter()
    ex_ante: list[float] = []
    if req.policy.needs_ex_ante:
        # One predictor call for every stage's prompt-only estimate, before anything runs.
        feats = np.stack([ex_ante_features(req.prompt, k, n) for k in range(n)])
        ex_ante = [float(x) for x in await backend.score(feats)]
    run: list[tuple[int, float]] = []
    outputs: dict[int, StageOutput] = {}
    result = CascadeResult(text="", stage=-1, stage_model="")
    stage_ms = 0.0
    for _ in range(n + 1):  # at most every stage once, then a stop
        decision = req.policy.decide(run, ex_ante, costs, req.lam)
        if run:
            result.thresholds.append(_finite(decision.threshold))
        if decision.stop:
            answer = decision.answer_stage if decision.answer_stage is not None else run[-1][0]
            out = outputs[answer]
            text = decode(out.token_ids)
            result.text = text if req.exclude_input_in_output else req.prompt + text
            result.stage = answer
            result.stage_model = spec.stages[answer].triton_model
            result.controller_ms = (time.perf_counter() - t_start) * 1e3 - stage_ms
            return result
        k = decision.next_stage
        if k is None or not 0 <= k < n or k in outputs:
            raise RuntimeError(f"policy {req.policy.name} chose an invalid next stage {k!r} after {run}")
        t0 = time.perf_counter()
        out = await backend.generate(k, req.input_ids, req.max_tokens)
        ms = (time.perf_counter() - t0) * 1e3
        stage_ms += ms
        outputs[k] = out
        result.stages_run.append(k)
        result.stage_latency_ms.append(ms)
        result.cost += costs[k]
        text = decode(out.token_ids)
        feats = stage_features(req.prompt, text, out.logprobs, out.hit_max_tokens, k, n)
        conf = float((await backend.score(feats[None, :]))[0])
        if not math.isfinite(conf):
            raise StageFailure(-1, f"quality predictor returned {conf} for stage {spec.stages[k].name}")
        run.append((k, conf))
        result.confidences.append(conf)
    raise RuntimeError(f"policy {req.policy.name} did not stop after running every stage")


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0
