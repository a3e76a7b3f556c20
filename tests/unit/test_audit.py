"""Audit statistics, the audit log, the served auditor (scripted backend) and the hot policy swap."""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from optistop import ROOT
from optistop import audit as A
from optistop.cascade import CascadeRequest, run_cascade
from optistop.policy_artifact import load_policy
from optistop.serving.audit import Auditor, safer_points
from optistop.serving.prometheus import TritonMetrics
from tests import fake_pb_utils
from tests.unit.test_cascade import SPEC, ScriptedBackend, decode, make_policy

POLICY = ROOT / "model_repository" / "quality_predictor" / "1" / "policy.json"


def test_wilson_matches_the_textbook_values() -> None:
    # 0/10 at 95% (z = 1.96): the classic Wilson upper end 0.2775; 5/10: 0.2366..0.7634
    assert A.wilson(0, 10, 1.96)[0] == 0.0
    assert A.wilson(0, 10, 1.96)[1] == pytest.approx(0.2775, abs=1e-4)
    lo, hi = A.wilson(5, 10, 1.96)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert A.wilson(0, 0) == (0.0, 1.0)


def test_agreement_bound_is_one_minus_disagreement_over_reference_quality() -> None:
    e = A.agreement_estimate(5, 100, 0.8, 1.96)
    assert e.estimate == pytest.approx(1 - 0.05 / 0.8)
    lo, hi = A.wilson(5, 100, 1.96)
    assert (e.lower, e.upper) == (pytest.approx(1 - hi / 0.8), pytest.approx(1 - lo / 0.8))
    assert e.mode == "agreement" and e.n == 100


def test_graded_estimate_is_the_ratio_with_its_delta_method_interval() -> None:
    served, ref = [1, 1, 0, 1], [1, 1, 1, 0]
    e = A.graded_estimate([float(x) for x in served], [float(x) for x in ref], 2, 1.0)
    r = 3 / 3
    d = [s - r * f for s, f in zip(served, ref)]          # 0, 0, -1, 1: mean 0, sd sqrt(2/3)
    se = math.sqrt(sum(x * x for x in d) / 3) / (0.75 * 2)
    assert e.estimate == pytest.approx(1.0)
    assert (e.lower, e.upper) == (pytest.approx(1 - se), pytest.approx(1 + se))


def test_monitor_alarms_on_evidence_of_low_quality_only() -> None:
    healthy = A.Monitor(q_ref=1.0, tolerance=0.945, window=50, min_audits=10)
    for _ in range(30):
        assert not healthy.add(A.Audit(True, 1.0, True, True))
    bad = A.Monitor(q_ref=1.0, tolerance=0.945, window=50, min_audits=10)
    raised = [bad.add(A.Audit(False, 1.0, i % 2 == 0, True)) for i in range(12)]   # served right half the time
    assert raised.index(True) == 9 and sum(raised) == 1           # at the 10th audit, once
    assert bad.estimate().upper < 0.945
    bad.reset()
    assert not bad.alarm and bad.estimate().n == 0


def test_log_rotates_by_size_and_reads_back_oldest_first(tmp_path: Path) -> None:
    log = A.AuditLog(tmp_path / "audit.jsonl", max_bytes=400, keep=2)
    recs = [{"i": i, "served_stage": 0, "answers": ["x"], "confidences": [0.5], "reference_stage": 1,
             "agree": True, "cost_served": 1.0, "cost_audit": 10.0} for i in range(12)]
    for r in recs:
        log.append(r)
    files = A.log_files(tmp_path / "audit.jsonl")
    assert [f.name for f in files] == ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    assert all(f.stat().st_size <= 400 for f in files)
    got = [r["i"] for r in A.read_log(tmp_path / "audit.jsonl")]
    assert got == sorted(got) and got[-1] == 11 and len(got) < 12   # the oldest file was dropped


