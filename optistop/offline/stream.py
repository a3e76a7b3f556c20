"""The served cascade's offline twin: traffic in order, with audit sampling, the drift alarm, the safe
response and recalibration from audited traffic.

$ optistop replay --fit CAL.jsonl --stream TRAFFIC.jsonl --audit 0.05 [--on-drift safer] [--out F]
$ python -m optistop.offline.stream build artifacts/mmlupro/llama.jsonl --out artifacts/shift   # shifted streams

Each request of TRAFFIC runs through the policy kernel (optistop.policy.simulate, the code the server
runs). A uniform share ``--audit`` of requests is audited: every stage the request did not run is run (its
cost is counted as audit cost) and the audit goes to the monitor of optistop.audit, the same estimator and
alarm the server uses. Labels: the records' ``correct`` act as the grader (``--label-free``: agreement with
the reference's answer only, which needs ``response`` texts). On an alarm the twin moves to the next
safer certified operating point (``--on-drift safer``) and, once ``--recal-audits`` audits were made since
the alarm window began, refits the operating point on those audits together with the calibration set
(what ``optistop calibrate --from-audit LOG --prompts CAL`` does) and swaps the policy.

Printed per window of ``--window`` requests: delivered quality relative to the reference stage (true labels
of every request, which the monitor never sees), cost per request with audits included, the monitor's
estimate and bounds, the alarm and the policy. ``--out`` writes {"windows": [...], "summary": {...}}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optistop import drift as D
from optistop import policy as K
from optistop.offline import policy_fit as F


def fit_operating(cal: F.Arrays, crit: F.Criterion, seed: int) -> tuple[K.Policy, tuple, dict[str, Any]]:
    """The ONE adapter to the operating-point choice (issue 28 rewrites policy_fit.choose): (rule, choice,
    everything choose returned). Re-point here when choose's return value changes."""
    ch = F.choose(cal, crit, seed)
    return ch["rule"], tuple(ch["choice"]), ch


def safer_ladder(cal: F.Arrays, choice: tuple, ch: dict[str, Any], steps: int = 3) -> list[tuple[str, K.Policy]]:
    """The next safer certified operating points, safest last, as the server's
    optistop.serving.audit.safer_points: the chosen family at higher lambdas (the fixed-sequence test
    certified every lambda above the chosen one), then always the reference stage of the criterion."""
    out: list[tuple[str, K.Policy]] = []
    name, param = choice[0], choice[1] if len(choice) > 1 else None
    if name in ("optimal", "router", "ante") and param is not None:
        above = [lam for lam in F.LAMBDAS if lam > float(param) * (1 + 1e-9)]
        for lam in above[3::4][:steps]:      # about x2.4 in lambda per step (the grid is x1.25)
            rule = (K.ante_rule(cal.costs, lam) if name == "ante" else
                    (F.fit_optimal if name == "optimal" else F.fit_router)(cal, lam, ch["answer"]))
            out.append((f"{name}@{lam:g}", rule))
    ref = int(ch["reference"])
    return out + [(f"fixed:{ref}", K.FixedRule(ref))]


def concat(a: F.Arrays, b: F.Arrays) -> F.Arrays:
    cat = lambda x, y: None if x is None or y is None else np.concatenate([x, y])
    return F.Arrays(np.concatenate([a.conf, b.conf]), np.concatenate([a.correct, b.correct]), a.costs,
                    cat(a.ex_ante, b.ex_ante), cat(a.resp, b.resp))


def baselines(fit: F.Arrays, rule: K.Policy, ref: int = -1) -> dict[str, float]:
    """What the detectors compare traffic with, read on ``fit`` for ``rule`` (optistop.drift): the share of
    rows answered by the reference stage ``ref``, the share answered by another ("early": the only answers
    that can disagree with it; before it on a monotone ladder), and the disagreement among those."""
    _, ans = K.simulate(rule, fit.conf, fit.ex_ante, fit.resp)
    early = ans != ref % fit.conf.shape[1]
    dis = disagrees(fit, np.arange(len(ans)), ans, ref)
    return {"reach": float(1 - early.mean()), "early": float(early.mean()),
            "disagree_early": float(dis[early].mean()) if early.any() else 0.0}


