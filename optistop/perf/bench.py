"""One-command perf_analyzer benchmark: the cascade vs always-small/medium/large, side by side.

$ make bench                                   # starts its own server on free ports (about 6 min, 2 cores)
$ python client/bench.py --url 127.0.0.1:8001  # against a running server (gRPC)
$ python client/bench.py --quick               # 1 repeat, concurrency 1, 4 and 8: a smoke run (about 2 min)
$ python client/bench.py --report-only         # re-aggregate the raw files of the last run

For each repeat, concurrency and configuration (cascade at the spec's default policy and lambda, fixed:0,
fixed:1, fixed:2; the order rotates every round so machine drift hits all alike) it runs perf_analyzer on
``--input-data`` built from held-out task prompts, with ``--bls-composing-models`` set to the stage and
predictor models, and snapshots Triton's per-model statistics around the run. At concurrency 8 (else the
highest measured) the same rotation also runs each stage model directly on the same prompts, tokenised as
the cascade sends them: the ideal throughput of the cascade's stage mix (optistop.perf.stage_direct).
After each repeat, the controller overhead per predictor mode: requests alternate at concurrency 1
between cascade_bls and cascade_local, copies of the cascade that call the predictor through BLS and
score it in-process (optistop.perf.controller; the server it starts serves that repository copy); after
the server stops, the same loop with instant stage engines (offline). The headline overhead is the served
cascade's own ``controller_ms`` per stage run at concurrency 1, in whichever mode it serves.

Raw files go to artifacts/bench/; bench/results.json, bench/results.md and bench/latency_throughput.png
are the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from optistop import ROOT, __version__
from optistop.perf.controller import (
    MODES,
    alternate,
    mode_client,
    mode_repository,
    modes_summary,
    offline_overhead,
    served_mode,
)
from optistop.perf.markdown import write_markdown, write_plot
from optistop.perf.parse import parse_pa_csv, parse_profile_export, stats_diff
from optistop.perf.perf_analyzer import (
    BenchError,
    cascade_metrics,
    model_versions,
    perf_analyzer_env,
    perf_analyzer_version,
    run_perf_analyzer,
    server_version,
    triton_stats,
)
from optistop.perf.results import BASELINE, CASCADE, Run, aggregate
from optistop.perf.stage_direct import TARGET_RATIO, stage_config, stage_index, stage_inputs, throughput_vs_ideal
from optistop.spec import DEFAULT_SPEC, CascadeSpec, SpecError, load_spec


# --- inputs ---------------------------------------------------------------------------------------------
def held_out_prompts(per_cell: int, seed: int) -> list[str]:
    """Held-out (test split) prompts, every family and level, shuffled so each window sees a mix."""
    from optistop.tiny.tasks import generate_split

    prompts = [it.prompt for it in generate_split("test", per_cell, seed)]
    random.Random(seed).shuffle(prompts)
    return prompts


def input_data(prompts: list[str], policy: str | None, lam: float | None, max_tokens: int,
               audit: float | None = None) -> dict[str, Any]:
    """perf_analyzer --input-data: one batch-1 request per entry, sent round-robin. Without a policy (and
    lambda) the cascade serves its calibrated operating point; ``audit``: each request's audit probability."""
    extra = (({"policy": [policy]} if policy else {}) | ({"lambda": [lam]} if lam is not None else {})
             | ({"audit": [audit]} if audit is not None else {}))
    return {"data": [{"text_input": [p], "max_tokens": [max_tokens], **extra} for p in prompts]}


AUDITED = "cascade+audit"   # the cascade with audit sampling on; every other configuration sends audit = 0


def configurations(spec: CascadeSpec, audit_rate: float = 0.0) -> dict[str, str | None]:
    """Configuration name -> policy input. The cascade runs its default (the calibrated operating point),
    with auditing off and, when ``audit_rate`` > 0, on (AUDITED): the latency audits add, side by side."""
    audited = {AUDITED: spec.default_policy} if audit_rate > 0 else {}
    return {CASCADE: spec.default_policy, **audited, **{f"fixed:{k}": f"fixed:{k}" for k in range(len(spec.stages))}}


def ideal_concurrency(concurrency: list[int]) -> int:
    """The concurrency of the stage-direct runs and of the ideal throughput: 8 when measured, else the highest."""
    return 8 if 8 in concurrency else max(concurrency)


