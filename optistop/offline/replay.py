"""Offline replay: evaluate every stopping rule on recorded per-stage outcomes, honestly.

$ optistop replay artifacts/tiny_replay.jsonl --seed 0 --folds 5 --target 0.95 --out artifacts/replay.json
$ python -m optistop.offline.replay FILE ...                     # the same without the console script

Input: JSONL, one line per prompt: {"id", "prompt", "stages": [{"model", "cost", "correct",
"confidence"?, "ex_ante"?, "response"?, "logprobs"?, "latency_ms"?}, ...], "meta"?: [tags]} (extra
fields are ignored). Protocol: seeded K-fold cross-fitting. For each fold, everything is fitted on the
other folds only: Platt recalibration of given confidences, or a logistic-regression predictor when none
are given (``optistop.offline.fit``), the optimal rule's resolution s_k, and the operating point (the
lambda whose *training* quality first reaches the target, default 95% of the last stage). The held-out
fold is then replayed at every lambda of the sweep and at that operating point. Every prompt is held out
exactly once, so per-prompt costs and qualities of all policies can be compared with paired tests.

Cost counts every stage run. ``quality_rel`` = accuracy / accuracy of always running the last stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from optistop import calibration
from optistop.calibration import fit_platt
from optistop.offline import simulate as sim
from optistop.offline import stats
from optistop.offline.fit import (
    fit_predict_cv,
    fold_ids,
    hashed_tokens,
    prompt_stats,
    response_stats,
)

LAMBDAS = tuple(float(x) for x in np.concatenate([[0.0], np.geomspace(0.1, 1e4, 121)]))
SWEPT = ("optimal", "paper")


@dataclass
class ReplayData:
    ids: list[str]
    prompts: list[str]
    models: list[str]
    costs: np.ndarray                      # (n,) cost paid when a stage runs
    correct: np.ndarray                    # (N, n) bool
    confidence: np.ndarray | None = None   # (N, n) given post-hoc confidences
    ex_ante: np.ndarray | None = None      # (N, n) given prompt-only estimates
    responses: list[list[str | None]] = field(default_factory=list)
    logprobs: list[list[Sequence[float] | None]] = field(default_factory=list)
    meta: list[list[str]] = field(default_factory=list)
    latency_ms: np.ndarray | None = None   # (N, n)

    @property
    def n(self) -> int:
        return self.correct.shape[1]

def from_records(records: Sequence[dict]) -> ReplayData:
    """Validate and convert replay records; errors name the line and the field."""
    if not records:
        raise ValueError("replay: no records")
    n = len(records[0]["stages"])
    for i, r in enumerate(records):
        for key in ("id", "prompt", "stages"):
            if key not in r:
                raise ValueError(f"replay record {i}: missing field {key!r}")
        if len(r["stages"]) != n:
            raise ValueError(f"replay record {i} ({r['id']}): {len(r['stages'])} stages, expected {n}")
    col = lambda key: np.array([[float(s[key]) for s in r["stages"]] for r in records])
    has = lambda key: all(key in s and s[key] is not None for r in records for s in r["stages"])
    costs = np.median(col("cost"), axis=0)
    return ReplayData(
        ids=[str(r["id"]) for r in records], prompts=[r["prompt"] for r in records],
        models=[str(s.get("model", f"stage{k}")) for k, s in enumerate(records[0]["stages"])],
        costs=costs, correct=col("correct").astype(bool),
        confidence=col("confidence") if has("confidence") else None,
        ex_ante=col("ex_ante") if has("ex_ante") else None,
        responses=[[s.get("response") for s in r["stages"]] for r in records],
        logprobs=[[s.get("logprobs") for s in r["stages"]] for r in records],
        meta=[[str(t) for t in r.get("meta", [])] for r in records],
        latency_ms=col("latency_ms") if has("latency_ms") else None)


def load_jsonl(path: str | Path) -> ReplayData:
    with open(path, encoding="utf-8") as f:
        return from_records([json.loads(line) for line in f if line.strip()])


# ------------------------------------------------------------------------------------------ fitting

def _features(data: ReplayData) -> dict:
    """Dense and hashed features, computed once: prompt-only, and per stage with that stage's answer."""
    pd = np.array([prompt_stats(p) for p in data.prompts])
    ph = [hashed_tokens(p, m) for p, m in zip(data.prompts, data.meta or [[]] * len(data.prompts),
                                              strict=True)]
    post = {}
    for k in range(data.n):
        if not data.responses or any(r[k] is None for r in data.responses):
            continue
        rd = np.array([response_stats(p, r[k], lp[k] if data.logprobs else None)
                       for p, r, lp in zip(data.prompts, data.responses,
                                           data.logprobs or [[None] * data.n] * len(data.prompts),
                                           strict=True)])
        rh = [sorted(set(h) | set(hashed_tokens("r " + r[k]))) for h, r in zip(ph, data.responses,
                                                                                strict=True)]
        post[k] = (np.hstack([pd, rd]), rh)
    return {"prompt": (pd, ph), "post": post}


