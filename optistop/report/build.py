"""The paper's experiments rerun on real outcomes: reports/report.md, PNG figures, reports/summary.json.

$ python -m optistop.report.build --out reports --seed 0 --jobs 2          # `make report`, ~5-10 min on 2 cores

Data sets: the tiny family (artifacts/tiny_replay.jsonl from `make collect predictor`; spec costs and
costs from measured latency) and RouteLLM's MMLU and GSM8K outcomes (../shared/data/routellm). A data set
that is absent is reported as absent, never filled in. Everything is seeded; reruns give identical files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from optistop import ROOT
from optistop.offline import online, routellm, stats
from optistop.offline.replay import evaluate, from_records, load_jsonl, public
from optistop.report import markdown as report_md
from optistop.report import plots

TINY = ROOT / "artifacts" / "tiny_replay.jsonl"
SIDECAR_DIR = ROOT / "model_repository" / "quality_predictor" / "1"
TINY_MISSING = ("artifacts/tiny_replay.jsonl not found: the tiny family's collected outcomes were not "
                "available when this report was made (build them with `make collect predictor`)")


def table_8_1(pp: dict, ours: str = "optimal") -> list[dict]:
    """Section 8.1 redone: ours vs each baseline, paired over the same held-out prompts."""
    rows = []
    a = pp[ours]
    for base in [p for p in pp if p.startswith("fixed:")] + ["random", "oracle", "paper"]:
        if base not in pp:
            continue
        b = pp[base]
        rows.append({"baseline": base, "our_cost": float(a["cost"].mean()), "base_cost": float(b["cost"].mean()),
                     "speedup": float(b["cost"].mean() / a["cost"].mean()),
                     "cost_test": stats.paired(a["cost"], b["cost"]),
                     "our_quality": float(a["quality"].mean()), "base_quality": float(b["quality"].mean()),
                     "quality_test": stats.paired(a["quality"], b["quality"])})
    return rows


def cpt(res: dict, policy: str) -> dict:
    """RouteLLM's CPT(x): smallest strong-call share on the held-out sweep recovering x of the gap."""
    acc = res["accuracy"]
    gap = acc[-1] - acc[0]
    out = {}
    for x in (0.5, 0.8):
        shares = [r["strong_share"] for r in res["sweep"].get(policy, [])
                  if gap > 0 and (r["quality_rel"] * acc[-1] - acc[0]) / gap >= x]
        out[f"cpt{int(x * 100)}"] = min(shares) if shares else None
    out["pgr_of_target"] = (res["target"] * acc[-1] - acc[0]) / gap if gap > 0 else None
    return out


