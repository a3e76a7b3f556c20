"""Where the cascade's time goes: py-spy on the cascade and predictor processes under perf_analyzer load.

$ pip install py-spy                                  # not in the lock file: a diagnostic tool
$ python -m optistop.perf.profile                    # starts a server on free ports; writes bench/profile.md

Runs perf_analyzer on the cascade (default policy and lambda, concurrency 1) while ``py-spy record`` samples
the Python-backend stub processes of ``cascade`` and ``quality_predictor``. Each sample is 1/rate seconds of
one thread; dividing by the cascade requests Triton counted over the same interval gives milliseconds per
request, by function (inclusive). Threads waiting (epoll, condition variables, idle pool workers) are left out.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from optistop.perf.bench import ROOT, held_out_prompts, input_data
from optistop.perf.parse import stats_diff
from optistop.perf.perf_analyzer import BenchError, perf_analyzer_env, triton_stats
from optistop.server.embedded import free_port
from optistop.spec import DEFAULT_SPEC, load_spec

IDLE_LEAVES = ("EpollSelector.select", "Condition.wait", "concurrent/futures/thread.py:81)")


def stub_pids(models: list[str]) -> dict[str, int]:
    """PIDs of the Python-backend stubs serving ``models`` (the stub's first argument is the model path)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    pids = {}
    for line in out.splitlines():
        if "triton_python_backend_stub" not in line:
            continue
        pid, *args = line.split()
        model = Path(args[1]).parts[-3] if len(args) > 1 else ""
        if model in models:
            pids[model] = int(pid)
    return pids


def inclusive_ms(collapsed: str, rate: int, requests: int, top: int) -> tuple[float, list[tuple[str, float]]]:
    """py-spy raw (collapsed) stacks -> (busy ms per request, [(frame, inclusive ms per request)])."""
    incl: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        raw = stack.split(";")
        if not raw or any(raw[-1].startswith(leaf) or leaf in raw[-1] for leaf in IDLE_LEAVES):
            continue
        # one row per function: drop the line number and the install prefix
        frames = [re.sub(r":\d+\)$", ")", re.sub(r" \(\S*?/(?:site-packages|python3\.\d+|main)/", " (", f))
                  for f in raw]
        busy += int(n)
        for f in set(frames):
            incl[f] += int(n)
    per = lambda n: 1e3 * n / rate / max(1, requests)
    skip = ("Thread.", "BaseEventLoop.run_forever", "BaseEventLoop._run_once", "Handle._run", "<module>")
    rows = [(f, per(n)) for f, n in incl.most_common() if f.strip() and not f.startswith(skip)]
    return per(busy), rows[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=None)
    ap.add_argument("--duration", type=int, default=20, help="seconds of sampling")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "profile.md")
    ap.add_argument("--raw", type=Path, default=ROOT / "artifacts" / "bench_profile")
    args = ap.parse_args(argv)
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.prefix) / "bin"))
    if not pyspy:
        print("error: py-spy not found; pip install py-spy", file=sys.stderr)
        return 1
    from optistop.server.embedded import EmbeddedServer, ServerConfig

    spec = load_spec(DEFAULT_SPEC, check_paths=False)
    args.raw.mkdir(parents=True, exist_ok=True)
    data = args.raw / "inputs.json"
    data.write_text(json.dumps(input_data(held_out_prompts(4, 0), spec.default_policy, spec.default_lambda,
                                          spec.max_tokens_default)))
    cfg = ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    if args.repository:
        cfg.repository = args.repository.resolve()
    models = ["cascade", spec.predictor_model]
    exe, env = perf_analyzer_env()
    with EmbeddedServer(cfg, workdir=args.raw / "server", log_path=args.raw / "server.log"):
        pids = stub_pids(models)
        if set(pids) != set(models):
            raise BenchError(f"stub processes not found for {set(models) - set(pids)}")
        pa = subprocess.Popen([str(exe), "-m", "cascade", "-u", cfg.grpc_url, "-i", "grpc", "--input-data", str(data),
                               "--concurrency-range", "1", "--measurement-interval", str((args.duration + 10) * 1000),
                               "--stability-percentage", "1000", "--max-trials", "3"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            time.sleep(3)  # past perf_analyzer's start
            before = triton_stats(cfg.grpc_url)
            spies = [subprocess.Popen([pyspy, "record", "-p", str(pids[m]), "-d", str(args.duration), "-r",
                                       str(args.rate), "-f", "raw", "-o", str(args.raw / f"{m}.txt"), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for m in models]
            for s in spies:
                s.wait()
            n = stats_diff(before, triton_stats(cfg.grpc_url))["cascade"]["success_count"]
        finally:
            pa.kill()
            pa.wait()
    lines = ["# Where the cascade's time goes (py-spy)", "",
             f"`python -m optistop.perf.profile`: cascade ({spec.default_policy or 'operating point'}) "
             f"at concurrency 1 under perf_analyzer; {args.duration} s at {args.rate} samples/s; {n} cascade requests "
             "(Triton's count). Milliseconds per cascade request, inclusive (a function's own time plus its callees'), "
             "busy threads only; frames without a name are the stub's native code (IPC with the server). py-spy "
             "samples without pausing the process but shares the CPUs: read the split, not the absolute figures.",
             ""]
    for m in models:
        busy, rows = inclusive_ms((args.raw / f"{m}.txt").read_text(encoding="utf-8"), args.rate, n, args.top)
        lines += [f"## `{m}` process: {busy:.2f} ms busy per cascade request", "", "| frame | ms / request |",
                  "| --- | --- |"] + [f"| `{f}` | {ms:.3f} |" for f, ms in rows] + [""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