@dataclass
class FoldFit:
    P_tr: np.ndarray
    R_tr: np.ndarray
    P_te: np.ndarray
    R_te: np.ndarray
    resolution: np.ndarray
    info: dict


def fit_fold(data: ReplayData, feats: dict, train: np.ndarray, test: np.ndarray, seed: int) -> FoldFit:
    N, n = data.correct.shape
    P, R = np.zeros((N, n)), np.zeros((N, n))
    info: dict = {"stages": []}
    for k in range(n):
        y = data.correct[:, k]
        st: dict = {}
        if data.ex_ante is not None:
            cal = fit_platt(data.ex_ante[train, k], y[train])
            R[:, k], st["ex_ante"] = calibration.apply(cal, data.ex_ante[:, k]), {"platt": cal}
        else:
            d, h = feats["prompt"]
            R[train, k], R[test, k], st["ex_ante"] = fit_predict_cv(d, h, y, train, test, seed + k)
        if data.confidence is not None:
            cal = fit_platt(data.confidence[train, k], y[train])
            P[:, k], st["post_hoc"] = calibration.apply(cal, data.confidence[:, k]), {"platt": cal}
        elif k in feats["post"]:
            d, h = feats["post"][k]
            P[train, k], P[test, k], st["post_hoc"] = fit_predict_cv(d, h, y, train, test, seed + 100 + k)
        else:
            P[:, k], st["post_hoc"] = R[:, k], "same as ex-ante (no response to look at)"
        info["stages"].append(st)
    num = np.mean((P[train] - R[train]) ** 2, axis=0)
    den = np.maximum(np.mean(R[train] * (1 - R[train]), axis=0), 1e-9)
    s = np.clip(num / den, 0.0, 1.0)
    return FoldFit(P[train], R[train], P[test], R[test], s, info)


# ------------------------------------------------------------------------------------------ replay

def run_policy(name: str, P: np.ndarray, R: np.ndarray, correct: np.ndarray, costs: np.ndarray,
               lam: float, resolution: np.ndarray, seed: int) -> sim.Outcome:
    N, n = correct.shape
    if name == "optimal":
        return sim.optimal(P, R, costs, lam, resolution)
    if name == "optimal_s0":
        return sim.optimal(P, R, costs, lam, 0.0)
    if name == "paper":
        return sim.paper(P, costs, lam)
    if name.startswith("fixed:"):
        return sim.fixed(N, n, int(name.split(":")[1]))
    if name == "random":
        return sim.random_stop(N, n, seed)
    if name == "oracle":
        return sim.oracle(correct)
    raise ValueError(f"unknown replay policy {name!r}; valid: optimal, optimal_s0, paper, fixed:0..{n - 1}, "
                     f"random, oracle")


def _metrics(out: sim.Outcome, correct: np.ndarray, costs: np.ndarray) -> dict:
    q, c = out.quality(correct), out.cost(costs)
    ref = correct[:, -1].mean()
    n = correct.shape[1]
    return {"quality": float(q.mean()), "quality_rel": float(q.mean() / ref) if ref > 0 else float("nan"),
            "cost": float(c.mean()), "strong_share": float(out.ran[:, -1].mean()),
            "stage_dist": [float(np.mean(out.answer == k)) for k in range(n)],
            "ran_share": [float(x) for x in out.ran.mean(axis=0)]}


