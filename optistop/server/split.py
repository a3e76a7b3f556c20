"""The split layout on one machine: stage servers, and a cascade server that calls them over gRPC.

$ optistop serve-split          # the cascade on 127.0.0.1 HTTP 8000 / gRPC 8001 / metrics 8002,
                                # stages-a (stage_small + quality_predictor) on 8100-8102,
                                # stages-b (stage_medium + stage_large) on 8200-8202

The same picture as the Kubernetes manifests (deploy/), with processes for pods and loopback ports for
Services: every server is a real tritonserver on a repository of its own, and the cascade's spec gives
each remote stage and the predictor the ``url`` of the server that holds it (optistop.serving.remote).
The e2e test tests/e2e/test_split_e2e.py builds its layout with the same ``build_split``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from optistop.policy_artifact import FILE_NAME as POLICY_FILE
from optistop.render.repo import CASCADE_MODEL, point_cascade_at
from optistop.server.embedded import DEFAULT_REPOSITORY, EmbeddedServer, ServerConfig, ServerError
from optistop.spec import DEFAULT_SPEC, CascadeSpec, SpecError, load_spec

CASCADE_SERVER = "cascade"


@dataclass(frozen=True)
class SplitServer:
    name: str
    models: tuple[str, ...]
    config: ServerConfig


def default_layout(spec: CascadeSpec) -> dict[str, tuple[str, ...]]:
    """Two stage servers: the cheapest stage with the predictor (both see every request), the rest apart."""
    first, *rest = [s.triton_model for s in spec.stages]
    return {"stages-a": (first, spec.predictor_model), "stages-b": tuple(rest)}


def build_split(spec: CascadeSpec, workdir: Path, ports: dict[str, tuple[int, int, int]],
                layout: dict[str, tuple[str, ...]] | None = None, host: str = "127.0.0.1",
                source: Path = DEFAULT_REPOSITORY) -> list[SplitServer]:
    """Write one model repository per server under ``workdir``; stage servers first, the cascade last.

    ``ports`` maps each server name (the layout's and ``"cascade"``) to its (HTTP, gRPC, metrics) ports.
    Model directories are copied from ``source``; ``workdir/models`` links to the checkpoints beside it,
    so the stages' relative ``checkpoint_dir`` (../../models/...) resolves as in the source repository.
    """
    layout = layout or default_layout(spec)
    placed = [m for models in layout.values() for m in models]
    wanted = [s.triton_model for s in spec.stages] + [spec.predictor_model]
    if sorted(placed) != sorted(wanted):
        raise SpecError(f"split layout must place each of {wanted} exactly once, got {layout}")
    if set(ports) != {*layout, CASCADE_SERVER}:
        raise SpecError(f"ports needed for servers {sorted({*layout, CASCADE_SERVER})}, got {sorted(ports)}")
    servers, url_of = [], {}
    for name, models in [*layout.items(), (CASCADE_SERVER, (CASCADE_MODEL,))]:
        repo = subset_repository(source, models, workdir / name)
        http, grpc, metrics = ports[name]
        url_of.update({m: f"{host}:{grpc}" for m in models})
        servers.append(SplitServer(name, models, ServerConfig(repository=repo, host=host, http_port=http,
                                                              grpc_port=grpc, metrics_port=metrics)))
    remote = dataclasses.replace(
        spec, predictor_url=url_of[spec.predictor_model],
        stages=tuple(dataclasses.replace(s, url=url_of[s.triton_model]) for s in spec.stages))
    point_cascade_at(workdir / CASCADE_SERVER / CASCADE_MODEL, remote)
    return servers


def subset_repository(source: Path, models: tuple[str, ...] | list[str], repo: Path,
                      spec: CascadeSpec | None = None) -> Path:
    """A repository at ``repo`` with copies of ``models`` from ``source`` (one pod's or process's share).

    ``repo.parent/models`` links to the checkpoints beside ``source``, so a stage's relative
    ``checkpoint_dir`` (../../models/...) resolves as in the source repository. With ``spec``, a copied
    cascade model is pointed at it (resolved, absolute paths) instead of its ``cascade_spec`` file.
    """
    missing = [m for m in models if not (source / m / "config.pbtxt").exists()]
    if missing:
        raise SpecError(f"model(s) {', '.join(missing)} not in {source}; models there: "
                        f"{', '.join(sorted(p.parent.name for p in source.glob('*/config.pbtxt')))}")
    repo.parent.mkdir(parents=True, exist_ok=True)
    link = repo.parent / "models"
    if not link.exists():
        link.symlink_to((source.parent / "models").resolve())
    shutil.rmtree(repo, ignore_errors=True)
    for model in models:
        shutil.copytree(source / model, repo / model, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if spec is not None and CASCADE_MODEL in models:
        point_cascade_at(repo / CASCADE_MODEL, spec)
    predictor = spec.predictor_model if spec is not None else "quality_predictor"
    policy = source / predictor / "1" / POLICY_FILE
    if CASCADE_MODEL in models and predictor not in models and policy.exists():
        # the predictor runs elsewhere; the policy the cascade decides with is read beside the cascade
        shutil.copyfile(policy, repo / CASCADE_MODEL / "1" / POLICY_FILE)
    return repo


def default_ports(layout: dict[str, tuple[str, ...]], http: int, grpc: int, metrics: int) -> dict[str, tuple[int, ...]]:
    """The cascade on the usual ports; stage server i on 8i00 / 8i01 / 8i02 (8100.., 8200..)."""
    ports: dict[str, tuple[int, ...]] = {n: (8000 + 100 * i, 8001 + 100 * i, 8002 + 100 * i)
                                         for i, n in enumerate(layout, start=1)}
    ports[CASCADE_SERVER] = (http, grpc, metrics)
    return ports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop serve-split", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--workdir", type=Path, default=Path(sys.prefix) / "share" / "optistop" / "split",
                    help="where the per-server repositories and logs are written")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each server")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        layout = default_layout(spec)
        ports = default_ports(layout, args.http_port, args.grpc_port, args.metrics_port)
        servers = build_split(spec, args.workdir.resolve(), ports, layout)  # type: ignore[arg-type]
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    running: list[EmbeddedServer] = []
    try:
        for s in servers:  # stage servers first: the cascade's first requests find them up
            srv = EmbeddedServer(s.config, log_path=args.workdir / f"{s.name}.log")
            running.append(srv)
            srv.start()
            srv.wait_ready(args.timeout)
            print(f"ready: {s.name:9s} gRPC {s.config.grpc_url}  models {', '.join(s.models)}  "
                  f"log {args.workdir / (s.name + '.log')}", flush=True)
        print(f"try:   .venv/bin/optistop-client --url {servers[-1].config.grpc_url} '12+35='   "
              f"(Ctrl-C stops every server)", flush=True)
        while not stop.is_set():
            dead = [s.cfg.grpc_url for s in running if s.proc is not None and s.proc.poll() is not None]
            if dead:
                print(f"error: tritonserver on {', '.join(dead)} exited; stopping the others", file=sys.stderr)
                return 1
            stop.wait(0.5)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for srv in reversed(running):
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