def test_corrupt_and_partial_lines_are_skipped_with_a_warning_naming_the_line(tmp_path: Path) -> None:
    good = {"served_stage": 0, "answers": ["a", "b"], "confidences": [0.9, None], "reference_stage": 1,
            "agree": False, "cost_served": 1.0, "cost_audit": 10.0}
    p = tmp_path / "audit.jsonl"
    p.write_text(json.dumps(good) + "\n" + '{"served_stage": 0, "answ\n' + json.dumps({"x": 1}) + "\n"
                 + json.dumps(good) + "\n", encoding="utf-8")
    warnings: list[str] = []
    recs = list(A.read_log(p, warnings.append))
    assert len(recs) == 2
    assert len(warnings) == 2 and f"{p}:2: skipped" in warnings[0] and f"{p}:3: skipped" in warnings[1]
    s = A.summarise(recs, q_ref=0.5, tolerance=0.9)
    assert s["audits"] == 2 and s["all"]["disagree"] == 1.0 and s["all"]["estimate"] == pytest.approx(1 - 1 / 0.5)


def _auditor(tmp_path: Path, cusum: bool = False, **spec_changes) -> tuple[Auditor, TritonMetrics]:
    """An auditor over the committed policy; ``cusum=False`` drops its drift baselines, so the alarm is the
    window bound (what a policy calibrated before the baselines existed gets) and one audit can raise it."""
    fake_pb_utils.MetricFamily.families.clear()
    metrics = TritonMetrics(fake_pb_utils)
    spec = replace(SPEC, **spec_changes)
    policy = POLICY
    if not cusum:
        doc = json.loads(POLICY.read_text(encoding="utf-8"))
        doc.pop("drift_baselines", None)
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(doc), encoding="utf-8")
    return Auditor(spec, load_policy(policy), tmp_path / "audit.jsonl", metrics, random.Random(0)), metrics


def _gauge(name: str) -> float:
    fam = fake_pb_utils.MetricFamily.families[f"optistop_cascade_{name}"]
    return fam.metrics[-1].value()


def test_auditor_runs_the_stages_not_run_after_the_answer_and_logs_them(tmp_path: Path) -> None:
    auditor, metrics = _auditor(tmp_path, audit_rate=1.0, audit_min=1, audit_keep_prompts=True,
                                audit_reference_quality=0.9)
    # stage 0 answers "ab" with confidence 0.99: fixed:0 serves it; stages 1 and 2 answer "ab" and "ac"
    backend = ScriptedBackend({0: [0, 1], 1: [0, 1], 2: [0, 2]}, {0: 0.99, 1: 0.5, 2: 0.5}, [0.5] * 3)

    async def go():
        req = CascadeRequest("1+1=", (1, 5, 5), 8, 0.0, make_policy("fixed:0", 3))
        res = await run_cascade(req, SPEC, backend, decode)
        calls_at_answer = list(backend.calls)
        auditor.after(req, res, backend, decode)
        assert backend.calls == calls_at_answer      # nothing ran before the caller got the answer
        await auditor.drain()
        return res

    res = asyncio.run(go())
    assert res.stage == 0 and backend.calls == [0, 1, 2]
    (rec,) = list(A.read_log(tmp_path / "audit.jsonl"))
    assert rec["answers"] == ["ab", "ab", "ac"] and rec["audit_stages"] == [1, 2] and rec["agree"] is False
    assert rec["cost_audit"] == SPEC.costs[1] + SPEC.costs[2] and rec["cost_served"] == SPEC.costs[0]
    assert rec["prompt"] == "1+1=" and len(rec["prompt_sha256"]) == 64
    assert rec["confidences"][1] == pytest.approx(0.5) and rec["confidences"][0] == pytest.approx(0.99)
    metrics.flush()
    assert fake_pb_utils.MetricFamily.families["optistop_cascade_audits_total"].metrics[0].value() == 1
    # one audit, one disagreement: the label-free estimate is 1 - 1/0.9 and the alarm is up
    assert _gauge("quality_estimate") == pytest.approx(1 - 1 / 0.9)
    assert _gauge("drift_alarm") == 1.0 and auditor.monitor.alarm