def evaluate(data: ReplayData, seed: int = 0, folds: int = 5, target: float = 0.95,
             lambdas: Sequence[float] = LAMBDAS, costs: Sequence[float] | None = None,
             policies: Sequence[str] | None = None) -> dict:
    """Cross-fitted replay. Returns a JSON-able dict; per-prompt arrays are under the key "_arrays"."""
    N, n = data.correct.shape
    c = np.asarray(costs if costs is not None else data.costs, float)
    pols = list(policies or ["optimal", "optimal_s0", "paper", *[f"fixed:{k}" for k in range(n)],
                             "random", "oracle"])
    feats = _features(data) if data.confidence is None or data.ex_ante is None else {"prompt": None}
    fid = fold_ids(N, folds, seed)
    P, R = np.zeros((N, n)), np.zeros((N, n))
    sweep = {p: {"lambda": list(lambdas), "ran": np.zeros((len(lambdas), N, n), bool),
                 "answer": np.zeros((len(lambdas), N), int)} for p in pols if p in SWEPT or p == "optimal_s0"}
    op = {p: {"ran": np.zeros((N, n), bool), "answer": np.zeros(N, int), "lambda": [], "reached": []}
          for p in pols}
    res_s, fold_info = [], []
    for f in range(folds):
        train, test = np.flatnonzero(fid != f), np.flatnonzero(fid == f)
        ff = fit_fold(data, feats, train, test, seed + 1000 * f)
        P[test], R[test] = ff.P_te, ff.R_te
        res_s.append(ff.resolution.tolist())
        fold_info.append(ff.info)
        ytr, yte = data.correct[train], data.correct[test]
        for p in pols:
            if p in sweep:
                best = None                     # (cost, i): cheapest lambda reaching the target
                fallback = None                 # (quality, -cost, i) when no lambda reaches it
                for i, lam in enumerate(lambdas):
                    o_tr = run_policy(p, ff.P_tr, ff.R_tr, ytr, c, lam, ff.resolution, seed)
                    mt = _metrics(o_tr, ytr, c)
                    if mt["quality_rel"] >= target and (best is None or mt["cost"] < best[0]):
                        best = (mt["cost"], i)
                    if fallback is None or (mt["quality_rel"], -mt["cost"]) > fallback[:2]:
                        fallback = (mt["quality_rel"], -mt["cost"], i)
                    o_te = run_policy(p, ff.P_te, ff.R_te, yte, c, lam, ff.resolution, seed)
                    sweep[p]["ran"][i, test], sweep[p]["answer"][i, test] = o_te.ran, o_te.answer
                i = best[1] if best is not None else fallback[2]
                op[p]["lambda"].append(lambdas[i])
                op[p]["reached"].append(best is not None)
                op[p]["ran"][test] = sweep[p]["ran"][i, test]
                op[p]["answer"][test] = sweep[p]["answer"][i, test]
            else:
                o = run_policy(p, ff.P_te, ff.R_te, yte, c, 0.0, ff.resolution, seed + f)
                op[p]["ran"][test], op[p]["answer"][test] = o.ran, o.answer
                op[p]["reached"].append(_metrics(run_policy(p, ff.P_tr, ff.R_tr, ytr, c, 0.0, ff.resolution,
                                                            seed + f), ytr, c)["quality_rel"] >= target)
    ref = data.correct[:, -1].mean()
    result: dict = {"n": N, "stages": data.models, "costs": c.tolist(), "folds": folds, "seed": seed,
                    "target": target, "accuracy": data.correct.mean(axis=0).tolist(),
                    "resolution_per_fold": res_s, "policies": {}, "sweep": {}}
    arrays: dict = {"P": P, "R": R, "fold": fid, "correct": data.correct, "costs": c, "per_prompt": {}}
    for p in pols:
        out = sim.Outcome(op[p]["ran"], op[p]["answer"])
        m = _metrics(out, data.correct, c)
        if p in sweep:
            m["lambda_per_fold"] = op[p]["lambda"]
        m["reached_target_on_training"] = all(op[p]["reached"])
        hit = m["quality_rel"] >= target - 1e-12
        m["reached_target_held_out"] = bool(hit)
        m["cost_at_target"] = m["cost"] if (m["reached_target_on_training"] and p != "oracle") else None
        result["policies"][p] = m
        arrays["per_prompt"][p] = {"cost": out.cost(c), "quality": out.quality(data.correct)}
    ora = sim.oracle_at_target(data.correct, c, target * ref)
    om = _metrics(ora, data.correct, c)
    if "oracle" in result["policies"]:
        result["policies"]["oracle"]["cost_at_target"] = om["cost"]
    result["oracle_at_target"] = om
    arrays["sweep"] = {p: {"cost": (sw["ran"].astype(np.float32) @ c.astype(np.float32)),
                           "quality": data.correct[np.arange(N)[None, :], sw["answer"]]}
                       for p, sw in sweep.items()}
    for p, sw in sweep.items():
        rows = [_metrics(sim.Outcome(sw["ran"][i], sw["answer"][i]), data.correct, c)
                for i in range(len(lambdas))]
        result["sweep"][p] = [{"lambda": lam, **{k: r[k] for k in ("quality_rel", "cost", "strong_share")}}
                              for lam, r in zip(lambdas, rows, strict=True)]
    result["predictor"] = predictor_metrics(P, R, data.correct)
    result["fold_info"] = fold_info
    result["_arrays"] = arrays
    return result


def predictor_metrics(P: np.ndarray, R: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Per stage, cross-fitted: AUROC, ECE, Brier of the post-hoc and of the ex-ante estimates."""
    return [{kind: {"auroc": stats.auroc(correct[:, k], X[:, k]), "ece": stats.ece(correct[:, k], X[:, k]),
                    "brier": stats.brier(correct[:, k], X[:, k])}
             for kind, X in (("post_hoc", P), ("ex_ante", R))} for k in range(correct.shape[1])]


def public(result: dict) -> dict:
    """The result without its numpy arrays (what goes to JSON)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="replay JSONL (one prompt per line)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.95, help="quality relative to the last stage")
    ap.add_argument("--costs", default=None, help="comma-separated cost per stage (default: from the file)")
    ap.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    a = ap.parse_args(argv)
    try:
        data = load_jsonl(a.file)
        costs = [float(x) for x in a.costs.split(",")] if a.costs else None
        if costs is not None and len(costs) != data.n:
            raise ValueError(f"--costs: {len(costs)} values for {data.n} stages")
        res = public(evaluate(data, seed=a.seed, folds=a.folds, target=a.target, costs=costs))
    except (OSError, ValueError, KeyError) as e:
        print(f"optistop replay: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
