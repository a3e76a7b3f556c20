"""genai-perf against the OpenAI front end: TTFT, inter-token latency and throughput, cascade vs each stage.

$ make bench-openai                                   # its own genai-perf venv, a server on free ports
$ python -m optistop.perf.openai_bench --genai-perf .venv-genai-perf/bin/genai-perf --url 127.0.0.1:9000

For every model the front end serves (``cascade`` and each stage alone) and each concurrency, it runs
``genai-perf profile --endpoint-type chat --streaming`` on held-out task prompts (the same split as
``make bench``), interleaving models within a repeat, and writes the raw exports under
``bench/openai/raw/`` and the table to ``bench/openai/results.{json,md}``. genai-perf lives in its own
virtual environment (the Makefile makes it): its dependencies (pandas, pyarrow, plotly, optuna) are
not the server's. It drives the tritonclient 2.51 ``perf_analyzer`` binary it finds on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from optistop import ROOT
from optistop.perf.bench import held_out_prompts
from optistop.perf.perf_analyzer import BenchError, perf_analyzer_env

METRICS = ("time_to_first_token", "inter_token_latency", "request_latency")
OUT = ROOT / "bench" / "openai"


def genai_perf_command(exe: Path, *, url: str, model: str, tokenizer: Path, inputs: Path, concurrency: int,
                       requests: int, artifacts: Path) -> list[str]:
    return [str(exe), "profile", "-m", model, "--endpoint-type", "chat", "--streaming", "-u", url,
            "--tokenizer", str(tokenizer), "--input-file", str(inputs), "--concurrency", str(concurrency),
            "--request-count", str(requests), "--warmup-request-count", str(max(2, concurrency)),
            "--artifact-dir", str(artifacts)]


def summarise(export: dict[str, Any]) -> dict[str, float]:
    """The figures we report from one profile_export_genai_perf.json."""
    out = {f"{m}_{s}_ms": round(float(export[m][s]), 2) for m in METRICS for s in ("p50", "p99")}
    out["output_token_throughput_per_s"] = round(float(export["output_token_throughput"]["avg"]), 1)
    out["request_throughput_per_s"] = round(float(export["request_throughput"]["avg"]), 2)
    out["output_tokens_mean"] = round(float(export["output_sequence_length"]["avg"]), 2)
    return out


def start_local(spec_path: Path | None, log: Path) -> tuple[str, Any]:
    """An embedded tritonserver and the front end (in a thread) on free loopback ports."""
    import uvicorn

    from optistop.frontend.app import build_app
    from optistop.server.embedded import EmbeddedServer, ServerConfig, free_port

    cfg = ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    server = EmbeddedServer(cfg, log_path=log)
    server.__enter__()
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(build_app(cfg.grpc_url, spec_path), host="127.0.0.1", port=port,
                                       log_level="warning"))
    threading.Thread(target=web.run, daemon=True).start()
    while not web.started:
        time.sleep(0.05)

    def stop() -> None:
        web.should_exit = True
        server.stop()
    return f"127.0.0.1:{port}", stop


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = ("| model | concurrency | TTFT p50 / p99 (ms) | inter-token p50 / p99 (ms) | request p50 (ms) | "
            "output tokens/s | requests/s | output tokens |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['model']} | {r['concurrency']} | {r['time_to_first_token_p50_ms']} / "
        f"{r['time_to_first_token_p99_ms']} | {r['inter_token_latency_p50_ms']} / "
        f"{r['inter_token_latency_p99_ms']} | {r['request_latency_p50_ms']} | "
        f"{r['output_token_throughput_per_s']} | {r['request_throughput_per_s']} | {r['output_tokens_mean']} |\n"
        for r in rows)
    return (f"# genai-perf against the OpenAI front end\n\nCommand: `{meta['command']}`\n\n"
            f"genai-perf {meta['genai_perf']}, perf_analyzer {meta['perf_analyzer']}; {meta['machine']}; "
            f"{meta['prompts']} held-out task prompts, chat endpoint, streaming, {meta['requests']} requests per "
            f"cell, {meta['repeats']} interleaved repeats; each figure is the median over repeats.\n\n"
            + head + body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.perf.openai_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--genai-perf", type=Path, default=ROOT / ".venv-genai-perf" / "bin" / "genai-perf")
    ap.add_argument("--url", default=None, help="a running front end host:port (default: start one here)")
    ap.add_argument("--spec", type=Path, default=None)
    ap.add_argument("--concurrency", type=int, action="append", default=None, help="default 1 and 4")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    conc = args.concurrency or [1, 4]
    if not args.genai_perf.exists():
        print(f"error: {args.genai_perf} not found; run `make bench-openai` (it makes .venv-genai-perf)",
              file=sys.stderr)
        return 2
    try:
        pa, env = perf_analyzer_env()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env["PATH"] = os.pathsep.join([str(pa.parent), env.get("PATH", "")])   # genai-perf runs `perf_analyzer`
    from optistop.spec import load_spec

    spec = load_spec(args.spec) if args.spec else load_spec()
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    inputs = raw / "inputs.jsonl"
    prompts = held_out_prompts(4, 0)
    inputs.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts))
    url, stop = (args.url, None) if args.url else start_local(args.spec, raw / "server.log")
    models = ["cascade"] + [s.triton_model for s in spec.stages]
    cells: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for rep in range(args.repeats):
            for c in conc:
                for model in models:
                    art = raw / f"{model}-c{c}-r{rep}"
                    cmd = genai_perf_command(args.genai_perf, url=url, model=model, tokenizer=spec.tokenizer,
                                             inputs=inputs, concurrency=c, requests=args.requests, artifacts=art)
                    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                    exports = sorted(art.glob("*/profile_export_genai_perf.json"))
                    if proc.returncode != 0 or not exports:
                        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                        print(f"error: genai-perf failed on {model} c={c}: {' | '.join(tail)}", file=sys.stderr)
                        return 1
                    cells.setdefault((model, c), []).append(summarise(json.loads(exports[-1].read_text())))
                    print(f"repeat {rep} {model} c={c}: {cells[(model, c)][-1]}", flush=True)
    finally:
        if stop is not None:
            stop()
    rows = []
    for (model, c), runs in cells.items():
        med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
        rows.append({"model": model, "concurrency": c, **med})
    version = subprocess.run([str(args.genai_perf), "--version"], capture_output=True, text=True).stdout.strip()
    cmd = "python -m optistop.perf.openai_bench " + shlex.join(argv or sys.argv[1:])
    meta = {"command": f"make bench-openai  # runs: {cmd}",
            "genai_perf": version.split()[-1] if version else "?", "perf_analyzer": "2.51.0 (tritonclient)",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at end",
            "prompts": len(prompts), "requests": args.requests, "repeats": args.repeats}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(rows, meta))
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