def test_audits_compare_with_the_criterions_reference_stage_not_the_last(tmp_path: Path) -> None:
    """A policy certified against stage 1 (the best of a ladder that is not monotone): the served stage-0
    answer "ab" agrees with stage 1's "ab" though the last stage says "ac"; the log names stage 1 as the
    reference, and the recalibration rows label agreement with it (stage 2's "ac" is wrong there)."""
    from optistop.pipeline.recalibrate import records_from_audit

    doc = json.loads(POLICY.read_text(encoding="utf-8"))
    doc.pop("drift_baselines", None)
    doc["criterion"] = dict(doc["criterion"], reference=1)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(doc), encoding="utf-8")
    fake_pb_utils.MetricFamily.families.clear()
    auditor = Auditor(replace(SPEC, audit_rate=1.0, audit_min=1), load_policy(policy), tmp_path / "audit.jsonl",
                      TritonMetrics(fake_pb_utils), random.Random(0))
    backend = ScriptedBackend({0: [0, 1], 1: [0, 1], 2: [0, 2]}, {0: 0.99, 1: 0.5, 2: 0.5}, [0.5] * 3)

    async def go(policy_name: str):
        req = CascadeRequest("1+1=", (1, 5, 5), 8, 0.0, make_policy(policy_name, 3))
        res = await run_cascade(req, SPEC, backend, decode)
        auditor.after(req, res, backend, decode)
        await auditor.drain()

    asyncio.run(go("fixed:0"))
    asyncio.run(go("fixed:1"))   # answered by the reference itself, every stage after it skipped: complete it
    asyncio.run(go("fixed:2"))   # the last stage is not the reference: its answer can disagree, and does
    recs = list(A.read_log(tmp_path / "audit.jsonl"))
    assert [(r["served_stage"], r["reference_stage"], r["agree"]) for r in recs] == [
        (0, 1, True), (1, 1, True), (2, 1, False)]
    rows, skipped = records_from_audit(tmp_path / "audit.jsonl")
    assert skipped == 0 and [st["correct"] for st in rows[0]["stages"]] == [True, True, False]


def test_no_audit_at_rate_zero_or_for_degraded_answers(tmp_path: Path) -> None:
    auditor, _ = _auditor(tmp_path, audit_rate=0.0)
    backend = ScriptedBackend({0: [0], 1: [0], 2: [0]}, {0: 0.99, 1: 0.5, 2: 0.5}, [0.5] * 3)

    async def go(audit):
        req = CascadeRequest("1+1=", (1,), 8, 0.0, make_policy("fixed:0", 3), audit=audit)
        res = await run_cascade(req, SPEC, backend, decode)
        auditor.after(req, res, backend, decode)
        await auditor.drain()

    asyncio.run(go(None))
    assert backend.calls == [0] and not (tmp_path / "audit.jsonl").exists()
    asyncio.run(go(1.0))                      # the request's own rate overrides the spec's
    assert backend.calls == [0, 0, 1, 2] and (tmp_path / "audit.jsonl").exists()


def test_on_drift_safer_steps_up_the_certified_ladder(tmp_path: Path) -> None:
    auditor, _ = _auditor(tmp_path, on_drift="safer", audit_min=1)
    book = auditor.book
    ladder = safer_points(book)
    lam0 = book.default_lambda
    assert ladder[-1] == ("fixed:2", None) and all(lam > lam0 for _, lam in ladder[:-1])
    auditor._alarm("quality", auditor.monitor.estimate())
    assert book.default_policy == ladder[0][0] and book.default_lambda == ladder[0][1]
    for _ in range(len(ladder) + 2):          # past the end it stays at the safest point
        auditor._alarm("quality", auditor.monitor.estimate())
    assert book.default_policy == "fixed:2" and book.make(None, None)[0].name == "fixed:2"


def test_policy_file_swap_is_picked_up_and_a_bad_one_refused(tmp_path: Path) -> None:
    from optistop.serving.cascade_service import CascadeService

    class Enc:
        end_id, pad_id = 0, 0

    path = tmp_path / "policy.json"
    shutil.copy(POLICY, path)
    svc = CascadeService(SPEC, Enc(), policies=load_policy(path))  # type: ignore[arg-type]
    svc.policy_path, svc._policy_stamp = path, (0, 0)
    old = svc.policies
    art = json.loads(path.read_text())
    art["version"], art["operating"] = 2, {"policy": "fixed:1", "lambda": None}
    path.write_text(json.dumps(art))
    assert svc.reload_policy(force=True) and svc.policies is not old
    assert svc.policies.default_policy == "fixed:1" and svc.policies.art["version"] == 2
    path.write_text("{not json")
    assert not svc.reload_policy(force=True) and svc.policies.default_policy == "fixed:1"


