"""perf_analyzer and Triton's client API as the benchmarks use them: find and start perf_analyzer, run
one measurement, snapshot per-model statistics and the cascade's Prometheus counters, read versions.

Shared by optistop.perf.bench (make bench), optistop.perf.profile and optistop.perf.openai_bench.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from optistop.perf.parse import parse_prometheus, stats_snapshot

METRICS_PREFIX = "optistop_cascade_"


class BenchError(RuntimeError):
    """The benchmark cannot run; the message says what is missing and how to get it."""


# --- perf_analyzer environment ------------------------------------------------------------------------
def perf_analyzer_env() -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary of tritonclient[all] and an environment in which it starts."""
    exe = Path(sys.prefix) / "bin" / "perf_analyzer"
    if not exe.exists():
        found = shutil.which("perf_analyzer")
        if not found:
            raise BenchError("perf_analyzer not found; it ships with tritonclient: "
                             "pip install 'tritonclient[all]==2.51.0' (or `make venv`)")
        exe = Path(found)
    env = dict(os.environ)
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    libs = [str(Path(p) / "lib") for p in (spec.submodule_search_locations or [])] if spec else []
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    proc = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        if "libb64" in err:
            raise BenchError("perf_analyzer needs libb64.so.0d: sudo apt-get install libb64-0d "
                             "(or `make sysdeps`)")
        if "libcudart" in err:
            raise BenchError("perf_analyzer needs libcudart.so.12: pip install nvidia-cuda-runtime-cu12 "
                             "(in the serve extra; `make venv`)")
        raise BenchError(f"perf_analyzer does not start: {err.splitlines()[-1] if err else proc.returncode}")
    return exe, env


def perf_analyzer_version(exe: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr  # the version line goes to stderr
    return out.strip().split("Version")[-1].split("(")[0].strip() or out.strip()


# --- running -----------------------------------------------------------------------------------------------
def run_perf_analyzer(exe: Path, env: dict[str, str], *, model: str, url: str, data: Path, concurrency: int,
                      window: int, composing: list[str] | None, csv: Path, export: Path, timeout: float) -> list[str]:
    """One perf_analyzer measurement; ``composing`` (the models a BLS model calls) None for a plain model."""
    cmd = [str(exe), "-m", model, "-u", url, "-i", "grpc", "--input-data", str(data),
           "--concurrency-range", str(concurrency),
           # Each call measures exactly 3 windows of >= `window` requests (perf_analyzer's stability search
           # is off); repeats, interleaving and medians take its place.
           "--measurement-mode", "count_windows", "--measurement-request-count", str(window),
           "--stability-percentage", "1000", "--max-trials", "3",
           "--warmup-request-count", str(2 * concurrency),
           "-f", str(csv), "--verbose-csv", "--profile-export-file", str(export)]
    if composing:  # versions pinned: with none, perf_analyzer fails when a composing model is not called in a window
        cmd += ["--bls-composing-models", ",".join(composing)]
    for old in (csv, export):  # perf_analyzer refuses an existing --profile-export-file
        old.unlink(missing_ok=True)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"perf_analyzer ran past {timeout:.0f}s at concurrency {concurrency}") from None
    (csv.parent / (csv.stem + ".log")).write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0 or not csv.exists():
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        why = next((ln for ln in lines if ln.lower().startswith("error")), lines[-1] if lines else "")
        raise BenchError(f"perf_analyzer failed (exit {proc.returncode}): {why}; see {csv.parent / csv.stem}.log")
    return cmd


def triton_stats(url: str) -> dict[str, dict[str, int]]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return stats_snapshot(client.get_inference_statistics(as_json=True))
    finally:
        client.close()


def cascade_metrics(metrics_url: str | None) -> dict[str, float]:
    """The cascade's own Prometheus counters (optistop_cascade_*), summed over labels; {} without a URL.
    Waits two flush intervals first: the cascade sends its increments every FLUSH_S."""
    import time
    import urllib.request

    from optistop.serving.prometheus import FLUSH_S

    if not metrics_url:
        return {}
    time.sleep(2 * FLUSH_S)
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        return parse_prometheus(resp.read().decode(), METRICS_PREFIX)


def model_versions(url: str, models: list[str]) -> list[str]:
    """``name:version`` (the highest ready version) for each model, as --bls-composing-models takes them."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        out = []
        for m in models:
            try:
                versions = client.get_model_metadata(m, as_json=True).get("versions") or ["1"]
            except InferenceServerException as exc:
                raise BenchError(f"model {m!r} is not available on {url}: {exc.message()}") from None
            out.append(f"{m}:{max(versions, key=int)}")
        return out
    finally:
        client.close()


def server_version(url: str) -> str | None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return client.get_server_metadata(as_json=True).get("version")
    finally:
        client.close()
