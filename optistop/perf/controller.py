"""Controller overhead side by side: the predictor called through BLS vs run in the cascade's process.

$ python -m optistop.perf.controller --requests 300        # starts its own server (about 1 min)

One server holds two cascade models over the same stages and predictor: ``cascade`` (BLS call to the
``quality_predictor`` model, the default) and ``cascade_local`` (predictor_in_process: true). Requests
alternate between them at concurrency 1, so drift hits both alike. Each response's ``controller_ms``
(time outside stage engines: features, predictor, policy) divided by the stages it ran is one decision's
overhead; prints p50 / p99 per mode and writes bench/controller_overhead.json.

A third figure isolates the controller's own code: the same loop (optistop.cascade.run_cascade, the
in-process predictor, the optimal policy) in this process with stage engines that answer instantly, so
no other process competes for the CPU. The gap between it and ``in_process`` is scheduling on a
machine where tritonserver and five backend processes share two cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from optistop.serving.client import ask, make_client
from optistop.serving.embedded import ROOT, EmbeddedServer, ServerConfig, free_port
from optistop.tiny.tasks import generate_split


def two_cascade_repository(tmp: Path) -> Path:
    """A copy of model_repository with a second cascade model that scores in-process."""
    (tmp / "models").symlink_to(ROOT / "models")
    shutil.copy(ROOT / "cascade.toml", tmp / "cascade.toml")
    repo = tmp / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("__pycache__"))
    local = repo / "cascade_local"
    shutil.copytree(repo / "cascade", local)
    cfg = (local / "config.pbtxt").read_text(encoding="utf-8").replace('name: "cascade"', 'name: "cascade_local"')
    cfg = re.sub(r'(key: "predictor_in_process" value: \{ string_value: )"false"', r'\1"true"', cfg)
    (local / "config.pbtxt").write_text(cfg, encoding="utf-8")
    return repo


def offline_overhead(prompts: list[str], n: int) -> list[float]:
    """Per-decision controller time of the cascade loop with instant stage engines (no server)."""
    import asyncio

    from optistop.cascade import CascadeRequest, StageOutput, run_cascade
    from optistop.serving.cascade_service import CascadeService
    from optistop.serving.predictor_runtime import QualityPredictor

    svc = CascadeService.from_spec_file(ROOT / "cascade.toml")
    svc.check_repository(ROOT / "model_repository")  # loads the policy artifact
    qp = QualityPredictor(ROOT / "model_repository" / svc.spec.predictor_model / "1" / "model.onnx")

    class Instant:
        async def generate(self, stage: int, input_ids, max_tokens: int) -> StageOutput:
            return StageOutput((5, 6, 7), (-0.1, -0.2, -0.05), False)

        async def score(self, features: np.ndarray) -> np.ndarray:
            return qp.predict(features)

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
    per_decision: dict[str, list[float]] = {"cascade": [], "cascade_local": []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = two_cascade_repository(Path(tmp))
        cfg = ServerConfig(repository=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with EmbeddedServer(cfg):
            client = make_client(cfg.grpc_url)
            for i in range(args.requests + 20):
                for model in per_decision:
                    a = ask(client, "grpc", prompts[i % len(prompts)], model=model)
                    if i >= 20:  # the first 20 rounds warm up both
                        per_decision[model].append(a.controller_ms / len(a.stages_run))
    per_decision["offline"] = offline_overhead(prompts, args.requests)
    result = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "requests_per_mode": args.requests,
        "definition": "controller_ms (features + predictor + policy, measured inside the cascade) per stage run",
    }
    for model, xs in per_decision.items():
        mode = {"cascade": "bls", "cascade_local": "in_process"}.get(model, model)
        result[mode] = {"p50_ms": round(float(np.percentile(xs, 50)), 3),
                        "p99_ms": round(float(np.percentile(xs, 99)), 3),
                        "mean_ms": round(statistics.mean(xs), 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for mode in ("bls", "in_process", "offline"):
        r = result[mode]
        print(f"{mode:10s} controller overhead per decision: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