def test_bench_runs_the_cascade_with_auditing_on_beside_off() -> None:
    from optistop.perf.bench import AUDITED, audit_on_vs_off, configurations, input_data

    assert configurations(SPEC, 0.05)[AUDITED] == configurations(SPEC, 0.05)["cascade"]
    assert AUDITED not in configurations(SPEC, 0.0)
    assert input_data(["1+1="], None, None, 8, 0.05)["data"][0]["audit"] == [0.05]
    table = {"cascade": {"1": {"latency_p50_ms": 10.0, "latency_p99_ms": 20.0}},
             AUDITED: {"1": {"latency_p50_ms": 11.0, "latency_p99_ms": 30.0}}}
    assert audit_on_vs_off(table)["1"] == {"p50_on": 11.0, "p99_on": 30.0, "p50_off": 10.0, "p99_off": 20.0,
                                           "p50_ratio": 1.1, "p99_ratio": 1.5}


@pytest.mark.parametrize("line, field", [
    ("audit_rate = 1.5", "cascade.audit_rate"), ("audit_rate = -0.1", "cascade.audit_rate"),
    ('on_drift = "panic"', "cascade.on_drift"), ('audit_grader = "gpt"', "cascade.audit_grader"),
    ('audit_grader = "tiny_tasks"', "cascade.audit_grader"),
    ('audit_grader = "a b:c"', "cascade.audit_grader"),
    ("audit_window = 0", "cascade.audit_window"), ("audit_keep_prompts = 1", "cascade.audit_keep_prompts"),
    ("policy_watch_s = -1", "cascade.policy_watch_s"),
    ("audit_reference_quality = 0", "cascade.audit_reference_quality"),
])
def test_audit_spec_keys_are_checked_and_named(tmp_path: Path, line: str, field: str) -> None:
    from optistop.spec import DEFAULT_SPEC, SpecError, load_spec

    (tmp_path / "models").symlink_to(DEFAULT_SPEC.parent / "models")
    text = DEFAULT_SPEC.read_text().replace("[cascade]\n", f"[cascade]\n{line}\n", 1)
    (tmp_path / "spec.toml").write_text(text)
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        load_spec(tmp_path / "spec.toml")
    ok = DEFAULT_SPEC.read_text().replace(
        "[cascade]\n", '[cascade]\naudit_rate = 0.5\non_drift = "safer"\naudit_log = "logs/a.jsonl"\n', 1)
    (tmp_path / "ok.toml").write_text(ok)
    spec = load_spec(tmp_path / "ok.toml")
    assert (spec.audit_rate, spec.on_drift, spec.audit_log) == (0.5, "safer", (tmp_path / "logs/a.jsonl").resolve())


@pytest.mark.parametrize("value", [1.5, -0.5, float("nan")])
def test_bad_audit_input_is_refused_with_its_name(value: float) -> None:
    import numpy as np

    from optistop.serving.request import RequestError, parse_request
    from tests.unit.test_request import BOOK, words

    inputs = {"text_input": np.array([[b"1+1="]], dtype=object), "audit": np.array([[value]], np.float32)}
    with pytest.raises(RequestError, match="input 'audit' is"):
        parse_request(inputs, SPEC, words, BOOK)
    inputs["audit"] = np.array([[0.25]], np.float32)
    assert parse_request(inputs, SPEC, words, BOOK).audit == 0.25


def test_audit_cli_summarises_and_names_a_corrupt_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rec = {"served_stage": 0, "answers": ["a", "a"], "confidences": [0.9, 0.9], "reference_stage": 1,
           "agree": True, "cost_served": 1.0, "cost_audit": 10.0, "policy_version": 3}
    log = tmp_path / "audit.jsonl"
    log.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "agree": False}) + "\n{broken\n")
    assert A.main([str(log), "--reference-quality", "0.8", "--json"]) == 0
    out, err = capsys.readouterr()
    s = json.loads(out)
    assert s["audits"] == 2 and s["all"]["estimate"] == pytest.approx(1 - 0.5 / 0.8) and s["policy_versions"] == ["3"]
    assert f"{log}:3: skipped" in err
    assert A.main([str(tmp_path / "none.jsonl")]) == 2


