"""Issue 12's acceptance, measured: reports/report.md, reports/summary.json and PNG figures.

$ python -m optistop.report.build --out reports --seed 0 --jobs 2     # `make report`
$ python -m optistop.report.build --routellm DIR --mmlupro DIR --mmlupro-limit 2000

Data sets: the tiny family (artifacts/tiny_replay.jsonl, only its records out-of-sample for the predictor),
RouteLLM's MMLU and GSM8K (optistop.offline.routellm), the two MMLU-Pro ladders (optistop.offline.mmlupro).
Each is converted once to replay JSONL under artifacts/report_cache/ (keyed by a hash of its source files
and converter, because the MMLU-Pro verifier takes minutes) and read with ``replay_files.load``, exactly as
``optistop replay FILE`` reads it. ``replay.run`` then gives every held-out number. A data set that is
absent is reported with where to get it, never filled in. Seeded throughout: reruns give identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from optistop import ROOT
from optistop.offline import cascades, mmlupro, replay, replay_files, routellm, stats
from optistop.offline import policy_fit as F
from optistop.offline.ltt_sweep import KnownFrontier, margin_cost
from optistop.report import markdown, plots

TINY = ROOT / "artifacts" / "tiny_replay.jsonl"
CACHE = ROOT / "artifacts" / "report_cache"
POLICY = ROOT / "model_repository" / "quality_predictor" / "1" / "policy.json"
SIDECAR = ROOT / "model_repository" / "quality_predictor" / "1" / "model.json"
TINY_ROLES = ("calibration", "test")   # the predictor never trained on these: honest confidences
TINY_MISSING = ("tiny family replay not found: `make report` builds artifacts/tiny_replay.jsonl (collect, then a "
                "predictor trained into artifacts/report_repo), or pass --tiny FILE")
ORDER = ("tiny", "routellm_mmlu", "routellm_gsm8k", "mmlupro_qwen", "mmlupro_llama")
SMALL = (30, 100, 300, 1000)
SERVED_TARGETS = (0.85, 0.9, 0.95, 0.98)


def _digest(parts: Sequence[str | Path]) -> str:
    """sha256 over strings and file contents: the cache key of one converted data set."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.read_bytes())
        else:
            h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _write_jsonl(path: Path, records: Sequence[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)   # a killed run never leaves a half file that looks cached


def sources(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """name -> {"missing": where-to-get-it} or {"label", "key", "convert": (kind, arg)}; nothing is read yet."""
    out: dict[str, dict[str, Any]] = {}
    conv = lambda mod: Path(mod.__file__)  # noqa: E731 - the converter's code is part of the key
    tiny = Path(a.tiny)
    out["tiny"] = ({"label": "tiny family (small -> medium -> large, costs 1 / 4.5 / 10)",
                    "key": _digest(["tiny", *TINY_ROLES, tiny]), "convert": ("tiny", str(tiny))}
                   if tiny.is_file() else {"missing": TINY_MISSING})
    rdir = routellm.find_dir(a.routellm)
    for sub in ("mmlu", "gsm8k"):
        name = f"routellm_{sub}"
        if rdir is None:
            out[name] = {"missing": routellm.WHERE}
            continue
        files = sorted((rdir / "mmlu_responses").glob("*.csv")) if sub == "mmlu" else [rdir / "gsm8k_responses.csv"]
        out[name] = {"label": f"RouteLLM {sub.upper()} (Mixtral-8x7B -> GPT-4, costs 1 / 10)",
                     "key": _digest([name, conv(routellm), rdir / f"{sub}_contaminated_prompts.jsonl", *files]),
                     "convert": (name, str(rdir))}
    for ladder, models in mmlupro.LADDERS.items():
        name = f"mmlupro_{ladder}"
        mdir = mmlupro.find_dir(a.mmlupro, [ladder])
        if mdir is None:
            out[name] = {"missing": mmlupro.WHERE}
            continue
        lim = "all" if a.mmlupro_limit is None else str(a.mmlupro_limit)
        out[name] = {"label": f"MMLU-Pro {' -> '.join(models)} (costs 1 / 4.5 / 10)"
                     + ("" if a.mmlupro_limit is None else f", first {a.mmlupro_limit} questions"),
                     "key": _digest([name, lim, str(a.seed), conv(mmlupro),
                                     *(mmlupro.zip_path(mdir, m) for m in models)]),
                     "convert": (name, str(mdir))}
    return out


def convert(name: str, kind: str, arg: str, key: str, limit: int | None, seed: int, cache: Path = CACHE) -> Path:
    """The data set as replay JSONL in the cache (converted only when its key is new)."""
    path = cache / f"{name}-{key}.jsonl"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    if kind == "tiny":
        recs, _ = replay_files.read_records(arg)
        recs = [r for r in recs if r.get("predictor_role") in TINY_ROLES]
    elif kind == "routellm_mmlu":
        recs = routellm.mmlu_records(Path(arg))
    elif kind == "routellm_gsm8k":
        recs = routellm.gsm8k_records(Path(arg))
    else:
        recs = mmlupro.ladder_records(Path(arg), kind.removeprefix("mmlupro_"), limit, seed)
    _write_jsonl(path, recs)
    return path


def hindsight_curve(a: F.Arrays, ref: int, levels: Sequence[float] = tuple(np.linspace(0.85, 1.0, 16)),
                    agree: bool = False, gr: cascades.Grid | None = None) -> list[list[float]]:
    """[level, quality_rel, cost] of the cheapest threshold cascade over stage subsets per level, tuned on
    ``a`` itself (the hindsight frontier; ``agree``: the served family's, answer agreement included; ``gr``:
    ``cascades.hindsight_grid(a)`` when the caller has it).
    One vectorised pass over the grid serves every level."""
    last = max(a.correct[:, ref].mean(), 1e-12)
    gr = cascades.grid(a, agree=None) if agree else (cascades.hindsight_grid(a) if gr is None else gr)
    out = []
    for lev in levels:
        i = gr.cheapest(lev * last)
        if i is not None:
            out.append([round(float(lev), 4), round(float(gr.quality[i]) / last, 6), round(float(gr.cost[i]), 6)])
    return out


def served_curve(a: F.Arrays, crit: F.Criterion, targets: Sequence[float] = SERVED_TARGETS) -> list[list[float]]:
    """[target, quality_rel, cost] of the served procedure (Learn-then-Test at ``crit.confidence``), 5-fold
    held-out, seed 0, at each target: the served family's frontier, to lay against the hindsight one."""
    out: list[list[float]] = []
    cache: dict = {}     # the candidates do not depend on the target: each fold's fitted once for all four
    for t in targets:
        c = dataclasses.replace(crit, target=t, t_lcb=t - 0.005)
        k = replay.kfold(a, 0, c, 5, extras=False, cache=cache)
        q, cost = k["per"]["served"]
        out.append([t, round(float(q.mean() / max(a.correct[:, int(crit.reference)].mean(), 1e-12)), 6),
                    round(float(cost.mean()), 6)])
    return out


def candidates(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Seed 0's rules with paired tests of each against the served rule over the same held-out prompts."""
    pp = res["per_prompt"]
    srv = {k: np.asarray(v) for k, v in pp["served"].items()}
    out = {}
    pol = res["kfold"][0]["policies"]
    for name in sorted(pol, key=lambda p: (["served", "router", "paper"] + sorted(pol)).index(p)):
        m = pol[name]
        row: dict[str, Any] = dict(m)
        if name != "served":
            o = {k: np.asarray(v) for k, v in pp[name].items()}
            row["cost_vs_served"] = stats.paired(o["cost"], srv["cost"])
            row["quality_vs_served"] = stats.paired(o["quality"], srv["quality"])
        out[name] = row
    return out


def acceptance(res: dict[str, Any]) -> dict[str, Any]:
    """The four conditions over seeds: a condition passes when it holds on the mean over seeds; how many
    seeds it holds on is reported next to it, and the miss rate is the share of seeds below 94.5%."""
    rows = [r["conditions"] for r in res["kfold"]]
    col = lambda k: np.array([r[k] for r in rows], float)  # noqa: E731
    q, c, rc = col("quality_rel"), col("cost"), col("router_cost")
    cheapest, hind = rows[0]["cheapest_single_stage"], float(res["hindsight_cost"])
    return {"seeds": len(rows), "quality_mean": float(q.mean()), "quality_min": float(q.min()),
            "miss_rate": float(np.mean(q < replay.TOLERANCE)), "cost_mean": float(c.mean()),
            "cost_max": float(c.max()), "cheapest_single_stage": cheapest, "router_cost_mean": float(rc.mean()),
            "hindsight_cost": hind, "hindsight_x1.1": 1.1 * hind,
            "pass": {"quality": bool(q.mean() >= replay.TOLERANCE), "cheapest_stage": bool(c.mean() <= cheapest + 1e-9),
                     "router": bool(c.mean() <= rc.mean() + 1e-9), "hindsight": bool(c.mean() <= 1.1 * hind + 1e-9)},
            "seeds_passing": {k: int(sum(bool(r[f]) for r in rows)) for k, f in
                              (("quality", "meets_quality"), ("cheapest_stage", "le_cheapest_stage"),
                               ("router", "le_router"), ("hindsight", "le_1.1_hindsight"))}}


def small_curve(res: dict[str, Any], kfold_cost: float, a: F.Arrays | None = None,
                gr: cascades.Grid | None = None, kf: KnownFrontier | None = None) -> dict[str, dict[str, Any]]:
    """Per fitting-set size: the served procedure over the draws, beside three yardsticks that no procedure is
    asked to beat: ``oracle_*``, the whole set's own hindsight cascade served on the same evaluated prompts
    (the metric's noise floor: a limit below its ratio cannot be met even knowing the population),
    ``price_x_hindsight`` (with ``a``), the cheapest hindsight cascade clearing the tolerance by z standard
    errors at m prompts (ltt_sweep.margin_cost: what the stated confidence costs on the frontier; ``gr``: its
    hindsight grid of ``a``, built once for every size), and ``one_test_*`` (with ``kf``), a single z-test on
    the known frontier fitted on each draw's own prompts (ltt_sweep.KnownFrontier)."""
    out = {}
    if a is not None and gr is None and res["small"]:
        gr = cascades.hindsight_grid(a)
    for m, rows in res["small"].items():
        if rows:
            cost = float(np.mean([r["cost"] for r in rows]))
            hind = float(np.mean([r["hindsight_cost"] for r in rows]))
            out[m] = {"seeds": len(rows), "cost": cost, "ratio_to_kfold": cost / kfold_cost,
                      "oracle_ratio": float(np.mean([r["oracle_cost"] for r in rows])) / max(hind, 1e-12),
                      "oracle_miss_rate": float(np.mean([not r["oracle_meets"] for r in rows])),
                      "hindsight_cost": hind, "ratio_to_hindsight": cost / max(hind, 1e-12),
                      "router_cost": float(np.mean([r["router_cost"] for r in rows])),
                      "quality_mean": float(np.mean([r["quality_rel"] for r in rows])),
                      "miss_rate": float(np.mean([not r["meets_quality"] for r in rows]))}
            if a is not None:
                conf = float(res["criterion"]["confidence"])
                out[m]["price_x_hindsight"] = margin_cost(a, int(res["reference"]), int(m), conf, gr=gr)[1]
            if kf is not None:   # the same draws: the replay's draw(N, s, m) for s < len(rows)
                c, met = kf.small(int(m), len(rows))
                out[m]["one_test_ratio"] = float(c.mean()) / max(hind, 1e-12)
                out[m]["one_test_miss_rate"] = float(1 - met.mean())
    return out


def job(spec: dict[str, Any]) -> dict[str, Any]:
    """One data set end to end (a worker process): convert or reuse, load, run, condense."""
    name = spec["name"]
    kind, arg = spec["convert"]
    path = convert(name, kind, arg, spec["key"], spec["limit"], spec["seed"], Path(spec["cache"]))
    a = replay_files.load(path, spec["seed"])
    crit = replay.resolve(a, F.Criterion(**spec["criterion"]))
    res = replay.run(a, spec["seeds"], crit, 5, spec["small"], spec.get("draws"))
    ref = int(crit.reference)
    acc = acceptance(res)
    recs, _ = replay_files.read_records(path)
    gr = cascades.hindsight_grid(a)      # the hindsight curve's and the promise's price per size
    kf = KnownFrontier(a, ref, crit.confidence, crit.t_lcb, gr)
    acc["one_test_x_hindsight"] = kf.kfold(spec["seeds"]) / acc["hindsight_cost"]
    return {"label": spec["label"], "cache": path.name, "n": res["n"], "costs": res["costs"],
            "stages": [s.get("model", f"stage{k}") for k, s in enumerate(recs[0]["stages"])],
            "accuracy": res["accuracy"], "auroc": [stats.auroc(a.correct[:, k], a.conf[:, k])
                                                   for k in range(a.conf.shape[1])],
            "acceptance": acc, "by_seed": [r["conditions"] for r in res["kfold"]],
            "choices": dict(sorted(Counter(c[0] + ("" if c[1] == "None" else f" {float(c[1]):.4g}")
                                           for r in res["kfold"] for c in r["choices"]).items())),
            "candidates": candidates(res), "small": small_curve(res, acc["cost_mean"], a, gr, kf),
            "reference": ref, "hindsight_curve": hindsight_curve(a, ref, gr=gr),
            "served_curve": served_curve(a, crit)}


def served() -> dict[str, Any] | None:
    """The operating point the server loads (what the report leads with), or None without an artifact."""
    try:
        art = json.loads(POLICY.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {"file": str(POLICY.relative_to(ROOT)), "format": art.get("format"), "stages": art.get("stages"),
            "costs": art.get("costs"), "operating": art.get("operating"), "criterion": art.get("criterion"),
            "calibration": art.get("calibration"), "paper": {"lambda": (art.get("paper") or {}).get("lambda")},
            "spec": art.get("spec")}


def sidecar() -> dict[str, Any] | None:
    """The served predictor's held-out metric table, if the sidecar carries one."""
    try:
        side = json.loads(SIDECAR.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    m = side.get("metrics") if isinstance(side, dict) else None
    return {"file": str(SIDECAR.relative_to(ROOT)), "arch": side.get("arch"), "metrics": m} if m else None


def _clean(x: object) -> object:
    """Strict JSON: NaN/inf -> null, numpy scalars -> Python numbers, floats rounded to 6 digits (stable)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, float | np.floating):
        return round(float(x), 6) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.report.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--seed", type=int, default=0, help="verifier folds and MMLU-Pro conversion seed")
    ap.add_argument("--seeds", type=int, default=10, help="fold assignments per data set (miss rate over them)")
    ap.add_argument("--small", default=",".join(map(str, SMALL)), help="fitting-set sizes of the small-data curve")
    ap.add_argument("--draws", type=int, default=20, help="random fitting sets per small-data size")
    ap.add_argument("--jobs", type=int, default=2, help="data sets run in parallel (processes)")
    ap.add_argument("--tiny", default=str(TINY), help="tiny-family replay JSONL")
    ap.add_argument("--routellm", default=None, help=f"RouteLLM evals folder (default {routellm.DEFAULT_DIR})")
    ap.add_argument("--mmlupro", default=None, help=f"MMLU-Pro zips folder (default {mmlupro.DEFAULT_DIR})")
    ap.add_argument("--mmlupro-limit", type=int, default=None, help="only the first N MMLU-Pro questions")
    ap.add_argument("--cache", default=str(CACHE), help="folder of converted replay JSONL")
    ap.add_argument("--only", action="append", choices=ORDER, help="run only these data sets")
    ap.add_argument("--render-only", action="store_true", help="redraw report.md and figures from summary.json")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.render_only:
        return write(out, json.loads((out / "summary.json").read_text(encoding="utf-8")))
    srv = served()
    # measure at the server's own target and confidence; the reference is each data set's best stage (the
    # artifact's reference is a stage of its own ladder), and a format-1 artifact's z is no longer used
    fields = {f.name for f in dataclasses.fields(F.Criterion)} - {"reference"}
    crit = vars(F.Criterion(**{k: v for k, v in ((srv or {}).get("criterion") or {}).items() if k in fields}))
    src = {k: v for k, v in sources(a).items() if not a.only or k in a.only}
    specs = [{"name": k, **v, "limit": a.mmlupro_limit, "seed": a.seed, "seeds": a.seeds, "criterion": crit,
              "cache": a.cache, "small": tuple(int(x) for x in a.small.split(",") if x), "draws": a.draws}
             for k, v in src.items() if "missing" not in v]
    specs.sort(key=lambda s: not s["name"].startswith("mmlupro"))   # the longest first
    if a.jobs <= 1 or len(specs) <= 1:
        results = [job(s) for s in specs]
    else:
        with Pool(min(a.jobs, len(specs))) as pool:
            results = pool.map(job, specs, chunksize=1)
    done = dict(zip([s["name"] for s in specs], results, strict=True))
    datasets = {k: done[k] if k in done else {"missing": src[k]["missing"]} for k in ORDER if k in src}
    summary = _clean({"seed": a.seed, "seeds": a.seeds, "draws": a.draws, "folds": 5, "criterion": crit,
                      "tolerance": replay.TOLERANCE,
                      "served": srv, "datasets": datasets, "predictor_sidecar": sidecar(),
                      "mmlupro_limit": a.mmlupro_limit, "order": list(datasets)})
    text = json.dumps(summary, indent=1, sort_keys=True, allow_nan=False) + "\n"
    (out / "summary.json").write_text(text, encoding="utf-8")
    return write(out, json.loads(text))   # render what was written: --render-only gives the same bytes


def write(out: Path, summary: dict[str, Any]) -> int:
    """Figures and report.md from the summary alone (so a rendering change never reruns the replays)."""
    summary = dict(summary, order=summary.get("order") or [k for k in ORDER if k in summary["datasets"]])
    datasets = {k: summary["datasets"][k] for k in summary["order"]}
    figs = {k: plots.cost_quality(k, r, out / f"cost_quality_{k}.png") for k, r in datasets.items() if "n" in r}
    if any(r.get("small") for r in datasets.values()):
        figs["small"] = plots.small_curve(datasets, out / "small_calibration.png")
    (out / "report.md").write_text(markdown.render(summary, figs), encoding="utf-8")
    print(f"wrote {out / 'report.md'}, {out / 'summary.json'} and {len(figs)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