def frontier(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Efficient (cost, quality) frontier of a sweep, mixtures included: choosing between two lambdas at
    random per prompt realises every point on the segment between them, so the frontier is the upper
    concave hull of quality vs cost, up to its highest quality. Returns (quality, cost), increasing."""
    pts = sorted(set(points))
    hull: list[tuple[float, float]] = []
    for c, q in pts:
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (q - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (c - hull[-2][0])) >= 0:
            hull.pop()
        hull.append((c, q))
    top = max(range(len(hull)), key=lambda i: (hull[i][1], -hull[i][0]))
    hull = hull[: top + 1]
    return np.array([q for _, q in hull]), np.array([c for c, _ in hull])


def cost_for_quality(front: tuple[np.ndarray, np.ndarray], q: float) -> float | None:
    qs, cs = front
    if q > qs[-1] + 1e-12:
        return None
    return float(np.interp(q, qs, cs, left=cs[0]))


def dominance(res: dict, a: str = "optimal", b: str = "paper") -> dict:
    """At every held-out sweep point of b, the cost a's frontier needs for at least b's quality."""
    if a not in res["sweep"] or b not in res["sweep"]:
        return {}
    front = frontier([(r["cost"], r["quality_rel"]) for r in res["sweep"][a]])
    worse, worst, n, unreachable = 0, 0.0, 0, 0
    for rb in res["sweep"][b]:
        c = cost_for_quality(front, rb["quality_rel"])
        if c is None:
            unreachable += 1
            continue
        n += 1
        worse += c > rb["cost"] + 1e-9
        worst = max(worst, c - rb["cost"])
    pb = res["policies"].get(b)
    at_b = cost_for_quality(front, pb["quality_rel"]) if pb else None
    return {"paper_points_compared": n, "paper_points_where_optimal_costs_more": int(worse),
            "paper_points_above_optimal_max_quality": unreachable, "max_extra_cost": worst,
            "optimal_cost_at_paper_operating_quality": at_b,
            "paper_operating_point": None if not pb else {"cost": pb["cost"], "quality_rel": pb["quality_rel"]}}


def bootstrap_gap(sw: dict, q: float, seed: int, reps: int = 400,
                  a: str = "optimal", b: str = "paper") -> dict | None:
    """Paired bootstrap over prompts of cost_a(q) - cost_b(q) on the two frontiers (q relative quality)."""
    if a not in sw or b not in sw:
        return None
    N = sw[a]["cost"].shape[1]
    rng = np.random.default_rng(seed)
    diffs = []
    for r in range(reps + 1):
        w = np.ones(N) if r == 0 else rng.multinomial(N, np.full(N, 1.0 / N)).astype(float)
        ref_r = float(sw["_last"] @ w / N)         # r = 0: the data as they are
        fa, fb = (frontier(list(zip(sw[p]["cost"] @ w / N, sw[p]["quality"].astype(float) @ w / N / ref_r,
                                    strict=True))) for p in (a, b))
        ca, cb = cost_for_quality(fa, q), cost_for_quality(fb, q)
        if ca is not None and cb is not None:
            diffs.append(ca - cb)
    if not diffs:
        return None
    boot = np.asarray(diffs[1:]) if len(diffs) > 1 else np.asarray(diffs)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"quality_rel": q, "diff": float(diffs[0]), "ci95": [float(lo), float(hi)], "reps": reps,
            "share_of_reps_optimal_cheaper": float(np.mean(boot <= 0))}


def _job(job: tuple[str, str, dict]) -> dict:
    name, kind, kw = job
    if kind == "routellm_mmlu":
        data = from_records(routellm.mmlu_records(Path(kw["dir"])))
    elif kind == "routellm_gsm8k":
        data = from_records(routellm.gsm8k_records(Path(kw["dir"])))
    else:
        data = load_jsonl(kw["path"])
    costs = kw.get("costs")
    if kw.get("latency_costs"):
        if data.latency_ms is None:
            return {"name": name, "missing": "no latency_ms in the replay file"}
        lat = data.latency_ms.mean(axis=0)
        costs = (lat / lat[0]).round(3).tolist()
    res = evaluate(data, seed=kw["seed"], folds=5, costs=costs)
    arr = res.pop("_arrays")
    out = public(res)
    out["name"] = name
    if data.latency_ms is not None:
        out["latency_ms_mean"] = data.latency_ms.mean(axis=0).tolist()
    out["table_8_1"] = table_8_1(arr["per_prompt"])
    out["cpt"] = {p: cpt(out, p) for p in ("optimal", "paper")}
    out["dominance"] = dominance(out)
    sw = dict(arr["sweep"], _last=arr["correct"][:, -1].astype(float))
    out["dominance"]["bootstrap_at_target"] = bootstrap_gap(sw, out["target"], kw["seed"])
    out["mean_ex_ante"] = arr["R"].mean(axis=0).tolist()
    out["resolution"] = np.mean(out["resolution_per_fold"], axis=0).tolist()
    if kw.get("regret", True):
        lam = float(np.median(out["policies"]["optimal"]["lambda_per_fold"]))
        out["regret"] = online.regret_experiment(arr["P"], arr["correct"], arr["costs"], lam,
                                                 T=kw.get("T", 20000), seeds=kw.get("seeds", 8))
    return out


def read_sidecar(d: Path = SIDECAR_DIR) -> dict | None:
    """The predictor sidecar's metric table (section 10.1's ablation), if the predictor was built."""
    for f in sorted(d.glob("*.json")):
        try:
            side = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(side, dict) and "metrics" in side:
            return {"file": str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f),
                    "metrics": side["metrics"], "arch": side.get("arch"), "training": side.get("training")}
    return None


def summarise(results: dict[str, dict]) -> dict:
    keep = ("quality", "quality_rel", "cost", "strong_share", "cost_at_target", "stage_dist", "ran_share",
            "lambda_per_fold", "reached_target_on_training", "reached_target_held_out")
    out: dict = {}
    for name, r in results.items():
        if "missing" in r:
            out[name] = {"missing": r["missing"]}
            continue
        out[name] = {"n": r["n"], "stages": r["stages"], "costs": r["costs"], "accuracy": r["accuracy"],
                     "target": r["target"],
                     "policies": {p: {k: m[k] for k in keep if k in m} for p, m in r["policies"].items()},
                     "oracle": {"cheapest_correct_stage": {k: r["policies"]["oracle"][k] for k in keep
                                                           if k in r["policies"]["oracle"]},
                                "at_target": r["oracle_at_target"]},
                     "table_8_1": r["table_8_1"], "cpt": r["cpt"], "optimal_vs_paper": r["dominance"],
                     "predictor": r["predictor"], "resolution": r["resolution"]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.report.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--routellm", default=None, help="RouteLLM evals folder (default ../shared/data/routellm)")
    ap.add_argument("--tiny", default=str(TINY), help="tiny-family replay JSONL")
    ap.add_argument("--regret-T", type=int, default=20000, help="stream length of the regret experiment")
    ap.add_argument("--regret-seeds", type=int, default=8)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, str, dict]] = []
    missing: dict[str, str] = {}
    common = {"seed": a.seed, "T": a.regret_T, "seeds": a.regret_seeds}
    rdir = routellm.find_dir(a.routellm)
    if rdir is None:
        missing["routellm_mmlu"] = missing["routellm_gsm8k"] = routellm.WHERE
    else:
        jobs += [("routellm_mmlu", "routellm_mmlu", {"dir": str(rdir), **common}),
                 ("routellm_gsm8k", "routellm_gsm8k", {"dir": str(rdir), **common})]
    if Path(a.tiny).is_file():
        jobs += [("tiny", "jsonl", {"path": a.tiny, **common}),
                 ("tiny_latency_cost", "jsonl", {"path": a.tiny, **common, "latency_costs": True,
                                                 "regret": False})]
    else:
        missing["tiny"] = TINY_MISSING
    jobs.sort(key=lambda j: j[0] != "routellm_mmlu")        # the longest first
    with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        done = {r["name"]: r for r in ex.map(_job, jobs)}
    order = ["tiny", "tiny_latency_cost", "routellm_mmlu", "routellm_gsm8k"]
    results = {k: done[k] if k in done else {"missing": missing[k]} for k in order if k in done or k in missing}
    ok = {k: v for k, v in results.items() if "missing" not in v}
    figs: dict[str, str] = {}
    for k, r in ok.items():
        figs[f"pareto_{k}"] = plots.pareto(k, r, out / f"pareto_{k}.png")
    if ok:
        figs["stages"] = plots.stage_distribution(ok, out / "stage_distribution.png")
    regrets = {k: r["regret"] for k, r in ok.items() if "regret" in r}
    if regrets:
        figs["regret"] = plots.regret(regrets, out / "regret.png")
    th_src = ok.get("tiny") or ok.get("routellm_gsm8k")
    if th_src:
        what = f"means over the {th_src['name']} data (n = {th_src['n']})"
        figs["thresholds"] = plots.thresholds(th_src["costs"], th_src["mean_ex_ante"], th_src["resolution"],
                                              what, out / "thresholds.png")
    else:
        figs["thresholds"] = plots.thresholds([1.0, 4.5, 10.0], [0.5, 0.8, 0.9], [0.0, 0.0, 0.0],
                                              "illustrative values, no data set available",
                                              out / "thresholds.png")
    side = read_sidecar()
    summary = {"seed": a.seed, "target": 0.95, "folds": 5, "datasets": summarise(results),
               "regret": regrets, "predictor_sidecar": side,
               "published": {"routellm": routellm.PUBLISHED, "oracle_readme": routellm.ORACLE_README}}
    summary = _clean(summary)
    text = json.dumps(summary, indent=1, sort_keys=True, allow_nan=False) + "\n"
    (out / "summary.json").write_text(text, encoding="utf-8")
    (out / "report.md").write_text(report_md.render(results, summary, figs), encoding="utf-8")
    print(f"wrote {out / 'report.md'}, {out / 'summary.json'} and {len(figs)} figures")
    return 0


def _clean(x: object) -> object:
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


if __name__ == "__main__":
    sys.exit(main())
