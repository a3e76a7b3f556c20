"""The cascade loop: run a stage, score its answer, ask the stopping rule, maybe escalate.

Triton sits behind one seam, ``CascadeBackend``: the BLS adapter (optistop/serving/bls.py) implements it
with ``InferenceRequest.async_exec``; tests and offline tools implement it directly. Nothing here
imports Triton.

Faults (documented in README, "Faults"): a stage that errors, times out or returns nothing is paid for
and recorded; the request then escalates past it to the next stage that exists and answers with that
stage's output, flagged ``degraded`` with the reason. If no later stage answers, the best answer so far
is returned (degraded); with no answer yet, the largest smaller stage that still lives answers ("degrade to
the living": a policy may skip ahead to a large stage whose backend is dead); only when no stage answers
does the request fail with ``StageFailure``. A quality
predictor that fails or returns NaN leaves the loop without confidences: it then escalates straight to
the largest stage, the quality-safe choice, again flagged degraded. ``fixed:<k>`` never falls back: the
caller asked for that stage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from optistop.features import ex_ante_rows, prompt_rows, stage_row
from optistop.policy import Policy
from optistop.spec import CascadeSpec

NAN = float("nan")


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


@dataclass(frozen=True)
class GenerationOptions:
    """How every stage generates for one request (TensorRT-LLM's ``temperature``, ``runtime_top_p``,
    ``random_seed`` and ``stop_words_list``). The default is greedy with no stop words: what the quality
    predictor was calibrated on and what a backend that takes no ``options`` argument serves."""

    temperature: float = 0.0   # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[tuple[int, ...], ...] = ()   # each stop word's token ids: the engine may end there

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = GenerationOptions()


class CascadeBackend(Protocol):
    async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int) -> StageOutput:
        """Called with ``options=GenerationOptions(...)`` as well when the request is not greedy-plain."""
        ...

    async def score(self, features: Sequence[Sequence[float]]) -> Sequence[float]:
        """N rows of 64 features (Python floats from optistop.features; a backend that sends them on
        makes the float32 array) -> N calibrated confidences."""
        ...


@dataclass(frozen=True)
class CascadeRequest:
    prompt: str
    input_ids: tuple[int, ...]
    max_tokens: int
    lam: float
    policy: Policy
    exclude_input_in_output: bool = True
    stop: tuple[str, ...] = ()                 # stop words: the answer ends before the first one
    options: GenerationOptions = GREEDY
    audit: float | None = None   # this request's audit probability; None: the spec's audit_rate


def find_stop(text: str, stop: Sequence[str]) -> int:
    """Where ``text`` must end for the stop words ``stop``: the start of the earliest occurrence of any of
    them, or -1. The one rule that cuts answers (cascade loop and streaming alike)."""
    hits = [i for i in (text.find(w) for w in stop) if i >= 0]
    return min(hits, default=-1)


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of ``text`` a stream must hold back: the longest suffix that is a
    proper prefix of a stop word (the next token may complete it)."""
    best = 0
    for w in stop:
        for n in range(min(len(w) - 1, len(text)), best, -1):
            if text.endswith(w[:n]):
                best = n
                break
    return best


def cut_at_stop(out: StageOutput, text: str, stop: Sequence[str],
                decode: Callable[[Sequence[int]], str]) -> tuple[StageOutput, str, bool]:
    """(output, text, stopped) of a stage answer cut before its first stop word. The tokens kept are the
    fewest whose text covers the cut text (a token that straddles the stop word's start stays, so the
    log-probs still belong to real tokens); a cut answer did not hit max_tokens."""
    at = find_stop(text, stop)
    if at < 0:
        return out, text, False
    k = next((k for k in range(len(out.token_ids) + 1) if len(decode(out.token_ids[:k])) >= at),
             len(out.token_ids))
    return StageOutput(out.token_ids[:k], out.logprobs[:k], False), text[:at], True


@dataclass
class StageRecord:
    stage: int
    latency_ms: float
    confidence: float = NAN   # NaN: not scored (the stage failed, or the predictor did)
    threshold: float = NAN    # NaN: no stopping decision was taken on it


