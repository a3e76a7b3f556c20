"""Bounded load on the served cascade (loopback only): good and bad requests mixed, at fixed concurrency.

$ python -m optistop.reliability.soak --duration 60 --concurrency 16          # `make soak`: starts its own server
$ python -m optistop.reliability.soak --url 127.0.0.1:8001 --server-pid PID   # against a running server

Checks: every good request succeeds, every bad one is rejected with INVALID_ARG, the server's resident
memory (tritonserver and its backend stub processes) grows < 10% after warm-up, and, when it started the
server itself, no shared-memory region of that server is left in /dev/shm after it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from optistop.client.cascade import ask, build_inputs, make_client
from optistop.tiny.tasks import generate_split

BAD: list[dict] = [
    dict(prompt=""), dict(prompt="1+1=", lam=-1.0), dict(prompt="1+1=", policy="nope"),
    dict(prompt="1+1=", max_tokens=0), dict(prompt="9" * 70 + "="), dict(prompt=b"\xff\xfe"),
]


@dataclass
class SoakReport:
    duration_s: float
    concurrency: int
    sent: int = 0
    good_ok: int = 0
    good_failed: int = 0
    bad_rejected: int = 0
    bad_accepted: int = 0
    rss_mb_after_warmup: float = 0.0
    rss_mb_end: float = 0.0
    rss_growth_pct: float = 0.0
    leaked_shm_regions: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.good_failed == 0 and self.bad_accepted == 0 and self.rss_growth_pct < 10.0
                and not self.leaked_shm_regions)


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants in MiB (a process gone meanwhile counts 0)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in tree:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def run_load(url: str, server_pid: int, duration: float, concurrency: int, warmup: int = 32) -> SoakReport:
    report = SoakReport(duration, concurrency)
    good = [it.prompt for it in generate_split("test", 4, seed=3)]
    client = make_client(url, "grpc")
    for p in good[:warmup]:
        ask(client, "grpc", p)
    report.rss_mb_after_warmup = process_tree_rss_mb(server_pid)
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def worker(w: int) -> None:
        from tritonclient.utils import InferenceServerException

        c = make_client(url, "grpc")
        i = w
        while time.monotonic() < deadline:
            i += concurrency
            is_bad = i % 5 == 0  # one request in five is bad
            kw = BAD[i % len(BAD)] if is_bad else dict(prompt=good[i % len(good)])
            try:
                c.infer("cascade", build_inputs("grpc", **kw))
                ok, msg = True, ""
            except InferenceServerException as exc:
                ok, msg = False, f"{exc.status()}: {exc.message()}"
            with lock:
                report.sent += 1
                if is_bad and not ok and "INVALID_ARG" in msg:
                    report.bad_rejected += 1
                elif is_bad:
                    report.bad_accepted += 1
                    report.failures.append(f"bad request {kw!r} got: {msg or 'accepted'}")
                elif ok:
                    report.good_ok += 1
                else:
                    report.good_failed += 1
                    report.failures.append(f"good request {kw!r} failed: {msg}")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.rss_mb_end = process_tree_rss_mb(server_pid)
    report.rss_growth_pct = 100 * (report.rss_mb_end / report.rss_mb_after_warmup - 1)
    report.failures = report.failures[:20]
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--url", default=None, help="gRPC host:port of a running server (default: start one)")
    ap.add_argument("--server-pid", type=int, default=None, help="with --url: the tritonserver pid, for RSS")
    args = ap.parse_args(argv)
    if args.url:
        if args.server_pid is None:
            ap.error("--url needs --server-pid to measure the server's memory")
        report = run_load(args.url, args.server_pid, args.duration, args.concurrency)
    else:
        from optistop.server.embedded import EmbeddedServer, ServerConfig, free_port

        prefix = f"optistop_soak_{os.getpid()}_"
        cfg = ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                           shm_prefix=prefix)
        with EmbeddedServer(cfg) as srv:
            assert srv.proc is not None
            report = run_load(cfg.grpc_url, srv.proc.pid, args.duration, args.concurrency)
        report.leaked_shm_regions = len(list(Path("/dev/shm").glob(prefix + "*")))
    print(json.dumps(asdict(report), indent=2))
    print(f"sent {report.sent}, good failures {report.good_failed}, bad rejected {report.bad_rejected}/"
          f"{report.bad_rejected + report.bad_accepted}, RSS {report.rss_mb_after_warmup:.0f} -> "
          f"{report.rss_mb_end:.0f} MB ({report.rss_growth_pct:+.1f}%), leaked shm "
          f"{report.leaked_shm_regions}: {'OK' if report.ok else 'FAILED'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