def disagrees(a: F.Arrays, idx: np.ndarray, ans: np.ndarray, ref: int = -1) -> np.ndarray:
    """Served answer differs from the reference stage's: answer ids where the records have texts (-1, no
    answer, agrees with nothing), else the labels differ (no texts to compare)."""
    if a.resp is not None:
        got, want = a.resp[idx, ans], a.resp[idx, ref]
        return (got != want) | (got < 0)
    return a.correct[idx, ans] != a.correct[idx, ref]


def run_stream(cal: F.Arrays, tr: F.Arrays, rate: float, crit: F.Criterion, seed: int = 0, window: int = 100,
               on_drift: str = "safer", label_free: bool = False, recal_audits: int = 150,
               recal_with: str = "balanced", h_mix: float = D.H_MIX, h_quality: float = D.H_QUALITY,
               delta_mix: float = D.DELTA_MIX, delta_quality: float = D.DELTA_QUALITY, calm: float = D.CALM,
               bank: float = D.BANK, mix: bool = True) -> dict[str, Any]:
    """Play ``tr`` in order; returns {"windows": [...], "events": [...], "summary": {...}}. The detectors,
    the budget and their defaults are optistop.drift's, as in the server."""
    if label_free and tr.resp is None:
        raise ValueError("--label-free needs the stages' response texts in TRAFFIC (agreement)")
    N, n = tr.conf.shape
    u = np.random.default_rng(seed).random(N)
    # one reference stage for the whole stream, fixed on CAL: a recalibration must not move the bar
    ref = F.reference_stage(cal, crit.reference)
    crit = dataclasses.replace(crit, reference=str(ref))
    rule, choice, ch = fit_operating(cal, crit, seed)
    ladder, step, fit_on = safer_ladder(cal, choice, ch), -1, cal
    name = first_choice = "/".join(map(str, choice))
    base = baselines(cal, rule, ref)
    c_mix, c_q = D.Cusum(base["reach"], delta_mix, h_mix), D.Cusum(base["disagree_early"], delta_quality, h_quality)
    budget = D.Budget(rate, base["early"], calm, bank)
    served, audited = np.zeros(N, bool), np.zeros(N, bool)
    cost, audit_cost = np.zeros(N), np.zeros(N)
    policy_at = [""] * N
    alarms: list[tuple[int, str]] = []
    events: list[dict[str, Any]] = []
    since: list[int] = []            # complete rows gathered since the first alarm (the recalibration set)
    pending, stepped, mixing = False, False, mix
    ran, ans = K.simulate(rule, tr.conf, tr.ex_ante, tr.resp)
    t = 0
    while t < N:
        changed = False
        for i in range(t, N):
            served[i] = tr.correct[i, ans[i]]
            cost[i] = float(ran[i] @ tr.costs)
            policy_at[i] = name
            budget.earn()
            early = ans[i] != ref
            raised = []
            if mixing and c_mix.add(not early):
                raised.append("mix")
            if early or not ran[i].all():   # something to run: an audit, drawn from the budget
                if budget.draw(float(u[i])):
                    audited[i] = True
                    audit_cost[i] = float((~ran[i]) @ tr.costs)
                    if pending:
                        since.append(i)
                    if early and c_q.add(bool(disagrees(tr, np.array([i]), ans[i:i + 1], ref)[0])):
                        raised.append("quality")
            elif pending and budget.credit >= 1.0 and u[i] < budget.chance():
                since.append(i)   # every stage ran: a complete row for free, drawn at the audits' chance
            for kind in raised:
                alarms.append((i, kind))
                events.append({"request": i, "event": "alarm", "kind": kind, "cusum": round(
                    (c_mix if kind == "mix" else c_q).s, 3)})
                pending, budget.boost = True, True
                if on_drift == "safer" and not stepped and step + 1 < len(ladder):
                    step, stepped = step + 1, True
                    name, rule = ladder[step]
                    mixing = False   # as the server: the mix warning rests until recalibration, the
                    c_q.reset()      # quality alarm keeps the operating point's bar
                    events.append({"request": i, "event": "safer", "policy": name})
                    changed = True
            if pending and len(since) >= recal_audits:
                fit_on = _recal_set(cal, _audited_rows(tr, since, label_free, ref), recal_with, seed)
                rule, choice, ch = fit_operating(fit_on, crit, seed)
                ladder, step, stepped = safer_ladder(fit_on, choice, ch), -1, False
                b = baselines(fit_on, rule, ref)
                c_mix.rebase(b["reach"])
                c_q.rebase(b["disagree_early"])
                budget.p_early, budget.boost, mixing = b["early"], False, mix
                name = "recal:" + "/".join(map(str, choice))
                events.append({"request": i, "event": "recalibrated", "policy": name, "rows": len(since)})
                since, pending, changed = [], False, True
            if changed:
                t = i + 1
                if t < N:
                    r2, a2 = K.simulate(rule, tr.conf[t:], None if tr.ex_ante is None else tr.ex_ante[t:],
                                        None if tr.resp is None else tr.resp[t:])
                    ran[t:], ans[t:] = r2, a2
                break
        else:
            t = N
        if not changed:
            break
    return {"windows": _windows(tr, served, cost, audit_cost, audited, alarms, policy_at, window, ref),
            "events": events, "summary": _summary(tr, crit, rate, served, cost, audit_cost, audited, alarms,
                                                   events, first_choice, ref)}


