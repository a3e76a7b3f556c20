"""Side-by-side measurement of the operating-point procedure's variants on one replay file.

$ python -m optistop.offline.ltt_sweep FILE.jsonl --sizes 300,1000 --draws 20 --whole 0,auto --kfold
$ python -m optistop.offline.ltt_sweep FILE.jsonl --sizes 300,1000 --margin  # the confidence's price on the frontier
                                                                              # (margin_cost, KnownFrontier)

For each ``Criterion`` variant (``--whole``: the share of the error budget spent on the whole-data pair
paths, 0 = the split-only Learn-then-Test) it runs the replay's ``--small`` protocol on the SAME draws
(draw s: the seeded permutation 2000 + s, as ``optistop replay`` draws them) and, with ``--kfold``, one
5-fold pass (seed 0): mean cost, cost / the hindsight subset cascade on the evaluated prompts, miss rate
(share of draws below 94.5% of the reference) and mean quality. Measurement only; no test runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from optistop.offline import cascades, ltt
from optistop.offline import policy_fit as F
from optistop.offline import replay as R


def small(a: F.Arrays, crit: F.Criterion, m: int, draws: int) -> dict[str, float]:
    ref, rows = int(crit.reference), []
    for s in range(draws):
        fi, ei = R.draw(len(a.conf), s, m)
        ev = a.take(ei)
        o = R.fit_and_run(a.take(fi), ev, s, crit, extras=False)
        for k in ("_choice", "_ran", "_path"):
            o.pop(k)
        rows.append(R.summarise(ev, o, R.hindsight(ev, crit.target, ref=ref), crit=crit)["conditions"])
    return {"cost": float(np.mean([r["cost"] for r in rows])),
            "x_hindsight": float(np.mean([r["cost"] / r["hindsight_cost"] for r in rows])),
            "miss": float(np.mean([not r["meets_quality"] for r in rows])),
            "quality": float(np.mean([r["quality_rel"] for r in rows]))}


def kfold(a: F.Arrays, crit: F.Criterion, hind: float) -> dict[str, float]:
    k = R.kfold(a, 0, crit, 5, extras=False)
    c = R.summarise(a, k["per"], hind, k["ran"], crit)["conditions"]
    return {"cost": c["cost"], "x_hindsight": c["cost"] / hind, "quality": c["quality_rel"],
            "le_stage": c["le_cheapest_stage"], "le_router": c["le_router"]}


def margin_cost(a: F.Arrays, ref: int, m: int, confidence: float = 0.9, tol: float = R.TOLERANCE,
                target: float = R.TARGET, gr: cascades.Grid | None = None) -> tuple[float, float]:
    """What the stated confidence costs along the hindsight frontier at m fitting prompts: the cheapest
    hindsight cascade (tuned on all of ``a``) whose quality clears ``tol`` by z standard errors of its own
    d = q - tol q_ref at m prompts (z: the one-sided normal quantile of ``confidence``). A guide, not a
    bound: a procedure may find rules off that frontier that agree more with the reference (smaller sd).
    Returns (that cascade's quality / the reference's, its cost / the hindsight cost at ``target``).
    ``gr``: ``cascades.hindsight_grid(a)`` when the caller has it (one per set, not one per size)."""
    from scipy.stats import norm

    gr = cascades.hindsight_grid(a) if gr is None else gr
    q_ref = a.correct[:, ref].astype(float)
    h_cost = cascades.hindsight_point(a, ref, target, gr)[1]
    z = float(norm.ppf(confidence))
    for level in np.arange(tol, 1.0 + 1e-9, 0.0025):
        i = gr.cheapest(level * q_ref.mean())
        if i is None:
            break
        d = F.outcome(gr.rule(i), a)[0] - tol * q_ref
        if d.mean() - z * d.std() / np.sqrt(m) >= 0:
            return float(gr.quality[i] / q_ref.mean()), float(gr.cost[i]) / h_cost
    return 1.0, float(a.costs[ref]) / h_cost


class KnownFrontier:
    """A yardstick for the stated confidence's price: a procedure that is handed the population's own
    hindsight frontier (threshold cascades over stage subsets tuned on every label of ``a``) and, on a
    fitting set, serves the cheapest frontier rule that ONE one-sided z-test at level 1 - confidence
    certifies (mean of d = q - tol q_ref above z standard errors). Favoured twice over any real procedure:
    it learns nothing (the frontier is given) and pays for no multiplicity (picking the cheapest passing
    rule among many is itself a selection the z-test does not charge for, and z is above its level on
    skewed d). Where it misses a limit, no valid procedure that learns a threshold cascade from those
    prompts meets it (a family off that frontier, a router, may). The reference stage serves where nothing
    passes."""

    def __init__(self, a: F.Arrays, ref: int, confidence: float = 0.9, tol: float = R.TOLERANCE,
                 gr: cascades.Grid | None = None, cap: int = 400) -> None:
        from scipy.stats import norm

        gr = cascades.hindsight_grid(a) if gr is None else gr
        front = ltt.frontier_path(gr.cost, gr.quality, -np.inf, cap)[::-1]          # cheapest first
        outs = [F.outcome(gr.rule(int(i)), a) for i in front]
        self.q = np.stack([o[0] for o in outs] + [a.correct[:, ref].astype(float)])   # (rules + ref, N)
        self.c = np.stack([o[1] for o in outs] + [np.full(len(a.conf), float(a.costs[ref]))])
        self.q_ref, self.tol, self.z = a.correct[:, ref].astype(float), tol, float(norm.ppf(confidence))

    def pick(self, idx: np.ndarray) -> int:
        """Row of the rule served after fitting on prompts ``idx``."""
        d = self.q[:-1, idx] - self.tol * self.q_ref[idx]
        ok = d.mean(axis=1) - self.z * d.std(axis=1, ddof=1) / np.sqrt(len(idx)) > 0
        return int(np.argmax(ok)) if ok.any() else len(self.q) - 1

    def kfold(self, seeds: int, folds: int = 5) -> float:
        """Mean held-out cost over ``seeds`` K-fold passes (the replay's folds)."""
        N, costs = self.q.shape[1], []
        for s in range(seeds):
            fid, cost = R.fold_ids(N, s, folds), np.zeros(N)
            for f in range(folds):
                te = fid == f
                cost[te] = self.c[self.pick(np.flatnonzero(~te)), te]
            costs.append(cost.mean())
        return float(np.mean(costs))

    def small(self, m: int, draws: int) -> tuple[np.ndarray, np.ndarray]:
        """Per draw of the replay's small-data protocol: (mean cost, met the tolerance) on the evaluated prompts."""
        cost, met = np.zeros(draws), np.zeros(draws, bool)
        for s in range(draws):
            fi, ei = R.draw(self.q.shape[1], s, m)
            r = self.pick(fi)
            cost[s], met[s] = self.c[r, ei].mean(), self.q[r, ei].mean() >= self.tol * self.q_ref[ei].mean()
        return cost, met


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.offline.ltt_sweep", description=__doc__.split("\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--sizes", default="300,1000", help="fitting-set sizes of the --small protocol")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--whole", default=None,
                    help="Criterion.whole values to compare (auto: policy_fit.whole_share; default 0,auto)")
    ap.add_argument("--kfold", action="store_true", help="also one 5-fold pass per variant")
    ap.add_argument("--margin", action="store_true",
                    help="only print what the confidence costs on the hindsight frontier per size (margin_cost)")
    args = ap.parse_args(argv)
    if args.margin and (args.kfold or args.whole is not None):
        ap.error("--margin prints the frontier's yardsticks alone; it does not take --kfold or --whole")
    a = R.load(args.file)
    base = R.resolve(a, F.Criterion.at(R.TARGET, 0.9, "best"))
    hind = R.hindsight(a, base.target, ref=int(base.reference))
    name = args.file.name.split("-")[0]
    if args.margin:
        for m in (int(x) for x in args.sizes.split(",") if x):
            q, x = margin_cost(a, int(base.reference), m)
            print(f"{name} at {m} prompts: the hindsight cascade clearing the tolerance by z se has quality "
                  f"{q:.3f} of the reference at {x:.3f} x the hindsight cost")
        kf = KnownFrontier(a, int(base.reference))
        print(f"{name}: one z-test on the known frontier, 5-fold x 10 seeds: {kf.kfold(10) / hind:.3f} x hindsight")
        for m in (int(x) for x in args.sizes.split(",") if x):
            cost, met = kf.small(m, args.draws)
            hs = [R.hindsight(a.take(R.draw(len(a.conf), s, m)[1]), base.target, ref=int(base.reference))
                  for s in range(args.draws)]
            print(f"{name} at {m} prompts, {args.draws} draws: one z-test on the known frontier costs "
                  f"{cost.mean() / np.mean(hs):.3f} x hindsight, miss rate {1 - met.mean():.2f}")
        return 0
    for w in (None if x == "auto" else float(x) for x in (args.whole or "0,auto").split(",")):
        crit = dataclasses.replace(base, whole=w)
        for m in (int(x) for x in args.sizes.split(",") if x):
            t0 = time.perf_counter()
            r = small(a, crit, m, args.draws)
            print(f"{name} whole={w} fit on {m} x{args.draws}: cost {r['cost']:.3f} ({r['x_hindsight']:.3f} x "
                  f"hindsight), miss rate {r['miss']:.2f}, quality {r['quality']:.3f} "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        if args.kfold:
            r = kfold(a, crit, hind)
            print(f"{name} whole={w} 5-fold: cost {r['cost']:.3f} ({r['x_hindsight']:.3f} x hindsight), quality "
                  f"{r['quality']:.3f}, <= cheapest stage {r['le_stage']}, <= router {r['le_router']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
