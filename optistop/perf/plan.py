"""Sizing the split layout: replicas per stage for a target request rate.

$ optistop plan --rate 200                       # tiny family: replay's stage mix, bench's throughput
$ optistop plan --rate 50 --spec deploy/overlays/qwen2.5-gpu/cascade.toml \\
      --throughput small=40,medium=12,large=5    # your own per-replica figures (infer/s), e.g. from GPUs

A stage k receives ``rate x ran_share[k]`` requests per second: ``ran_share`` is the fraction of
requests on which the cascade runs that stage (the replay's held-out operating point, reports/summary.json,
or the served cascade's, bench/results.json). One replica of stage k serves ``throughput[k]`` requests per
second: by default the bench's always-stage-k throughput at its highest concurrency, which was measured
through the whole single server on one 2-CPU machine, so it is a floor for a stage pod of its own.
Replicas = ceil(load / (throughput x utilisation)); the utilisation target leaves room for bursts while
the autoscaler catches up. The HPA then moves replicas around this figure on queue time (deploy/).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from optistop.spec import DEFAULT_SPEC, CascadeSpec, SpecError, load_spec

ROOT = DEFAULT_SPEC.parent
MIX_SOURCES = ("replay", "bench")


@dataclass(frozen=True)
class StagePlan:
    name: str
    share: float          # fraction of requests that run this stage
    load: float           # requests per second reaching it
    per_replica: float    # requests per second one replica serves
    replicas: int
    gpus: int             # replicas x tp_size


def plan(rate: float, shares: list[float], throughput: list[float], spec: CascadeSpec,
         utilisation: float = 0.7, min_replicas: int = 1) -> list[StagePlan]:
    if rate <= 0 or not 0 < utilisation <= 1:
        raise ValueError(f"need rate > 0 and 0 < utilisation <= 1, got {rate}, {utilisation}")
    if not len(shares) == len(throughput) == len(spec.stages):
        raise ValueError(f"need one share and one throughput per stage ({len(spec.stages)}), "
                         f"got {len(shares)} and {len(throughput)}")
    out = []
    for s, share, tput in zip(spec.stages, shares, throughput):
        load = rate * share
        replicas = max(min_replicas, math.ceil(load / (tput * utilisation) - 1e-9))
        out.append(StagePlan(s.name, share, load, tput, replicas, replicas * s.tp_size))
    return out


def replay_mix(summary: Path, dataset: str = "tiny", policy: str = "served") -> list[float]:
    data = json.loads(summary.read_text(encoding="utf-8"))
    try:
        return [float(x) for x in data["datasets"][dataset]["candidates"][policy]["ran_share"]]
    except KeyError:
        raise SpecError(f"{summary}: no datasets.{dataset}.candidates.{policy}.ran_share; run `make report`") from None


def bench_figures(results: Path) -> tuple[list[float], list[float]]:
    """(the served cascade's ran_stage shares, per-stage throughput of fixed:k at the top concurrency)."""
    data = json.loads(results.read_text(encoding="utf-8"))
    conf = data["configurations"]
    top = max(conf["cascade"], key=int)
    tput, k = [], 0
    while f"fixed:{k}" in conf:
        tput.append(float(conf[f"fixed:{k}"][top]["throughput_infer_per_s"]))
        k += 1
    return [float(x) for x in conf["cascade"][top]["ran_stage"]], tput


def table(rows: list[StagePlan], rate: float, utilisation: float) -> str:
    lines = [f"target {rate:g} requests/s, utilisation {utilisation:.0%}",
             "| stage | runs on | load (req/s) | per replica (req/s) | replicas | GPUs |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.name} | {r.share:.1%} | {r.load:.1f} | {r.per_replica:.1f} | {r.replicas} | {r.gpus} |"
              for r in rows]
    lines.append(f"| total | | | | {sum(r.replicas for r in rows)} | {sum(r.gpus for r in rows)} |")
    return "\n".join(lines)


def _by_stage(text: str, spec: CascadeSpec) -> list[float]:
    values = dict(kv.split("=", 1) for kv in text.split(","))
    unknown = set(values) - set(spec.stage_names)
    if unknown or len(values) != len(spec.stages):
        raise SpecError(f"--throughput needs one value per stage ({', '.join(spec.stage_names)}), got {text!r}")
    return [float(values[n]) for n in spec.stage_names]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop plan", description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, required=True, help="target requests per second into the cascade")
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="stages and their TP sizes")
    ap.add_argument("--mix", choices=MIX_SOURCES, default="replay",
                    help="stage shares: the replay's held-out operating point, or the served cascade's (bench)")
    ap.add_argument("--summary", type=Path, default=ROOT / "reports" / "summary.json")
    ap.add_argument("--bench", type=Path, default=ROOT / "bench" / "results.json")
    ap.add_argument("--throughput", help="per-replica requests/s per stage, e.g. small=40,medium=12,large=5 "
                    "(default: the bench's fixed:k figures)")
    ap.add_argument("--utilisation", type=float, default=0.7)
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, check_paths=False)
        bench_mix, bench_tput = bench_figures(args.bench)
        shares = replay_mix(args.summary) if args.mix == "replay" else bench_mix
        tput = _by_stage(args.throughput, spec) if args.throughput else bench_tput
        rows = plan(args.rate, shares, tput, spec, args.utilisation)
    except (SpecError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(rows, args.rate, args.utilisation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
