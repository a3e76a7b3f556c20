"""Audit sampling in the served cascade, off the request's critical path (the statistics: optistop.audit).

After a request is answered, if it can be audited (its answer was accepted before the reference stage, or
stages were skipped) and the audit budget draws it (optistop.drift.Budget: ``audit_rate`` credits per
request; the request's ``audit`` input instead is its own probability, outside the budget), a background
task in the cascade's event loop runs every stage the request did not run, scores each
new answer with the quality predictor, compares the served answer with the reference stage's, appends a
record to the rotated JSONL audit log and updates the monitor, the gauges and the drift alarm. The task is
created when the response is ready and first yields to the loop, so the request's own answer never waits
for it; its stage calls share the engines with traffic (a few per cent more load on the larger stages).

Degraded answers (a fault forced a fallback) are not audited: the fault, not the policy, chose them.
The drift alarm is optistop.drift's: a label-free CUSUM on every request on the operating point (reaching
the reference) and a CUSUM on audited disagreement, against policy.json's ``drift_baselines``. On an alarm
audits are boosted (the banked budget) and, with ``on_drift = "safer"``, the default operating point
steps to the next safer certified one (``safer_points``) until a recalibrated policy.json is picked up
(CascadeService.reload_policy).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optistop import audit as A
from optistop import drift as D
from optistop.cascade import GREEDY, CascadeBackend, CascadeRequest, CascadeResult, cut_at_stop
from optistop.features import prompt_rows, stage_row
from optistop.policy_artifact import PolicyBook
from optistop.spec import CascadeSpec

log = logging.getLogger("optistop.audit")
DEFAULT_TOLERANCE = 0.945


def safer_points(book: PolicyBook) -> list[tuple[str, float | None]]:
    """The next safer certified operating points, safest last: the artifact's ``safer`` list when it has
    one, else the operating family at higher lambdas of the grid (the fixed-sequence test that chose the
    operating point certified every lambda above it), then always the reference stage: the one the promise
    is relative to (the criterion's; on a ladder that is not monotone it need not be the last), the last
    for a format-1 artifact."""
    if isinstance(book.art.get("safer"), list):
        return [(str(p["policy"]), p.get("lambda")) for p in book.art["safer"]]
    out: list[tuple[str, float | None]] = []
    if book.default_policy in ("optimal", "router", "ante"):   # their lambda sequences were certified downward
        above = [lam for lam, _ in book.grid if lam > book.default_lambda * (1 + 1e-9)]
        out = [(book.default_policy, lam) for lam in above[3::4][:3]]   # about x2.4 per step (grid x1.25)
    return out + [(f"fixed:{book.reference}", None)]


class Auditor:
    def __init__(self, spec: CascadeSpec, book: PolicyBook, log_path: Path, metrics: Any = None,
                 rng: random.Random | None = None, model: str = "cascade") -> None:
        self.spec, self.metrics, self.model = spec, metrics, model
        self.log = A.AuditLog(log_path, int(spec.audit_log_max_mb * (1 << 20)))
        self.rng = rng or random.Random()
        self._tasks: set[asyncio.Task] = set()
        self.grader = A.load_grader(spec.audit_grader)   # module:function, imported here (no layer climbs)
        self.monitor = A.Monitor(1.0, DEFAULT_TOLERANCE, spec.audit_window, spec.audit_min)
        self.budget = D.Budget(spec.audit_rate)
        self.mix: D.Cusum | None = None       # the label-free mix warning (optistop.drift)
        self.quality: D.Cusum | None = None   # the sequential quality alarm on audited disagreement
        self.use(book)

    def use(self, book: PolicyBook) -> None:
        """A (new) policy artifact: its reference quality and tolerance; old audits describe the old policy."""
        self.book = book
        self.version = int(book.art.get("version", 1))
        crit = book.art.get("criterion", {})
        self.ref = book.reference   # answers are audited against the stage the promise is relative to
        self.monitor.tolerance = (self.spec.audit_tolerance if self.spec.audit_tolerance is not None
                                  else float(crit.get("t_lcb", DEFAULT_TOLERANCE)))
        self.monitor.q_ref = (self.spec.audit_reference_quality if self.spec.audit_reference_quality is not None
                              else float(book.art.get("reference_accuracy", 1.0)))
        base = book.art.get("agreement_baseline")
        margin = float(crit.get("target", 0.95)) - float(crit.get("t_lcb", DEFAULT_TOLERANCE))
        self.monitor.agreement_tolerance = None if base is None or self.spec.audit_tolerance is not None \
            else float(base) - margin   # label-free: a drift from what the bound read at calibration
        self.monitor.reset()
        b = book.art.get("drift_baselines")   # written by optistop calibrate for the operating point
        if isinstance(b, dict) and {"reach", "early", "disagree_early"} <= set(b):
            self.mix = D.Cusum(float(b["reach"]), D.DELTA_MIX, D.H_MIX)
            self.quality = D.Cusum(float(b["disagree_early"]), D.DELTA_QUALITY, D.H_QUALITY)
            self.budget.p_early = float(b["early"])
        else:   # an older artifact: the window bound alarms (Monitor.drifted), audits drawn at audit_rate
            self.mix = self.quality = None
            log.warning("policy.json has no drift_baselines (recalibrate to write them): the drift alarm "
                        "falls back to the audit window's bound")
        if self.mix is None:   # nothing to bank for: audit_rate of the auditable requests, as it says
            self.budget.p_early, self.budget.calm = 1.0, 1.0
        else:
            self.budget.calm = D.CALM
        self.budget.boost = False
        self.alarm = False
        self.ladder, self.step = safer_points(book), 0
        self._gauge("policy_version", self.version)
        self._gauge("drift_alarm", 0)
        self._gauge("safer_step", 0)

    def after(self, req: CascadeRequest, result: CascadeResult, backend: CascadeBackend,
              decode: Callable[[Sequence[int]], str]) -> None:
        """Count the request and maybe schedule its audit (never raises, never waits)."""
        self.monitor.served(result.cost)
        if result.degraded:
            return
        n = len(self.spec.stages)
        early = result.stage != self.ref   # answered by another stage than the reference: it can disagree
        self.budget.earn()
        # label-free, requests on the operating point only: more reaching the reference than calibrated
        if self.mix is not None and req.policy.name == self.book.default_policy and self.mix.add(not early):
            self._alarm("mix", self.monitor.estimate())
        # only what can disagree (an answer accepted before the reference) or is incomplete (stages skipped)
        auditable = early or len(result.texts) < n
        if req.audit is not None:   # the request's own probability: outside the budget
            if not (auditable and req.audit > 0 and self.rng.random() < req.audit):
                return
        elif not (auditable and self.spec.audit_rate > 0 and self.budget.draw(self.rng.random())):
            return
        task = asyncio.get_running_loop().create_task(self._audit(req, result, backend, decode))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _audit(self, req: CascadeRequest, result: CascadeResult, backend: CascadeBackend,
                     decode: Callable[[Sequence[int]], str]) -> None:
        await asyncio.sleep(0)   # let the request's response go first
        spec, n = self.spec, len(self.spec.stages)
        texts = dict(result.texts)
        conf: list[float | None] = [None] * n
        for rec in result.records:
            conf[rec.stage] = rec.confidence if math.isfinite(rec.confidence) else None
        missing = [k for k in range(n) if k not in texts]
        cost, t0 = 0.0, time.perf_counter()
        gen_kw = {} if req.options == GREEDY else {"options": req.options}
        try:
            rows = prompt_rows(req.prompt, n)
            for k in missing:
                stage = spec.stages[k]
                cost += stage.cost   # paid once called, whether or not it answers
                out = await asyncio.wait_for(backend.generate(k, req.input_ids, req.max_tokens, **gen_kw),
                                             timeout=stage.timeout_for(req.max_tokens))
                # like with like: the request's options, and its stop words cut as the served answer was
                out, texts[k], _ = cut_at_stop(out, decode(out.token_ids), req.stop, decode)
                feats = stage_row(rows, req.prompt, texts[k], out.logprobs, out.hit_max_tokens, k)
                (c,) = await backend.score([feats])
                conf[k] = float(c) if math.isfinite(float(c)) else None
        except Exception as exc:   # a failed audit is counted and logged; the traffic goes on
            log.warning("audit failed (%s: %s); not counted in the quality estimate", type(exc).__name__, exc)
            self._count("audit_failures_total")
            self._count("audit_cost_total", cost)
            self.monitor.audit_cost += cost
            return
        ref = self.ref
        served, reference = texts[result.stage], texts[ref]
        agree = A.normalise(served) == A.normalise(reference)
        graded = self._grade(req.prompt, served, reference)
        record: dict[str, Any] = {
            "v": 1, "time": round(time.time(), 3), "request_id": uuid.uuid4().hex,
            "prompt_sha256": hashlib.sha256(req.prompt.encode()).hexdigest(),
            "model": self.model, "policy": req.policy.name, "lambda": req.lam, "policy_version": self.version,
            "stages": list(spec.stage_names), "costs": list(spec.costs),
            "stages_run": result.stages_run, "served_stage": result.stage, "audit_stages": missing,
            "answers": [texts.get(k) for k in range(n)], "confidences": conf, "ex_ante": result.ex_ante,
            "reference_stage": ref, "reference_answer": reference, "agree": agree,
            "cost_served": result.cost, "cost_audit": cost, "audit_ms": round((time.perf_counter() - t0) * 1e3, 3)}
        if graded is not None:
            record["served_correct"], record["reference_correct"] = graded
        if req.stop or not req.options.greedy:
            # two samples disagree by chance: logged, but kept out of the estimate and alarm, whose baseline
            # (agreement_baseline) was read on greedy answers; stop words alone compare like with like
            record["stop"], record["sampled"] = list(req.stop), not req.options.greedy
            record["options"] = {"temperature": req.options.temperature, "top_p": req.options.top_p,
                                 "seed": req.options.seed}
        if spec.audit_keep_prompts:
            record["prompt"] = req.prompt
        try:
            self.log.append(record)
        except OSError as exc:
            log.error("audit log %s not writable: %s", self.log.path, exc)
        if record.get("sampled"):
            self._count("audits_total")
            self._count("audit_cost_total", cost)
            return
        was = self.monitor.alarm
        self.monitor.add(A.audit_of(record))
        raised = self.quality is None and self.monitor.alarm and not was   # fallback: the window's bound
        if self.quality is not None and result.stage != ref and self.quality.add(not agree):
            raised = True
        self._count("audits_total")
        self._count("audit_cost_total", cost)
        est = self.monitor.estimate()
        for key, value in (("quality_estimate", est.estimate), ("quality_lower_bound", est.lower),
                           ("quality_upper_bound", est.upper), ("audits_in_window", est.n),
                           ("audit_cost_share", self.monitor.cost_share())):
            self._gauge(key, value)
        if raised:
            self._alarm("quality", est)

    def _alarm(self, kind: str, est: A.Estimate) -> None:
        """The drift alarm (optistop.drift): the mix warning or the quality alarm, whichever crosses. It stays
        on until a new policy is used; audits are boosted (the banked budget) and, with on_drift = "safer",
        the default operating point steps to the next safer one."""
        self.alarm = self.budget.boost = True
        self._count("drift_alarms_total")
        self._gauge("drift_alarm", 1)
        what = ("more requests reach the reference stage than at calibration (label-free)" if kind == "mix"
                else f"the audited disagreement rose above its calibration baseline ({self.quality.p0:.3f})"
                if self.quality is not None else
                f"the audited quality's upper bound {est.upper:.3f} fell below the tolerance")
        log.warning("drift alarm (%s): %s; estimate %.3f (%s, %d audits, bounds %.3f..%.3f); audits boosted; %s",
                    kind, what, est.estimate, est.mode, est.n, est.lower, est.upper,
                    "recalibrate with `optistop calibrate --from-audit`" if self.spec.on_drift != "safer"
                    else "stepping to a safer operating point until recalibrated")
        if self.spec.on_drift != "safer" or self.step >= len(self.ladder):
            return
        name, lam = self.ladder[self.step]
        self.step += 1
        self.book.default_policy = name.split("@")[0]
        if lam is not None:
            self.book.default_lambda = float(lam)
        log.warning("on_drift=safer: default operating point now %s%s", name,
                    f" at lambda {lam:g}" if lam is not None else "")
        self._gauge("safer_step", self.step)
        self.monitor.reset()   # the audits so far describe the point just left
        # no baseline for the safer point: the mix warning rests until recalibration (the safer point
        # escalates more by design); the quality alarm keeps the default point's bar, which it should meet
        self.mix = None
        if self.quality is not None:
            self.quality.reset()

    def _grade(self, prompt: str, served: str, reference: str) -> tuple[bool, bool] | None:
        if self.grader is None:
            return None
        try:
            return bool(self.grader(prompt, served)), bool(self.grader(prompt, reference))
        except ValueError:   # a prompt the grader cannot label (e.g. not a task-suite prompt): no label
            return None

    def _count(self, family: str, value: float = 1.0) -> None:
        if self.metrics is not None and value:
            self.metrics.count(family, value)

    def _gauge(self, key: str, value: float) -> None:
        if self.metrics is not None:
            self.metrics.gauge(key, value, self.model)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for audits in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