def measure(args: argparse.Namespace, spec: CascadeSpec, url: str, metrics_url: str | None,
            raw: Path) -> dict[str, Any]:
    """Interleaved runs, indexed in raw/runs.json; the controller modes' samples in raw/controller_modes.json.
    Returns for the meta: one perf_analyzer command line of the cascade as run, the mode it serves."""
    exe, env = perf_analyzer_env()
    prompts = held_out_prompts(args.per_cell, args.seed)
    stage_models = [s.triton_model for s in spec.stages]
    composing = model_versions(url, stage_models + [spec.predictor_model])
    cfgs = configurations(spec, args.audit_rate)
    target: dict[str, tuple[str, Path, list[str] | None]] = {}  # configuration -> model, input data, composing
    for name, policy in cfgs.items():
        target[name] = (args.model, raw / f"inputs_{name.replace(':', '')}.json", composing)
        audit = args.audit_rate if name == AUDITED else 0.0
        target[name][1].write_text(json.dumps(input_data(prompts, policy, args.lam, args.max_tokens, audit)),
                                   encoding="utf-8")
    stage_data = raw / "inputs_stage.json"
    stage_data.write_text(json.dumps(stage_inputs(spec.source, prompts, args.max_tokens)), encoding="utf-8")
    target |= {stage_config(k): (m, stage_data, None) for k, m in enumerate(stage_models)}

    def run(name: str, c: int, window: int, stem: str) -> list[str]:
        model, data, comp = target[name]
        return run_perf_analyzer(exe, env, model=model, url=url, data=data, composing=comp, concurrency=c,
                                 window=window, csv=raw / f"{stem}.csv", export=raw / f"{stem}.json",
                                 timeout=args.run_timeout)

    client, skipped = mode_client(url)
    ask_kw = dict(policy=cfgs[CASCADE], lam=args.lam, max_tokens=args.max_tokens)
    t0 = time.monotonic()
    for name in target:  # warm-up: every path of every model once, nothing recorded
        run(name, 2, 8, "warmup")
    if not skipped:
        alternate(client, prompts, 0, warmup=10, **ask_kw)
    index: list[dict[str, Any]] = []
    cmds: dict[str, list[str]] = {}  # one command line as run: of the cascade, of a stage model
    per_mode: dict[str, list[float]] = {m: [] for m in MODES}
    ideal_c, rounds = ideal_concurrency(args.concurrency), -(-args.overhead_requests // args.repeats)
    m_last: dict[str, float] | None = None   # the previous run's after-snapshot, when nothing ran since
    for rep in range(args.repeats):
        for ci, c in enumerate(args.concurrency):
            names = list(cfgs) + ([stage_config(k) for k in range(len(stage_models))] if c == ideal_c else [])
            shift = (rep + ci) % len(names)
            for name in names[shift:] + names[:shift]:
                stem = f"{name.replace(':', '')}_c{c}_r{rep}"
                before = triton_stats(url)
                m_before = m_last if m_last is not None else cascade_metrics(metrics_url)
                cmd = run(name, c, args.window, stem)
                cmds["stage" if stage_index(name) is not None else name] = cmd
                m_after = m_last = cascade_metrics(metrics_url)   # each snapshot waits for the cascade's flush
                index.append({"config": name, "concurrency": c, "rep": rep, "stem": stem,
                              "stats": stats_diff(before, triton_stats(url)),
                              "metrics": {k: v - m_before.get(k, 0.0) for k, v in m_after.items()}})
                print(f"[{time.monotonic() - t0:6.0f}s] rep {rep} c={c} {name}", flush=True)
        if not skipped:  # the controller modes, alternating at concurrency 1, a share of the requests per repeat
            for mode, xs in alternate(client, prompts, rounds, **ask_kw).items():
                per_mode[mode] += xs
            m_last = None
            print(f"[{time.monotonic() - t0:6.0f}s] rep {rep} controller modes x {rounds}", flush=True)
    (raw / "runs.json").write_text(json.dumps(index), encoding="utf-8")
    (raw / "controller_modes.json").write_text(json.dumps(
        {"per_decision_ms": {} if skipped else per_mode, "requests_per_mode": 0 if skipped else rounds * args.repeats,
         "skipped": skipped}), encoding="utf-8")
    served = served_mode(client, args.model, remote_predictor=bool(spec.predictor_url))
    client.close()
    line = lambda cmd: " ".join(["perf_analyzer", *cmd[1:]]).replace(str(ROOT) + "/", "")
    return {"perf_analyzer_command": line(cmds[CASCADE]), "stage_direct_command": line(cmds["stage"]),
            "served_predictor_mode": served}


def measure_offline(args: argparse.Namespace, raw: Path) -> None:
    """The controller loop with instant stage engines (no server), added to raw/controller_modes.json."""
    path = raw / "controller_modes.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["per_decision_ms"]["offline"] = offline_overhead(held_out_prompts(args.per_cell, args.seed),
                                                         args.overhead_requests)
    path.write_text(json.dumps(doc), encoding="utf-8")