def test_label_free_alarm_compares_with_the_calibration_baseline() -> None:
    # served ids vs reference ids: 1 of 4 differ, one has no answer (-1): P(disagree) = 2/4, q_ref 0.8
    assert A.agreement_baseline([1, 2, -1, 3], [1, 2, 3, 4], 0.8) == pytest.approx(1 - 0.5 / 0.8)
    m = A.Monitor(q_ref=0.8, tolerance=0.945, window=100, min_audits=10)
    for i in range(40):            # 20% disagreement: label-free 0.75, far below the quality tolerance
        m.add(A.Audit(i % 5 != 0, 0.0))
    assert m.drifted()
    m.agreement_tolerance = 0.75 - 0.005 - 0.1   # the calibration set read 0.75 too: no drift
    assert not m.drifted()


def test_safer_points_are_stored_and_read_back() -> None:
    from optistop.pipeline.recalibrate import with_safer_points
    from optistop.policy_artifact import PolicyBook

    art = json.loads(POLICY.read_text())
    derived = safer_points(PolicyBook(art))
    stored = with_safer_points(dict(art))["safer"]
    assert [(p["policy"], p["lambda"]) for p in stored] == derived
    art["safer"] = [{"policy": "fixed:1", "lambda": None}, {"policy": "fixed:2", "lambda": None}]
    assert safer_points(PolicyBook(art)) == [("fixed:1", None), ("fixed:2", None)]
    # an ex-ante router operating point steps up its own lambdas, like the router, then the reference
    ante = dict(art, operating={"policy": "ante", "lambda": 20.0})
    del ante["safer"]
    ladder = safer_points(PolicyBook(ante))
    assert [p for p, _ in ladder[:-1]] == ["ante"] * (len(ladder) - 1) and len(ladder) >= 2
    assert all(lam > 20.0 for _, lam in ladder[:-1]) and ladder[-1] == ("fixed:2", None)


def test_safer_steps_end_at_the_criterion_reference_and_the_twin_agrees() -> None:
    """On a ladder that is not monotone the promise is relative to the best stage, not the last: on drift
    the server's safest step is that reference stage (it was the last, whatever the criterion said), and
    the replay's twin (optistop.offline.stream.safer_ladder) steps through the same points."""
    from optistop.offline import policy_fit as F
    from optistop.offline.stream import safer_ladder
    from optistop.policy_artifact import PolicyBook

    art = json.loads(POLICY.read_text())
    art.pop("safer", None)
    art["criterion"] = dict(art["criterion"], reference=1)
    for op in ({"policy": "ante", "lambda": 20.0}, {"policy": "router", "lambda": 20.0}):
        ladder = safer_points(PolicyBook(dict(art, operating=op)))
        assert ladder[-1] == ("fixed:1", None) and len(ladder) >= 2
        cal = F.Arrays(np.full((4, 3), 0.5), np.ones((4, 3), bool), np.asarray(art["costs"], float),
                       np.full((4, 3), 0.5))
        twin = safer_ladder(cal, (op["policy"], 20.0), {"reference": 1, "answer": PolicyBook(art).answer})
        assert [name for name, _ in twin] == [p if lam is None else f"{p}@{lam:g}" for p, lam in ladder]
    del art["criterion"]["reference"]                     # format 1 named none: the last stage
    assert safer_points(PolicyBook(art))[-1] == ("fixed:2", None)


def test_audit_grader_is_none_or_module_function_loaded_by_name() -> None:
    from optistop.audit import check_grader, load_grader
    from optistop.tiny.tasks import grade

    assert load_grader("none") is None
    assert load_grader("optistop.tiny.tasks:grade") is grade       # imported at initialize, by name
    assert check_grader("my.pkg:is_right") == "my.pkg:is_right"       # grammar only: loaded later
    for bad, why in (("tiny_tasks", "not a grader; valid: none | module:function"),
                     ("optistop.tiny.tasks:nope", "cannot import nope from optistop.tiny.tasks"),
                     ("no_such_module_x:f", "cannot import f from no_such_module_x"),
                     ("optistop.audit:Z", "optistop.audit.Z is not callable")):
        with pytest.raises(ValueError, match=why):
            load_grader(bad)


