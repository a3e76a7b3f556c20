"""Latency with auditing on vs off, interleaved: what the audits' background stage calls cost the requests.

$ python -m optistop.perf.audit_latency [--url 127.0.0.1:8001] [--blocks 30] [--rate 0.05]

Closed loop at concurrency 1 over held-out task prompts; blocks of 20 requests alternate between the
request input ``audit`` = 0 and ``audit`` = RATE, so that load changes on a shared machine fall on both
alike. Prints p50 and p99 of each and their ratio. Without ``--url`` it starts the embedded server on free
ports. (``make bench`` has the same comparison under perf_analyzer: the ``cascade+audit`` configuration.)
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np


def measure(url: str, blocks: int, rate: float, block: int = 20) -> dict[float, list[float]]:
    from optistop.client.cascade import ask, make_client
    from optistop.tiny.tasks import generate_split

    client = make_client(url, "grpc")
    prompts = [it.prompt for it in generate_split("test", 4, 0)]
    random.Random(0).shuffle(prompts)
    for p in prompts[:10]:   # warm-up
        ask(client, "grpc", p, audit=0.0)
    lat: dict[float, list[float]] = {0.0: [], rate: []}
    i = 0
    for b in range(blocks):
        r = (0.0, rate)[b % 2]
        for _ in range(block):
            t = time.perf_counter()
            ask(client, "grpc", prompts[i % len(prompts)], audit=r)
            lat[r].append((time.perf_counter() - t) * 1e3)
            i += 1
    return lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.perf.audit_latency", description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=None, help="gRPC host:port of a running server (default: start one)")
    ap.add_argument("--blocks", type=int, default=30, help="blocks of 20 requests, alternating off / on")
    ap.add_argument("--rate", type=float, default=0.05, help="the audit probability of the 'on' blocks")
    args = ap.parse_args(argv)
    if not 0 < args.rate <= 1 or args.blocks < 2:
        ap.error("--rate must be in (0, 1] and --blocks >= 2")
    if args.url:
        lat = measure(args.url, args.blocks, args.rate)
    else:
        from optistop.server.embedded import EmbeddedServer, ServerConfig, free_port

        cfg = ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with EmbeddedServer(cfg):
            lat = measure(cfg.grpc_url, args.blocks, args.rate)
    pct = {r: (float(np.percentile(x, 50)), float(np.percentile(x, 99))) for r, x in lat.items()}
    for r, (p50, p99) in pct.items():
        print(f"audit {r:g}: {len(lat[r])} requests, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    off, on = pct[0.0], pct[args.rate]
    print(f"on / off: p50 {on[0] / off[0]:.3f}, p99 {on[1] / off[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