def _windows(tr: F.Arrays, served: np.ndarray, cost: np.ndarray, audit_cost: np.ndarray, audited: np.ndarray,
             alarms: list[tuple[int, str]], policy_at: list[str], window: int, stage: int = -1
             ) -> list[dict[str, Any]]:
    ref, total, N = tr.correct[:, stage].astype(float), cost + audit_cost, len(served)
    out = []
    for s in range(0, N, window):
        e = min(s + window, N)
        q_rel = float(served[s:e].mean() / max(ref[s:e].mean(), 1e-9))
        out.append({"start": s, "end": e, "quality_rel": round(q_rel, 6),
                    "cost": round(float(total[s:e].mean()), 6), "serve_cost": round(float(cost[s:e].mean()), 6),
                    "audits": int(audited[s:e].sum()), "alarm": any(s <= x < e for x, _ in alarms),
                    "policy": policy_at[e - 1]})
    return out


def _summary(tr: F.Arrays, crit: F.Criterion, rate: float, served: np.ndarray, cost: np.ndarray,
             audit_cost: np.ndarray, audited: np.ndarray, alarms: list[tuple[int, str]],
             events: list[dict[str, Any]], first_choice: str, stage: int) -> dict[str, Any]:
    N, n = tr.conf.shape
    ref = tr.correct[:, stage].astype(float)
    recal = [ev["request"] for ev in events if ev["event"] == "recalibrated"]
    after = recal[0] + 1 if recal else N
    acc = tr.correct.mean(axis=0)
    adequate = [k for k in range(n) if acc[k] >= crit.target * acc[stage]]
    first = lambda kind: next((i for i, k in alarms if k == kind), None)
    return {"n": N, "audit_rate": rate, "audits": int(audited.sum()), "initial_choice": first_choice,
            "reference_stage": stage,
            "alarms": [i for i, _ in alarms], "alarm_kinds": [k for _, k in alarms],
            "first_mix_warning": first("mix"), "first_quality_alarm": first("quality"), "recalibrated_at": recal,
            "quality_rel": round(float(served.mean() / ref.mean()), 6),
            "quality_rel_after_recal": round(float(served[after:].mean() / max(ref[after:].mean(), 1e-9)), 6)
            if after < N else None,
            "cost": round(float((cost + audit_cost).mean()), 6), "audit_cost": round(float(audit_cost.mean()), 6),
            "cheapest_adequate_stage_cost": float(tr.costs[adequate[0]]), "stage_accuracy": acc.round(4).tolist()}


RECAL_WITH = ("balanced", "all", "audits")