def test_sampled_audits_are_left_out_of_the_summary() -> None:
    from optistop.audit import summarise

    base = {"served_stage": 0, "answers": ["1", "2"], "confidences": [0.9, 0.9], "reference_stage": 1,
            "cost_served": 1.0, "cost_audit": 10.0}
    recs = [dict(base, agree=True)] * 20 + [dict(base, agree=False, sampled=True)] * 30
    s = summarise(recs, 1.0, 0.945)
    assert s["audits"] == 20 and s["all"]["disagree"] == 0.0 and not s["alarm"]


def test_server_mix_warning_fires_on_traffic_reaching_the_reference_and_boosts_audits(tmp_path: Path) -> None:
    from optistop.drift import H_MIX

    auditor, _ = _auditor(tmp_path, audit_rate=0.05)
    book = auditor.book
    book.art["drift_baselines"] = {"reach": 0.2, "early": 0.8, "disagree_early": 0.1}
    auditor.use(book)
    assert auditor.mix is not None and auditor.quality is not None and not auditor.alarm
    backend = ScriptedBackend({0: [0], 1: [0], 2: [0]}, {0: 0.99, 1: 0.5, 2: 0.5}, [0.5] * 3)

    async def go(policy: str, times: int) -> None:
        book.default_policy = policy       # the requests are on the operating point
        for _ in range(times):
            req = CascadeRequest("1+1=", (1,), 8, 0.0, make_policy(policy, 3))
            auditor.after(req, await run_cascade(req, SPEC, backend, decode), backend, decode)
        await auditor.drain()

    asyncio.run(go("fixed:1", 200))       # accepted before the reference: calm, within the budget
    assert not auditor.alarm and auditor.budget.spent <= 0.05 * 200
    step = math.log(0.35 / 0.2)           # each request reaching the reference adds log(p1 / p0)
    asyncio.run(go("fixed:2", math.ceil(H_MIX / step) - 1))
    assert not auditor.alarm
    asyncio.run(go("fixed:2", 1))
    assert auditor.alarm and auditor.budget.boost and _gauge("drift_alarm") == 1.0


class OptionsBackend(ScriptedBackend):
    """Records the options each stage call was given (a sampled or stop-word request)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.options: list = []

    async def generate(self, stage: int, input_ids, max_tokens: int, options=None):
        self.options.append(options)
        return await super().generate(stage, input_ids, max_tokens)


def test_audit_runs_the_reference_like_the_request_and_cuts_it_at_its_stop_words(tmp_path: Path) -> None:
    from optistop.cascade import GenerationOptions

    auditor, _ = _auditor(tmp_path, audit_rate=1.0)
    # stage 0 answers "ab" (no stop word in it); the reference answers "acb", which the stop word "c" cuts
    # to "a", as the request would have been served by it
    backend = OptionsBackend({0: [0, 1], 1: [0, 1], 2: [0, 2, 1]}, {0: 0.99, 1: 0.5, 2: 0.5}, [0.5] * 3)
    sampled = GenerationOptions(temperature=0.7, top_p=0.9, seed=5)

    async def go(stop: tuple[str, ...], options: GenerationOptions):
        req = CascadeRequest("1+1=", (1,), 8, 0.0, make_policy("fixed:0", 3), stop=stop, options=options)
        auditor.after(req, await run_cascade(req, SPEC, backend, decode), backend, decode)
        await auditor.drain()

    asyncio.run(go(("c",), GenerationOptions()))
    asyncio.run(go(("c",), sampled))
    first, second = list(A.read_log(tmp_path / "audit.jsonl"))
    assert first["answers"] == ["ab", "ab", "a"] and first["agree"] is False and first["stop"] == ["c"]
    assert backend.options[:3] == [None, None, None]           # greedy: called as before, no options
    assert backend.options[3:] == [sampled] * 3                 # the audit's stages got the request's options
    assert second["sampled"] is True and second["options"]["temperature"] == 0.7
    assert auditor.monitor.estimate().n == 1                    # the sampled audit stays out of the estimate
