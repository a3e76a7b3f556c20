"""Controller overhead side by side: the predictor called through BLS vs run in the cascade's process.

$ python -m optistop.perf.controller --requests 300        # starts its own server (about 1 min)

One server holds three copies of the cascade model over the same stages and predictor, whatever the
repository's default (``MODES``): ``cascade_bls`` (predictor_in_process "false": a BLS call to the
``quality_predictor`` model), ``cascade_local_ort`` ("true", predictor_engine "onnxruntime": the same
ONNX file scored in the cascade's process by onnxruntime) and ``cascade_local`` ("true", "numpy": the
same graph evaluated with numpy, optistop.serving.onnx_numpy). Requests rotate between them at
concurrency 1, so drift hits all alike. Each response's
``controller_ms`` (time outside stage engines: features, predictor, policy) divided by the stages it ran
is one decision's overhead; prints p50 / p99 per mode and writes bench/controller_overhead.json.
``make bench`` (optistop.perf.bench) runs the same functions in its own server and reports the same
figures in bench/results.json (``controller_overhead_modes``).

A third figure isolates the controller's own code: the same loop (optistop.cascade.run_cascade, the
in-process predictor, the optimal policy) in this process with stage engines that answer instantly, so
its caches stay warm. Inside the server each decision follows a ~10 ms stage call, and after that long
any code runs with cold CPU caches, even when this process spun on the CPU meanwhile (a 64-32-16-1
onnxruntime call: ~270 us after a 10 ms busy loop, ~50 us after 1 ms, ~15 us at once; on this shared
2-core VM): that, not scheduling, is most of the gap between ``offline`` and ``in_process``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optistop.client.cascade import ask, make_client
from optistop.render import pbtxt
from optistop.server.embedded import ROOT, EmbeddedServer, ServerConfig, free_port
from optistop.tiny.tasks import generate_split

PARAM, ENGINE = "predictor_in_process", "predictor_engine"
# mode -> (model name in the copied repository, its parameters)
MODES: dict[str, tuple[str, dict[str, str]]] = {
    "bls": ("cascade_bls", {PARAM: "false"}),
    "in_process_onnxruntime": ("cascade_local_ort", {PARAM: "true", ENGINE: "onnxruntime"}),
    "in_process": ("cascade_local", {PARAM: "true", ENGINE: "numpy"}),
}
DEFINITION = "controller_ms (features + predictor + policy, measured inside the cascade) per stage run"


def served_mode(client: Any, model: str = "cascade", remote_predictor: bool = False) -> str:
    """The mode a running cascade model serves, from its config, by CascadeService.for_triton's rule:
    predictor_in_process "false" -> "bls"; "true" -> in process; "auto" or absent (the default) -> in
    process unless its spec gives the predictor a url (``remote_predictor``). In process, engine
    "onnxruntime" -> "in_process_onnxruntime", else (numpy; auto is numpy whenever it matches
    onnxruntime at load, which the cascade logs) "in_process"."""
    params = client.get_model_config(model, as_json=True).get("config", {}).get("parameters", {})
    value = params.get(PARAM, {}).get("string_value", "auto")
    if not (value == "true" or (value == "auto" and not remote_predictor)):
        return "bls"
    engine = params.get(ENGINE, {}).get("string_value", "auto")
    return "in_process_onnxruntime" if engine == "onnxruntime" else "in_process"


def mode_repository(tmp: Path, source: Path = ROOT / "model_repository") -> Path:
    """A copy of ``source`` with more copies of its ``cascade`` model, one per mode (MODES), beside the
    unchanged ``cascade``. The spec and models its relative paths name are linked from ``source``'s parent."""
    (tmp / "models").symlink_to(source.parent / "models")
    shutil.copy(source.parent / "cascade.toml", tmp / "cascade.toml")
    repo = tmp / "model_repository"
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("__pycache__"))
    for model, params in MODES.values():
        shutil.copytree(repo / "cascade", repo / model)
        pbtxt.edit(repo / model / "config.pbtxt", name=model, parameters=params)   # each param set or added
    return repo


def alternate(client: Any, prompts: Sequence[str], rounds: int, warmup: int = 0,
              **ask_kw: Any) -> dict[str, list[float]]:
    """Per-decision controller_ms of each mode's cascade, requests alternating one by one (concurrency 1);
    the first ``warmup`` rounds are not recorded."""
    out: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(rounds + warmup):
        for mode, (model, _) in MODES.items():
            a = ask(client, "grpc", prompts[i % len(prompts)], model=model, **ask_kw)
            if i >= warmup:
                out[mode].append(a.controller_ms / max(1, len(a.stages_run)))
    return out


