"""How long the policy fit takes: 3-, 4- and 5-stage ladders built from MMLU-Pro's real model outputs.

$ python -m optistop.perf.fit_bench                  # `make bench-fit`; --n 1500 --reps 1 --json out.json

The two converted MMLU-Pro ladders of the report (artifacts/report_cache, made by `make report`; converted
here when absent, minutes) share their questions, so joined by question they give six models, each with its
verifier confidence, ex-ante estimate and answer letter. From them (``n`` random questions, seeded):

- 3 stages: Qwen1.5-7B -> Qwen1.5-72B -> Qwen1.5-110B (costs 1 / 4.5 / 10, monotone);
- 4 stages: Llama-3.1-8B -> Qwen1.5-72B -> Qwen1.5-110B -> Llama-3.1-70B (1 / 3 / 6 / 10; the 72B is below
  the 8B: not monotone);
- 5 stages: Qwen1.5-7B -> Llama-3.1-8B -> Qwen1.5-72B -> Llama-3.1-70B -> gemini-1.5-pro (0.5 / 1 / 3 / 6 / 10).

Timed per ladder, wall clock: the policy fit of `optistop calibrate` (``build_artifact``: the operating point
by Learn-then-Test plus the fitted-Q grid a request's own lambda is served from), `optistop replay --fit A
--eval B` (fit on ``n``, evaluate on another ``n``), and one 5-fold `optistop replay FILE`. Also printed: the
5-fold quality and cost against the hindsight cascade, the router comparator (the router family alone with
the whole error budget) and the cheapest stage meeting the target, so a faster fit is seen not to cost quality
and the ladders where the served rule is dearer than the router stay in view.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optistop.offline import policy_fit as F
from optistop.offline import replay, replay_files
from optistop.offline.operating import build_artifact

MODELS = ("Qwen1.5-7B-Chat", "Meta-Llama-3_1-8B-Instruct", "Qwen1.5-72B-Chat", "Qwen1.5-110B",
          "Meta-Llama-3_1-70B-Instruct", "gemini-1.5-pro-002")
LADDERS: dict[int, tuple[tuple[str, ...], tuple[float, ...]]] = {
    3: (("Qwen1.5-7B-Chat", "Qwen1.5-72B-Chat", "Qwen1.5-110B"), (1.0, 4.5, 10.0)),
    4: (("Meta-Llama-3_1-8B-Instruct", "Qwen1.5-72B-Chat", "Qwen1.5-110B", "Meta-Llama-3_1-70B-Instruct"),
        (1.0, 3.0, 6.0, 10.0)),
    5: (("Qwen1.5-7B-Chat", "Meta-Llama-3_1-8B-Instruct", "Qwen1.5-72B-Chat", "Meta-Llama-3_1-70B-Instruct",
         "gemini-1.5-pro-002"), (0.5, 1.0, 3.0, 6.0, 10.0)),
}


def joined_records() -> dict[str, dict[str, dict]]:
    """question id -> model -> that model's stage record, over both converted MMLU-Pro ladders."""
    from optistop.report import build

    ns = argparse.Namespace(tiny=str(build.TINY), routellm=None, mmlupro=None, mmlupro_limit=None, seed=0)
    src = build.sources(ns)
    out: dict[str, dict[str, dict]] = {}
    for name in ("mmlupro_qwen", "mmlupro_llama"):
        v = src[name]
        if "missing" in v:
            raise SystemExit(f"fit_bench: {v['missing']}")
        path = build.convert(name, *v["convert"], v["key"], None, 0)
        for rec in replay_files.read_records(path)[0]:
            for st in rec["stages"]:
                out.setdefault(rec["id"], {})[st["model"]] = st
    return out


def ladder(joined: dict[str, dict[str, dict]], k: int, n: int, seed: int) -> tuple[F.Arrays, F.Arrays, list[str]]:
    """Two disjoint random samples of ``n`` questions (fit, eval) as arrays of the k-stage ladder."""
    models, costs = LADDERS[k]
    ids = sorted(q for q, m in joined.items() if all(x in m for x in models))
    pick = np.random.default_rng(seed).permutation(len(ids))
    recs = [{"id": ids[i], "stages": [dict(joined[ids[i]][m], cost=c) for m, c in zip(models, costs, strict=True)]}
            for i in pick[:2 * n]]
    from optistop.offline.operating import arrays_from_records

    return arrays_from_records(recs[:n]), arrays_from_records(recs[n:2 * n]), list(models)


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[tuple[float, float], Any]:
    """((wall s, CPU s of this process), result): on a shared machine the CPU time is the comparable one."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return (time.perf_counter() - t, time.process_time() - c), out


def bench(k: int, n: int, joined: dict[str, dict[str, dict]], seed: int = 0) -> dict[str, Any]:
    fit, ev, models = ladder(joined, k, n, seed)
    crit = replay.resolve(fit, F.Criterion(), models)
    t_cal, _ = timed(build_artifact, fit, models, crit, seed)
    t_fe, fe = timed(replay.fit_eval, fit, ev, crit, seed)
    t_kf, kf = timed(replay.kfold, fit, seed, crit, 5, True)
    ref = int(crit.reference)
    hind = replay.hindsight(fit, crit.target, ref=ref)
    cond = replay.summarise(fit, kf["per"], hind, kf["ran"], crit)["conditions"]
    return {"stages": k, "n": n, "models": models, "accuracy": fit.correct.mean(axis=0).round(3).tolist(),
            "reference": ref, "calibrate_fit_s": [round(x, 2) for x in t_cal],
            "fit_eval_s": [round(x, 2) for x in t_fe], "kfold5_s": [round(x, 2) for x in t_kf],
            "kfold5": cond, "fit_eval": fe["conditions"]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.perf.fit_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="prompts per fitting set")
    ap.add_argument("--stages", default="3,4,5", help="ladders to time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    joined = joined_records()
    rows = []
    print(f"policy fit times (wall s / CPU s of this process), {a.n} prompts per fitting set; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machines: the CPU figure is the comparable one)")
    print("| stages | accuracy | calibrate fit | replay --fit/--eval | 5-fold replay | 5-fold quality / cost "
          "| hindsight / router / cheapest adequate stage |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k in (int(x) for x in a.stages.split(",") if x):
        r = bench(k, a.n, joined, a.seed)
        c = r["kfold5"]
        print(f"| {k} | {' / '.join(f'{x:.2f}' for x in r['accuracy'])} (ref stage {r['reference']}) | "
              + " | ".join(f"{w:.1f} / {u:.1f} s" for w, u in (r["calibrate_fit_s"], r["fit_eval_s"], r["kfold5_s"]))
              + " | "
              f"{c['quality_rel']:.3f} / {c['cost']:.2f} | {c['hindsight_cost']:.2f} / {c['router_cost']:.2f} / "
              f"{c['cheapest_single_stage']:.2f} |", flush=True)
        rows.append(r)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
