"""The ``optistop`` command.

$ optistop serve                       # embedded tritonserver on 127.0.0.1:8000/8001/8002
$ optistop spec cascade.toml           # validate and print a cascade spec
$ optistop replay --help               # offline replay of stopping policies (see optistop.replay)
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from optistop.server import DEFAULT_REPOSITORY, EmbeddedServer, ServerConfig, ServerError


def serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="optistop serve", description="Serve the cascade with a real tritonserver.")
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default loopback; Triton has no authentication of its own)")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--tritonserver", type=Path, default=None, help="use this tritonserver binary")
    ap.add_argument("--backend-directory", type=Path, default=None,
                    help="with --tritonserver: its backends directory (default: pytriton's Python backend)")
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every model to be READY")
    args = ap.parse_args(argv)
    cfg = ServerConfig(repository=args.repository.resolve(), host=args.host, http_port=args.http_port,
                       grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                       tritonserver=args.tritonserver, backend_directory=args.backend_directory,
                       log_verbose=args.log_verbose)
    server = EmbeddedServer(cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
        print(f"starting tritonserver on {cfg.host} with {cfg.repository} ...", flush=True)
        server.wait_ready(args.timeout)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        server.stop()
        return 1
    print(f"ready: HTTP {cfg.http_url}  gRPC {cfg.grpc_url}  metrics http://{cfg.host}:{cfg.metrics_port}/metrics")
    print(f"try:   .venv/bin/optistop-client --url {cfg.grpc_url} 'R:hello=' '12+35='   (Ctrl-C stops the server)",
          flush=True)
    while not stop.is_set():
        if server.proc is not None and server.proc.poll() is not None:
            print(f"error: tritonserver exited with code {server.proc.returncode}", file=sys.stderr)
            return 1
        stop.wait(0.5)
    print("stopping tritonserver ...", flush=True)
    code = server.stop()
    print(f"stopped (exit code {code})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"serve": serve, "spec": _spec, "replay": _replay}
    if not argv or argv[0] not in commands:
        print(f"usage: optistop {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


def _spec(argv: list[str]) -> int:
    from optistop.config import main as spec_main

    return spec_main(argv)


def _replay(argv: list[str]) -> int:
    from optistop.replay import main as replay_main

    return int(replay_main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