def summarize(xs: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(xs, 50)), 3), "p99_ms": round(float(np.percentile(xs, 99)), 3),
            "mean_ms": round(statistics.mean(xs), 3)}


def mode_client(url: str) -> tuple[Any, str | None]:
    """A gRPC client, and why the server cannot run the controller modes (MODES) or None when it can."""
    client = make_client(url)
    missing = [m for m, _ in MODES.values() if not client.is_model_ready(m)]
    if missing:
        return client, (f"the server at {url} has no {' / '.join(missing)}; serve the repository that "
                        "mode_repository builds (make bench without --url does)")
    return client, None


BENCH_METHOD = (
    "bls / in_process_onnxruntime / in_process: the models cascade_bls / cascade_local_ort / cascade_local "
    '(copies of the cascade with predictor_in_process "false" / "true" / "true" and predictor_engine - / '
    '"onnxruntime" / "numpy", optistop.perf.controller.mode_repository) in the bench\'s server, '
    "requests rotating at concurrency 1 after each repeat's perf_analyzer runs; offline: "
    "optistop.perf.controller.offline_overhead, the same loop in the bench's process with instant stage engines, "
    "after the server stopped")


def modes_summary(doc: dict[str, Any], served: str | None, command: str | None) -> dict[str, Any]:
    """results.json's controller_overhead_modes from make bench's raw samples (controller_modes.json:
    per_decision_ms per mode, requests_per_mode, skipped)."""
    return {**{mode: summarize(xs) for mode, xs in doc["per_decision_ms"].items() if xs},
            "served_mode": served, "requests_per_mode": doc["requests_per_mode"], "command": command,
            "method": BENCH_METHOD, "definition": DEFINITION,
            **({"skipped": doc["skipped"]} if doc.get("skipped") else {})}


def offline_overhead(prompts: list[str], n: int) -> list[float]:
    """Per-decision controller time of the cascade loop with instant stage engines (no server), scoring as
    the served default does (in process, engine "auto")."""
    import asyncio

    from optistop.cascade import CascadeRequest, StageOutput, run_cascade
    from optistop.serving.cascade_service import CascadeService
    from optistop.serving.predictor_runtime import QualityPredictor

    svc = CascadeService.from_spec_file(ROOT / "cascade.toml")
    svc.check_repository(ROOT / "model_repository")  # loads the policy artifact
    # the engine the served cascade uses by default ("auto": the compiled graph when it matches onnxruntime)
    qp = QualityPredictor(ROOT / "model_repository" / svc.spec.predictor_model / "1" / "model.onnx", engine="auto")

    class Instant:
        async def generate(self, stage: int, input_ids, max_tokens: int) -> StageOutput:
            return StageOutput((5, 6, 7), (-0.1, -0.2, -0.05), False)

        async def score(self, features: Sequence[Sequence[float]]) -> list[float]:
            return qp.score_trusted(features)   # as the served cascade calls it

    async def loop() -> list[float]:
        out = []
        for i in range(n + 20):
            p = prompts[i % len(prompts)]
            rule, lam = svc.policies.make(None, None)
            req = CascadeRequest(p, svc.encoder.encode(text=p).ids, 16, lam, rule)
            r = await run_cascade(req, svc.spec, Instant(), svc.decode)
            if i >= 20:
                out.append(r.controller_ms / len(r.stages_run))
        return out

    return asyncio.run(loop())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="per mode")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "controller_overhead.json")
    args = ap.parse_args(argv)
    prompts = [it.prompt for it in generate_split("test", 8, seed=21)]
    with tempfile.TemporaryDirectory() as tmp:
        repo = mode_repository(Path(tmp))
        cfg = ServerConfig(repository=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with EmbeddedServer(cfg):
            per_decision = alternate(make_client(cfg.grpc_url), prompts, args.requests, warmup=20)
    per_decision["offline"] = offline_overhead(prompts, args.requests)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "requests_per_mode": args.requests,
        "definition": DEFINITION,
    }
    result.update({mode: summarize(xs) for mode, xs in per_decision.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for mode in (*MODES, "offline"):
        r = result[mode]
        print(f"{mode:22s} controller overhead per decision: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