def _recal_set(cal: F.Arrays, audits: F.Arrays, how: str, seed: int) -> F.Arrays:
    """What the recalibration fits on: the audits with as many calibration rows drawn at random
    ("balanced": the traffic weighs half, however few the audits), with the whole calibration set ("all":
    what ``calibrate --from-audit --prompts CAL`` does), or the audits alone."""
    if how == "audits":
        return audits
    if how == "all":
        return concat(cal, audits)
    pick = np.random.default_rng(seed).permutation(len(cal.conf))[:len(audits.conf)]
    return concat(cal.take(pick), audits)


def _audited_rows(tr: F.Arrays, idx: Sequence[int], label_free: bool, ref: int = -1) -> F.Arrays:
    """Audited rows as calibration rows. Label-free: "correct" = agrees with the reference stage's answer."""
    sub = tr.take(np.asarray(idx))
    if label_free and sub.resp is not None:
        want = sub.resp[:, ref][:, None]
        sub.correct = (sub.resp == want) & (sub.resp >= 0)
        sub.correct[:, ref] = True
    return sub


def subject(rec: dict[str, Any]) -> str:
    """A record's subject: its meta "subject=..." (RouteLLM) or "category=..." (MMLU-Pro), else its id's folder."""
    for m in rec.get("meta", []) or []:
        key, _, val = str(m).partition("=")
        if key in ("subject", "category") and val:
            return val
    return str(rec.get("id", "")).rsplit("/", 1)[0]


