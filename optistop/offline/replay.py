"""Offline replay: fit and evaluate every stopping rule on recorded per-stage outcomes, honestly.

$ optistop replay FILE.jsonl                                   # 5-fold cross-fitting, target 95%
$ optistop replay FILE.jsonl --seeds 10 --small 30,100,300,1000 --out replay.json
$ optistop replay --fit CAL.jsonl --eval TEST.jsonl            # calibrate on one set, evaluate on another
$ optistop replay FILE.jsonl --artifact policy.json            # fit on all of FILE, write what a server loads
$ optistop replay --fit CAL.jsonl --stream TRAFFIC.jsonl --audit 0.05   # traffic in order: audits, alarm,
                                                               # recalibration (optistop.offline.stream)

Input: JSONL, one line per prompt: {"id", "prompt"?, "stages": [{"model", "cost", "correct",
"confidence"?, "ex_ante"?, "response"?}, ...]} (other fields are ignored). ``confidence`` is the probability
that the stage's answer is right, in [0, 1]; without it (and with ``response`` texts) a text verifier is
cross-fitted (optistop.offline.fit), on the calibration file alone where there are two (``load_pair``).
Bad input fails with one line naming the line number and field.

Every number is held out: in each fold the operating point is chosen on the other folds only
(optistop.offline.policy_fit.choose: the cheapest candidate whose quality clears the target with a stated
confidence) and the held-out fold is replayed with the same kernel the server runs. Printed per run: the
served rule's quality relative to always-last and cost, against the cheapest single stage meeting the
target, the router, and a threshold cascade tuned in hindsight on the evaluated data (a reference, never
a policy). Cost counts every stage run.
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
from optistop.offline import candidates, cascades, ltt
from optistop.offline import policy_fit as F
from optistop.offline.candidates import Candidates
from optistop.offline.operating import ReplayInputError, build_artifact
from optistop.offline.replay_files import load, load_pair, stage_names

TARGET, TOLERANCE = 0.95, 0.945   # target share of the last stage's quality; a miss is below TOLERANCE


def hindsight(a: F.Arrays, target: float = TARGET, grid: int = 256, ref: int | None = None) -> float:
    """Cost of the cheapest threshold cascade over any stage subset reaching ``target`` x the reference
    stage's quality on ``a`` itself (a reference tuned in hindsight, never a policy)."""
    return cascades.hindsight_cost(a, a.conf.shape[1] - 1 if ref is None else ref, target, grid)


def _conditions(a: F.Arrays, q: np.ndarray, c: np.ndarray, router_cost: float, hind: float,
                ref: int | None = None, target: float = TARGET, tol: float = TOLERANCE) -> dict[str, Any]:
    ref = a.conf.shape[1] - 1 if ref is None else ref
    last = max(a.correct[:, ref].mean(), 1e-12)
    acc = a.correct.mean(axis=0)
    cheapest = float(min(a.costs[k] for k in range(len(acc)) if acc[k] >= target * last - 1e-12))
    qr, cost = float(q.mean() / last), float(c.mean())
    return {"quality_rel": round(qr, 6), "cost": round(cost, 6), "cheapest_single_stage": cheapest,
            "router_cost": round(router_cost, 6), "hindsight_cost": round(hind, 6), "reference": ref,
            "meets_quality": qr >= tol, "le_cheapest_stage": cost <= cheapest + 1e-9,
            "le_router": cost <= router_cost + 1e-9, "le_1.1_hindsight": cost <= 1.10 * hind + 1e-9}


def fold_ids(N: int, seed: int, folds: int = 5) -> np.ndarray:
    """The fold of each prompt in seed ``seed``'s K-fold pass (every protocol and yardstick shares it)."""
    fid = np.arange(N) % folds
    np.random.default_rng(1000 + seed).shuffle(fid)
    return fid