def load_runs(raw: Path) -> list[Run]:
    """Every run of raw/runs.json; stage-direct runs (stage:<k>) carry perf_analyzer's CSV only."""
    index = json.loads((raw / "runs.json").read_text(encoding="utf-8"))
    runs = []
    for e in index:
        c = e["concurrency"]
        csv_rows = parse_pa_csv((raw / f"{e['stem']}.csv").read_text(encoding="utf-8"))
        recs = ({c: []} if stage_index(e["config"]) is not None else
                parse_profile_export(json.loads((raw / f"{e['stem']}.json").read_text(encoding="utf-8"))))
        runs.append(Run(e["config"], c, e["rep"], csv_rows[c], recs[c], e["stats"], e.get("metrics", {})))
    return runs


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "loadavg": list(os.getloadavg())}


def overhead_modes(raw: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Per-decision controller overhead per mode (bls, in_process, offline) from raw/controller_modes.json."""
    path = raw / "controller_modes.json"
    if not path.exists():
        return {}
    return modes_summary(json.loads(path.read_text(encoding="utf-8")), meta.get("served_predictor_mode"),
                         meta.get("command"))


def report(args: argparse.Namespace, spec: CascadeSpec, raw: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from optistop.serving.tokenizers import load_tokenizer

    tok = load_tokenizer(spec.tokenizer)
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids) + 1  # + the end token
    runs, n = load_runs(raw), len(spec.stages)
    res = aggregate([r for r in runs if stage_index(r.config) is None], n_stages=n, cascade_model=args.model,
                    stage_models=[s.triton_model for s in spec.stages], predictor=spec.predictor_model,
                    count_tokens=count)
    res["controller_overhead_served_mode"] = meta.get("served_predictor_mode")
    res["controller_overhead_modes"] = overhead_modes(raw, meta)
    ideal_c = ideal_concurrency(meta["concurrency"])
    ideal = res[f"throughput_vs_ideal_c{ideal_c}"] = throughput_vs_ideal(runs, n, ideal_c)
    if ideal:
        ideal["command"] = meta.get("stage_direct_command")  # one of the stage-direct perf_analyzer calls
    res["meta"] = meta
    res["audit_on_vs_off"] = audit_on_vs_off(res["configurations"])
    ratio = res.get("cascade_vs_large_latency_ratio", {})
    res["targets"] = {
        "controller_overhead_p99_le_1ms": (res.get("controller_overhead_p99_ms") or 1e9) <= 1.0,
        "cascade_mean_latency_below_large": {c: r is not None and r < 1.0 for c, r in ratio.items()},
        f"throughput_c{ideal_c}_ge_{TARGET_RATIO}_ideal": (ideal.get("ratio") or 0.0) >= TARGET_RATIO,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    write_markdown(res, args.out / "results.md")
    write_plot(res, args.out / "latency_throughput.png")
    return res


def audit_on_vs_off(table: dict[str, Any]) -> dict[str, Any]:
    """p50 / p99 latency of the cascade with auditing on over off, per concurrency (medians over repeats)."""
    on, off = table.get(AUDITED, {}), table.get(CASCADE, {})
    out = {}
    for c in on:
        if c in off:
            out[c] = {f"{k}_on": on[c].get(f"latency_{k}_ms") for k in ("p50", "p99")}
            out[c] |= {f"{k}_off": off[c].get(f"latency_{k}_ms") for k in ("p50", "p99")}
            out[c] |= {f"{k}_ratio": round(on[c][f"latency_{k}_ms"] / off[c][f"latency_{k}_ms"], 3)
                       for k in ("p50", "p99") if on[c].get(f"latency_{k}_ms") and off[c].get(f"latency_{k}_ms")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="gRPC host:port of a running server (default: start one on free ports)")
    ap.add_argument("--metrics-url", help="with --url: its metrics endpoint, e.g. http://127.0.0.1:8002/metrics")
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="cascade spec (stage models, lambda)")
    ap.add_argument("--model", default="cascade")
    ap.add_argument("--repository", type=Path, default=None, help="model repository of the server it starts")
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    ap.add_argument("--raw", type=Path, default=ROOT / "artifacts" / "bench")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--window", type=int, default=48, help="minimum requests per perf_analyzer window (x3)")
    ap.add_argument("--per-cell", type=int, default=4, help="held-out prompts per (family, level) cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lambda", dest="lam", type=float, default=None, help="default: the spec's")
    ap.add_argument("--max-tokens", type=int, default=None, help="default: the spec's")
    ap.add_argument("--overhead-requests", type=int, default=300,
                    help="requests per controller mode (bls, in_process, offline), spread over the repeats")
    ap.add_argument("--run-timeout", type=float, default=240.0, help="seconds per perf_analyzer call")
    ap.add_argument("--quick", action="store_true",
                    help="1 repeat, concurrency 1, 4 and 8, small windows, 60 requests per controller mode")
    ap.add_argument("--report-only", action="store_true", help="re-aggregate the raw files in --raw")
    ap.add_argument("--audit-rate", type=float, default=0.05,
                    help="also run the cascade with this audit rate beside it at 0 (latency with auditing on vs "
                    "off); 0: skip")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        spec = load_spec(args.spec, check_paths=False)  # the benchmark reads names, costs, defaults
    except SpecError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not 0.0 <= args.audit_rate <= 1.0:
        raise SystemExit(f"error: --audit-rate is {args.audit_rate}; a probability in [0, 1]")
    args.lam = spec.default_lambda if args.lam is None else args.lam
    args.max_tokens = args.max_tokens or spec.max_tokens_default
    if args.quick:
        args.repeats, args.concurrency, args.window, args.overhead_requests = 1, [1, 4, 8], 12, 60
    if BASELINE not in configurations(spec):
        raise SystemExit(f"error: the spec has no stage 2 for the {BASELINE} baseline")
    args.raw.mkdir(parents=True, exist_ok=True)
    meta_path = args.raw / "meta.json"
    try:
        if not args.report_only:
            meta = run_all(args, spec)
            meta_path.write_text(json.dumps(meta), encoding="utf-8")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        res = report(args, spec, args.raw, meta)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ideal = next((v for k, v in res.items() if k.startswith("throughput_vs_ideal_c")), {})
    modes = res.get("controller_overhead_modes", {})
    print(f"wrote {args.out / 'results.json'}, results.md, latency_throughput.png; "
          f"cascade/large mean latency {res.get('cascade_vs_large_latency_ratio')}; controller overhead "
          f"({res.get('controller_overhead_served_mode')}) p50 {res.get('controller_overhead_p50_ms')} ms p99 "
          f"{res.get('controller_overhead_p99_ms')} ms; per mode p99 "
          f"{ {m: v['p99_ms'] for m, v in modes.items() if isinstance(v, dict) and 'p99_ms' in v} }; throughput at "
          f"c={ideal.get('concurrency')} {ideal.get('cascade_infer_per_s')} vs ideal {ideal.get('ideal_infer_per_s')} "
          f"(ratio {ideal.get('ratio')}); latency with auditing on / off {res.get('audit_on_vs_off')}")
    return 0


def run_all(args: argparse.Namespace, spec: CascadeSpec) -> dict[str, Any]:
    from optistop.server.embedded import EmbeddedServer, ServerConfig, ServerError, free_port

    started = time.monotonic()
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python client/bench.py", *args.argv]).strip(),
        "machine": machine(), "repeats": args.repeats, "concurrency": args.concurrency,
        "window_requests": args.window, "prompts": 12 * args.per_cell, "seed": args.seed,
        "lambda": args.lam, "max_tokens": args.max_tokens, "policy": spec.default_policy or "operating point",
        "nominal_costs": list(spec.costs), "stage_models": [s.triton_model for s in spec.stages],
        "config_labels": {CASCADE: f"cascade ({spec.default_policy}, lambda {args.lam})" if spec.default_policy
                          else "cascade (calibrated operating point)",
                          AUDITED: f"cascade, {args.audit_rate:.0%} of requests audited",
                          **{f"fixed:{k}": f"fixed:{k} ({s.name})" for k, s in enumerate(spec.stages)}},
        "audit_rate": args.audit_rate,
    }
    exe, env = perf_analyzer_env()
    versions = {"perf_analyzer": perf_analyzer_version(exe, env), "optistop": __version__,
                "python": platform.python_version()}
    if args.url:
        versions["tritonserver"] = server_version(args.url)
        meta.update(measure(args, spec, args.url, args.metrics_url, args.raw))
    else:
        cfg = ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        source = (args.repository or cfg.repository).resolve()
        meta["repository"] = f"{source.name} (a copy with cascade_bls and cascade_local added for the modes)"
        try:
            with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
                cfg.repository = mode_repository(Path(tmp), source)
                # own backend directory: another server's running stub cannot be overwritten ("text file busy")
                with EmbeddedServer(cfg, workdir=args.raw / "server", log_path=args.raw / "server.log"):
                    versions["tritonserver"] = server_version(cfg.grpc_url)
                    meta["server_ready_s"] = round(time.monotonic() - started, 1)
                    meta.update(measure(args, spec, cfg.grpc_url, f"http://{cfg.host}:{cfg.metrics_port}/metrics",
                                        args.raw))
        except ServerError as exc:
            raise BenchError(str(exc)) from None
    measure_offline(args, args.raw)  # no server running (or, with --url, none of ours)
    meta["versions"] = versions
    meta["machine"]["loadavg_end"] = list(os.getloadavg())
    meta["wall_s"] = round(time.monotonic() - started, 1)
    return meta


if __name__ == "__main__":
    sys.exit(main())