@dataclass
class CascadeResult:
    text: str
    stage: int
    stage_model: str
    records: list[StageRecord] = field(default_factory=list)
    cost: float = 0.0
    degraded: bool = False
    reasons: list[str] = field(default_factory=list)
    controller_ms: float = 0.0  # time spent outside stage engines: features, predictor, policy
    predictor_ms: float = 0.0   # of which in quality-predictor calls
    token_ids: tuple[int, ...] = ()    # the answering stage's tokens (after a stop word cut)
    logprobs: tuple[float, ...] = ()   # and their log-probs
    finish_reason: str = "stop"        # "length" when the answer ran into max_tokens
    texts: dict[int, str] = field(default_factory=dict)   # decoded answer per scored stage (audits compare them)
    ex_ante: list[float] | None = None                    # the prompt-only estimates, when the policy used them

    @property
    def stages_run(self) -> list[int]:
        return [r.stage for r in self.records]

    @property
    def confidences(self) -> list[float]:
        return [r.confidence for r in self.records]

    @property
    def thresholds(self) -> list[float]:
        return [r.threshold for r in self.records]

    @property
    def stage_latency_ms(self) -> list[float]:
        return [r.latency_ms for r in self.records]


class _Run:
    """State of one request's loop."""

    def __init__(self, req: CascadeRequest, spec: CascadeSpec, backend: CascadeBackend,
                 decode: Callable[[Sequence[int]], str]) -> None:
        self.req, self.spec, self.backend, self.decode = req, spec, backend, decode
        self.n = len(spec.stages)
        self.outputs: dict[int, StageOutput] = {}
        self.texts: dict[int, str] = {}   # decoded outputs, once per stage, cut at a stop word
        # greedy plain requests call generate() as before (backends without ``options`` serve those)
        self.gen_kw = {} if req.options == GREEDY else {"options": req.options}
        self.scored: list[tuple[int, float]] = []   # (stage, calibrated confidence), in run order
        self.result = CascadeResult(text="", stage=-1, stage_model="")
        self.t0 = time.perf_counter()

    async def loop(self) -> CascadeResult:
        req, n = self.req, self.n
        # The kernel's state for one prompt (the replay passes the same as (N, n) arrays): confidences
        # (NaN = not run), ex-ante estimates, answer ids (equal ids = answers that agree; -1 = none)
        conf: list[float] = [NAN] * n
        resp: list[int] = [-1] * n
        ex_ante: list[float] | None = None
        rows = prompt_rows(req.prompt, n)   # the prompt's features, once per request
        if req.policy.uses_ex_ante:
            try:
                ex_ante = await self._score(ex_ante_rows(rows), stage=-1)  # one call for every stage's estimate
                self.result.ex_ante = ex_ante
            except StageFailure as exc:
                return await self._fallback(exc, after=-1, predictor_down=True)
        answers: dict[str, int] = {}  # normalised answer text -> id: equal ids are answers that agree
        for _ in range(n + 1):  # at most every stage once, then a stop
            d = req.policy.decide_one(conf, ex_ante, resp)
            if self.scored:
                self._record(self.scored[-1][0]).threshold = d.threshold
            if d.stop:
                return self._finish(d.answer_stage if d.answer_stage >= 0 else self.scored[-1][0])
            k = d.next_stage
            if not 0 <= k < n or k in self.outputs:
                raise RuntimeError(f"policy {req.policy.name} chose an invalid next stage {k!r} after {self.scored}")
            try:
                out = await self._generate(k)
            except StageFailure as exc:
                if req.policy.name.startswith("fixed"):
                    raise
                return await self._fallback(exc, after=k)
            text = self.texts[k]
            feats = stage_row(rows, req.prompt, text, out.logprobs, out.hit_max_tokens, k)
            try:
                (c,) = await self._score([feats], stage=k)
            except StageFailure as exc:
                if req.policy.name.startswith("fixed"):
                    return self._finish(k, degraded_by=exc)
                return await self._fallback(exc, after=k, predictor_down=True)
            self._record(k).confidence = conf[k] = c
            self.scored.append((k, c))
            norm = " ".join(text.split())
            if norm:
                resp[k] = answers.setdefault(norm, len(answers))
        raise RuntimeError(f"policy {req.policy.name} did not stop after running every stage")

    async def _generate(self, k: int) -> StageOutput:
        stage = self.spec.stages[k]
        timeout = stage.timeout_for(self.req.max_tokens)
        t0 = time.perf_counter()
        try:  # on timeout wait_for cancels generate(), which cancels the call at the engine where it can
            out = await asyncio.wait_for(self.backend.generate(k, self.req.input_ids, self.req.max_tokens,
                                                               **self.gen_kw), timeout=timeout)
        except asyncio.TimeoutError:
            raise StageFailure(k, f"stage '{stage.triton_model}' timed out after {timeout:g}s") from None
        finally:  # a stage that ran is paid for, whether or not it answered
            self.result.records.append(StageRecord(k, (time.perf_counter() - t0) * 1e3))
            self.result.cost += stage.cost
        if not out.token_ids:
            raise StageFailure(k, f"stage '{stage.triton_model}' returned an empty output")
        out, self.texts[k], _ = cut_at_stop(out, self.decode(out.token_ids), self.req.stop, self.decode)
        self.outputs[k] = out
        return out

    async def _score(self, feats: Sequence[Sequence[float]], stage: int) -> list[float]:
        t0 = time.perf_counter()
        try:
            conf = [float(x) for x in await self.backend.score(feats)]
        finally:
            self.result.predictor_ms += (time.perf_counter() - t0) * 1e3
        if len(conf) != len(feats) or not all(math.isfinite(c) for c in conf):
            where = "ex-ante estimates" if stage < 0 else f"stage '{self.spec.stages[stage].triton_model}'"
            raise StageFailure(-1, f"quality predictor returned {conf} for {where}")
        return conf

    async def _fallback(self, exc: StageFailure, after: int, predictor_down: bool = False) -> CascadeResult:
        """Escalate past a failure, else degrade to the best living stage (see module docstring).

        Order: the stages above ``after`` not yet run (only the largest when the predictor is down), then
        the stages not yet tried that are larger than any that answered, from the largest down: a policy
        that skipped ahead to a dead large stage still answers from a smaller living one. Raises
        ``StageFailure`` when nothing can answer."""
        reasons = [str(exc)]
        later = [k for k in range(after + 1, self.n) if k not in self.outputs]
        if predictor_down:
            later = later[-1:]  # without confidences only the largest stage is worth paying for
        tried = {r.stage for r in self.result.records} | set(later)
        # only stages larger than the best that already answered are worth paying for
        smaller = [k for k in range(self.n - 1, max(self.outputs, default=-1), -1) if k not in tried]
        for k in later + smaller:
            try:
                await self._generate(k)
                return self._finish(k, reasons=reasons)
            except StageFailure as exc2:
                reasons.append(str(exc2))
        if self.scored:
            # ties go to the later-run (larger) stage, as in the policies
            return self._finish(max(reversed(self.scored), key=lambda kc: kc[1])[0], reasons=reasons)
        if self.outputs:
            return self._finish(max(self.outputs), reasons=reasons)
        raise StageFailure(exc.stage, "; ".join(reasons))

    def _record(self, k: int) -> StageRecord:
        return next(r for r in self.result.records if r.stage == k)

    def _finish(self, answer: int, reasons: list[str] | None = None,
                degraded_by: StageFailure | None = None) -> CascadeResult:
        r = self.result
        text = self.texts[answer]
        out = self.outputs[answer]
        r.token_ids, r.logprobs = out.token_ids, out.logprobs
        r.finish_reason = "length" if out.hit_max_tokens else "stop"
        r.text = text if self.req.exclude_input_in_output else self.req.prompt + text
        r.stage = answer
        r.texts = self.texts
        r.stage_model = self.spec.stages[answer].triton_model
        r.reasons = list(reasons or []) + ([str(degraded_by)] if degraded_by else [])
        r.degraded = bool(r.reasons)
        r.controller_ms = (time.perf_counter() - self.t0) * 1e3 - sum(r.stage_latency_ms)
        return r


async def run_cascade(req: CascadeRequest, spec: CascadeSpec, backend: CascadeBackend,
                      decode: Callable[[Sequence[int]], str]) -> CascadeResult:
    """Run the stopping loop for one request. Raises ``StageFailure`` only when nothing could answer."""
    return await _Run(req, spec, backend, decode).loop()