def build_shift(records: list[dict[str, Any]], easy_share: float = 0.5, pre: int = 1000, seed: int = 0
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(calibration, stream, how): subjects ranked by the first stage's accuracy; the top ``easy_share`` of
    records (whole subjects) are easy. Calibration: half the easy records. Stream: ``pre`` other easy
    records, then every hard record, each part shuffled: the shift sits at request ``pre``."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(subject(r), []).append(r)
    acc = {s: float(np.mean([bool(r["stages"][0]["correct"]) for r in rs])) for s, rs in by.items()}
    easy, hard, count = [], [], 0
    for s in sorted(by, key=lambda s: -acc[s]):   # the easiest subjects while they fit in the share
        fits = not hard and (not easy or count + len(by[s]) <= easy_share * len(records))
        (easy if fits else hard).append(s)
        count += len(by[s])
    rng = np.random.default_rng(seed)
    e = [r for s in easy for r in by[s]]
    h = [r for s in hard for r in by[s]]
    e = [e[i] for i in rng.permutation(len(e))]
    h = [h[i] for i in rng.permutation(len(h))]
    half = len(e) // 2
    cal, stream = e[:half], e[half:half + pre] + h
    how = {"easy_subjects": easy, "hard_subjects": hard, "calibration": len(cal), "stream": len(stream),
           "shift_at": min(pre, len(e) - half), "first_stage_accuracy": {s: round(acc[s], 4) for s in by}}
    return cal, stream, how


def print_run(res: dict[str, Any], shift: int | None = None) -> None:
    for w in res["windows"]:
        print(f"{w['start']:6d}-{w['end']:<6d} quality {w['quality_rel']:.3f}  cost {w['cost']:6.3f} "
              f"(audits {w['audits']:2d})  {'ALARM ' if w['alarm'] else '      '}{w['policy']}")
    for ev in res["events"]:
        print(f"request {ev['request']}: {ev['event']} {ev.get('policy', '')} {ev.get('estimate', '')}")
    s = res["summary"]
    delay = f" ({s['alarms'][0] - shift} after the shift at {shift})" if shift is not None and s["alarms"] else ""
    print(f"{s['n']} requests, {s['audits']} audits ({s['audits'] / max(s['n'], 1):.1%}); first alarm at "
          f"{s['alarms'][0] if s['alarms'] else 'never'}{delay}; quality {s['quality_rel']:.3f} of the reference "
          f"over the stream, {s['quality_rel_after_recal'] if s['quality_rel_after_recal'] is not None else 'n/a'}"
          f" after the recalibration; cost {s['cost']:.3f} per request ({s['audit_cost']:.3f} of it audits), "
          f"cheapest adequate single stage {s['cheapest_adequate_stage_cost']:g}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m optistop.offline.stream build FILE --out DIR``: write cal.jsonl, stream.jsonl, how.json."""
    ap = argparse.ArgumentParser(prog="python -m optistop.offline.stream", description=main.__doc__)
    ap.add_argument("command", choices=["build"])
    ap.add_argument("file", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--easy-share", type=float, default=0.5)
    ap.add_argument("--pre", type=int, default=1000, help="easy requests before the shift")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rescore", action="store_true",
                    help="replace the records' confidences by a verifier fitted on the calibration part only")
    args = ap.parse_args(argv)
    from optistop.offline.replay_files import read_records

    records = read_records(args.file)[0]
    cal, stream, how = build_shift(records, args.easy_share, args.pre, args.seed)
    if args.rescore or any(st.get("confidence") is None for r in records for st in r["stages"]):
        from optistop.offline.fit import score_from_cal

        score_from_cal(cal, stream, args.seed)
        how["verifier"] = "fitted on the calibration records only (out-of-fold there), applied to the stream"
    args.out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("cal.jsonl", cal), ("stream.jsonl", stream)):
        (args.out / name).write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    (args.out / "how.json").write_text(json.dumps(how, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}/cal.jsonl ({how['calibration']}), stream.jsonl ({how['stream']}, shift at "
          f"{how['shift_at']}); easy subjects: {', '.join(how['easy_subjects'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def hedge_baseline(cal: F.Arrays, tr: F.Arrays, rate: float, crit: F.Criterion, seed: int = 0,
                   window: int = 100, grid: Sequence[float] = tuple(np.linspace(0.0, 1.0, 11))) -> dict[str, Any]:
    """The paper's online threshold learning (section 4.2; the retired optistop/offline/online.py) on the
    same stream with the same audits: exponential weights over stage-order threshold rules, loss (cost +
    lambda (1 - q)) / (sum(costs) + lambda), warm-started with full information on CAL, then updated only on
    audited requests, importance-weighted by 1 / rate. lambda: the smallest of the grid whose best rule on
    CAL reaches the target. Quality and cost are the learner's expectation over its weights."""
    import itertools

    n = cal.conf.shape[1]
    rules = [K.ThresholdRule(0, np.asarray(th, float)) for th in itertools.product(grid, repeat=n - 1)]
    qc, cc = map(np.stack, zip(*(F.outcome(r, cal) for r in rules), strict=True))
    qt, ct = map(np.stack, zip(*(F.outcome(r, tr) for r in rules), strict=True))
    stage = F.reference_stage(cal, crit.reference)     # quality relative to the criterion's reference
    last = cal.correct[:, stage].mean()
    lam = next((lm for lm in F.LAMBDAS if qc[int(np.argmin((cc + lm * (1 - qc)).mean(1)))].mean()
                >= crit.target * last), F.LAMBDAS[-1])
    scale = float(tr.costs.sum()) + lam
    est = ((cc + lam * (1 - qc)) / scale).sum(axis=1)
    N = len(tr.conf)
    audited = np.random.default_rng(seed).random(N) < rate    # the twin's audits (same seed, same draw)
    q, c = np.zeros(N), np.zeros(N)
    logk = np.log(len(rules))
    for t in range(N):
        eta = np.sqrt(8 * logk / (len(cal.conf) + t + 1))
        w = np.exp(-eta * (est - est.min()))
        w /= w.sum()
        q[t], c[t] = w @ qt[:, t], w @ ct[:, t]
        if audited[t]:
            c[t] += float(tr.costs.sum()) - c[t]     # the audit runs what the request did not
            est += (ct[:, t] + lam * (1 - qt[:, t])) / scale / rate
    ref = tr.correct[:, stage].astype(float)
    wins = [{"start": s, "quality_rel": round(float(q[s:s + window].mean() / max(ref[s:s + window].mean(), 1e-9)), 6),
             "cost": round(float(c[s:s + window].mean()), 6)} for s in range(0, N, window)]
    return {"lambda": lam, "rules": len(rules), "windows": wins,
            "quality_rel": round(float(q.mean() / ref.mean()), 6), "cost": round(float(c.mean()), 6)}