def draw(N: int, s: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``s`` of the small-data protocol: (m fitting prompts, the rest, evaluated)."""
    perm = np.random.default_rng(2000 + s).permutation(N)
    return perm[:m], perm[m:]


def fit_and_run(cal: F.Arrays, ev: F.Arrays, seed: int, crit: F.Criterion, extras: bool,
                cache: dict[int, Candidates] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-prompt (quality, cost) on ``ev`` of every rule fitted on ``cal``. ``cache``: seed -> the fitted
    candidates, shared by calls that differ only in the target, confidence or reference (served_curve)."""
    # fitted-Q is only a comparator (policy_fit.COMPARATOR_ONLY), printed with the extras: without them its
    # fits, a third of the candidates' time, are skipped
    if cache is not None and seed not in cache:
        cache[seed] = candidates.fit(cal, seed, crit.fit_share, optimal=extras)
    ch = F.choose(cal, crit, seed, optimal=extras, fitted=None if cache is None else cache[seed])
    out_path = ch["path"]
    ran, ans = K.simulate(ch["rule"], ev.conf, ev.ex_ante, ev.resp)
    served = (ev.correct[np.arange(len(ans)), ans].astype(float), ran.astype(float) @ ev.costs)
    out = {"served": served, "router": F.outcome(ch["router"], ev)}
    out["_choice"] = ch["choice"]  # type: ignore[assignment]
    out["_path"] = out_path  # type: ignore[assignment]
    out["_ran"] = ran  # type: ignore[assignment]  # which stages the served rule ran: the stage mix
    if extras:
        if ch["optimal"] is not None:   # fitted-Q's own certified walk: the paper's rule, corrected
            out["optimal"] = F.outcome(ch["optimal"], ev)
        out["paper"] = F.outcome(F.paper_at_target(cal, crit.target), ev)
        out["random"] = F.outcome(K.RandomRule(seed), ev)
        for k in range(cal.conf.shape[1]):
            out[f"fixed:{k}"] = F.outcome(K.FixedRule(k), ev)
    return out


def kfold(a: F.Arrays, seed: int, crit: F.Criterion, folds: int = 5, extras: bool = True,
          cache: dict[int, Candidates] | None = None) -> dict[str, Any]:
    N = len(a.conf)
    fid = fold_ids(N, seed, folds)
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    choices = []
    ran = np.zeros(a.conf.shape, bool)
    for f in range(folds):
        tr, te = np.flatnonzero(fid != f), np.flatnonzero(fid == f)
        o = fit_and_run(a.take(tr), a.take(te), seed * 100 + f, crit, extras, cache)
        choices.append(list(map(str, o.pop("_choice"))))
        o.pop("_path")
        ran[te] = o.pop("_ran")
        for name, (q, c) in o.items():
            per.setdefault(name, (np.zeros(N), np.zeros(N)))
            per[name][0][te], per[name][1][te] = q, c
    return {"per": per, "choices": choices, "ran": ran}


def summarise(a: F.Arrays, per: dict[str, tuple[np.ndarray, np.ndarray]], hind: float,
              ran: np.ndarray | None = None, crit: F.Criterion | None = None) -> dict[str, Any]:
    crit = crit or F.Criterion()
    ref = F.reference_stage(a, crit.reference)
    rc = float(per["router"][1].mean())
    last = max(a.correct[:, ref].mean(), 1e-12)
    out = {"conditions": _conditions(a, *per["served"], rc, hind, ref, crit.target, crit.t_lcb)}
    out["policies"] = {k: {"quality_rel": round(float(q.mean() / last), 6), "cost": round(float(c.mean()), 6)}
                       for k, (q, c) in per.items()}
    if ran is not None:  # share of prompts on which each stage runs: what sizes each stage's deployment
        out["policies"]["served"]["ran_share"] = ran.mean(axis=0).round(6).tolist()
    return out


def resolve(a: F.Arrays, crit: F.Criterion, names: Sequence[str] | None = None) -> F.Criterion:
    """The criterion with its reference fixed to a stage index on ``a`` (the whole calibration file), so
    every fold and draw measures against the same stage."""
    return dataclasses.replace(crit, reference=str(F.reference_stage(a, crit.reference, names)))


def run(a: F.Arrays, seeds: int, crit: F.Criterion, folds: int = 5, small: Sequence[int] = (),
        draws: int | None = None) -> dict[str, Any]:
    """Every protocol over ``seeds`` (``draws`` random fitting sets per size in ``small``, default ``seeds``);
    what ``optistop replay`` prints and the report reads."""
    crit = resolve(a, crit)
    ref = int(crit.reference)
    last = a.correct[:, ref].mean()
    # the whole set's own hindsight cascade: the 5-fold reference cost, and served on each small draw's
    # evaluated prompts, what a procedure that knew the population would get there (the metric's own noise)
    oracle, hind = cascades.hindsight_point(a, ref, crit.target)
    res: dict[str, Any] = {"n": len(a.conf), "costs": a.costs.tolist(), "reference": ref,
                           "accuracy": a.correct.mean(axis=0).round(6).tolist(), "hindsight_cost": hind,
                           "criterion": vars(crit), "kfold": [], "small": {}}
    for s in range(seeds):
        k = kfold(a, s, crit, folds, extras=s == 0)
        row = summarise(a, k["per"], hind, k["ran"], crit) | {"seed": s, "choices": k["choices"]}
        if s == 0:  # per-prompt outcomes of seed 0 for paired comparisons in the report
            res["per_prompt"] = {n: {"quality": q.tolist(), "cost": c.tolist()} for n, (q, c) in k["per"].items()}
        res["kfold"].append(row)
    for m in small:
        rows = []
        for s in range(seeds if draws is None else draws):
            if m >= len(a.conf) - 50:
                break
            fi, ei = draw(len(a.conf), s, m)
            ev = a.take(ei)
            o = fit_and_run(a.take(fi), ev, s, crit, extras=False)
            o.pop("_choice"), o.pop("_ran"), o.pop("_path")
            row = summarise(ev, o, hindsight(ev, crit.target, ref=ref), crit=crit)["conditions"]
            q, c = F.outcome(oracle, ev) if oracle is not None else F.outcome(K.FixedRule(ref), ev)
            rows.append(row | {"oracle_cost": round(float(c.mean()), 6),
                               "oracle_meets": bool(q.mean() >= crit.t_lcb * ev.correct[:, ref].mean())})
        res["small"][str(m)] = rows
    res["last_stage_accuracy"] = float(a.correct[:, -1].mean())
    res["reference_accuracy"] = float(last)
    return res


def fit_eval(cal: F.Arrays, ev: F.Arrays, crit: F.Criterion, seed: int = 0) -> dict[str, Any]:
    if cal.conf.shape[1] != ev.conf.shape[1] or not np.allclose(cal.costs, ev.costs):
        raise ReplayInputError("--fit and --eval files must have the same stages and costs")
    crit = resolve(cal, crit)
    o = fit_and_run(cal, ev, seed, crit, extras=True)
    choice = list(map(str, o.pop("_choice")))
    path = o.pop("_path")
    o.pop("_ran")
    ref = int(crit.reference)
    return summarise(ev, o, hindsight(ev, crit.target, ref=ref), crit=crit) | {"choice": choice, "path": path}


def _print(label: str, cond: dict[str, Any]) -> None:
    ok = lambda b: "yes" if b else "NO"
    print(f"{label}: quality {cond['quality_rel']:.3f} of stage {cond['reference']}'s (>= {TOLERANCE}: "
          f"{ok(cond['meets_quality'])}), cost {cond['cost']:.3f} | cheapest single stage meeting "
          f"{TARGET:.0%}: {cond['cheapest_single_stage']:.3f} ({ok(cond['le_cheapest_stage'])}) | router "
          f"{cond['router_cost']:.3f} ({ok(cond['le_router'])}) | 1.10 x hindsight cascade "
          f"{1.1 * cond['hindsight_cost']:.3f} ({ok(cond['le_1.1_hindsight'])})")


def _stream(args: argparse.Namespace, crit: F.Criterion) -> int:
    from optistop.offline import stream

    if args.stream is None or args.fit is None or args.eval is not None or args.file is not None:
        raise ReplayInputError("--stream goes with --fit CAL.jsonl only (and --audit RATE)")
    rate = 0.02 if args.audit is None else args.audit
    if not 0.0 <= rate <= 1.0:
        raise ReplayInputError(f"--audit is {rate}; a share of requests in [0, 1]")
    if args.recal_audits < 1:
        raise ReplayInputError(f"--recal-audits is {args.recal_audits}; it must be >= 1")
    for flag in ("h_mix", "h_quality"):
        if not getattr(args, flag) > 0:
            raise ReplayInputError(f"--{flag.replace('_', '-')} is {getattr(args, flag)}; it must be > 0")
    cal, tr = load_pair(args.fit, args.stream, args.seed)
    if cal.conf.shape[1] != tr.conf.shape[1] or not np.allclose(cal.costs, tr.costs):
        raise ReplayInputError("--fit and --stream files must have the same stages and costs")
    try:
        res = stream.run_stream(cal, tr, rate, crit, seed=args.seed, on_drift=args.on_drift, label_free=args.label_free,
                                recal_audits=args.recal_audits, recal_with=args.recal_with, h_mix=args.h_mix,
                                h_quality=args.h_quality, mix=not args.no_mix)
    except ValueError as exc:
        raise ReplayInputError(str(exc)) from None
    stream.print_run(res, args.shift)
    if args.online:
        res["online"] = stream.hedge_baseline(cal, tr, rate, crit, seed=args.seed)
        o, s = res["online"], res["summary"]
        print(f"online threshold learner (Hedge over {o['rules']} rules, lambda {o['lambda']:g}, audits as feedback): "
              f"quality {o['quality_rel']:.3f}, cost {o['cost']:.3f} | batch recalibration: quality "
              f"{s['quality_rel']:.3f}, cost {s['cost']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(res, default=float) + "\n", encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop replay", description=__doc__.split("\n")[0])
    ap.add_argument("file", nargs="?", type=Path, help="replay JSONL (K-fold cross-fitting)")
    ap.add_argument("--fit", type=Path, help="calibrate on this file ...")
    ap.add_argument("--eval", type=Path, help="... and evaluate on this one")
    ap.add_argument("--seeds", type=int, default=1, help="fold assignments to repeat (miss rate over them)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--small", default="", help="also fit on m random prompts and evaluate on the rest, e.g. 30,300")
    ap.add_argument("--draws", type=int, default=None, help="random fitting sets per --small size (default --seeds)")
    ap.add_argument("--target", type=float, default=TARGET)
    ap.add_argument("--confidence", type=float, default=F.Criterion.confidence,
                    help="probability that the served rule's quality reaches the tolerance (target - 0.5 points)")
    ap.add_argument("--reference", default="best",
                    help="the stage quality is relative to: best (on the calibration data), last, or a stage index")
    ap.add_argument("--test", choices=ltt.TESTS, default=F.Criterion.test, help="the certifying test")
    ap.add_argument("--artifact", type=Path, help="fit on the whole FILE and write the policy artifact here")
    ap.add_argument("--out", type=Path, help="write the full results as JSON")
    ap.add_argument("--stream", type=Path, help="with --fit: play this traffic in order (the server's twin)")
    ap.add_argument("--audit", type=float, default=None, help="with --stream: share of requests audited")
    ap.add_argument("--on-drift", choices=["none", "safer"], default="safer", help="with --stream: on an alarm")
    ap.add_argument("--label-free", action="store_true", help="with --stream: audits see agreement only")
    ap.add_argument("--shift", type=int, default=None, help="with --stream: the request where the shift starts")
    ap.add_argument("--h-mix", type=float, default=D.H_MIX,
                    help="with --stream: threshold of the label-free mix warning's CUSUM (optistop.drift)")
    ap.add_argument("--h-quality", type=float, default=D.H_QUALITY,
                    help="with --stream: threshold of the audited disagreement's CUSUM (optistop.drift)")
    ap.add_argument("--no-mix", action="store_true", help="with --stream: audits only, no label-free warning")
    ap.add_argument("--recal-audits", type=int, default=150, help="with --stream: audits a recalibration needs")
    ap.add_argument("--recal-with", choices=["balanced", "all", "audits"], default="balanced",
                    help="with --stream: what the recalibration fits on besides the audits (optistop.offline.stream)")
    ap.add_argument("--seed", type=int, default=0, help="with --stream: the audit draws and the fits' folds")
    ap.add_argument("--online", action="store_true",
                    help="with --stream: also replay the paper's online threshold learner on the same audits")
    args = ap.parse_args(argv)
    try:
        crit = F.Criterion.at(args.target, args.confidence, args.reference, test=args.test)
        if args.stream is not None or args.audit is not None:
            return _stream(args, crit)
        if (args.file is None) == (args.fit is None or args.eval is None):
            raise ReplayInputError("give FILE (cross-fitting) or both --fit and --eval")
        if args.file is None:
            cal, ev = load_pair(args.fit, args.eval)
            crit = resolve(cal, crit, stage_names(args.fit))
            res = fit_eval(cal, ev, crit)
            _print(f"fit {args.fit.name} -> eval {args.eval.name} [{res['choice'][0]}]", res["conditions"])
        else:
            a = load(args.file)
            crit = resolve(a, crit, stage_names(args.file))
            res = run(a, args.seeds, crit, args.folds, [int(x) for x in args.small.split(",") if x], args.draws)
            for row in res["kfold"]:
                _print(f"{args.file.name} seed {row['seed']} [{', '.join(c[0] for c in row['choices'])}]",
                       row["conditions"])
            if args.seeds > 1:
                q = [r["conditions"]["quality_rel"] for r in res["kfold"]]
                print(f"over {args.seeds} seeds: quality mean {np.mean(q):.3f} (min {min(q):.3f}), miss rate "
                      f"{np.mean([x < TOLERANCE for x in q]):.2f}")
            for m, rows in res["small"].items():
                if rows:
                    cost, hind = np.mean([r["cost"] for r in rows]), np.mean([r["hindsight_cost"] for r in rows])
                    print(f"fit on {m} prompts: cost {cost:.3f} ({cost / hind:.3f} x the hindsight cascade on the "
                          f"evaluated prompts), miss rate {np.mean([not r['meets_quality'] for r in rows]):.2f} "
                          f"over {len(rows)} draws")
            if args.artifact:
                names = [f"stage{k}" for k in range(a.conf.shape[1])]
                art, _ = build_artifact(a, names, crit)
                args.artifact.write_text(json.dumps(art) + "\n", encoding="utf-8")
                print(f"wrote {args.artifact} (operating point {art['operating']})")
    except (ReplayInputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(json.dumps(res, default=float) + "\n", encoding="utf-8")
    return 0
