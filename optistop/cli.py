"""The ``optistop`` command: ``optistop --help`` lists every command (COMMANDS below), grouped.

$ optistop serve                       # embedded tritonserver on 127.0.0.1:8000/8001/8002, supervised
$ optistop health --url 127.0.0.1:8001 # a real inference to every model; exit 1 if any fails
$ optistop serve-split                 # the same cascade with its stages on two other tritonservers (gRPC)
$ optistop plan --rate 200             # replicas per stage for a request rate (see optistop.perf.plan)
$ optistop openai                      # the same + an OpenAI-compatible API on http://127.0.0.1:9000/v1
$ optistop spec cascade.toml           # validate and print a cascade spec
$ optistop audit audit.jsonl           # delivered quality estimated from the audit log (optistop.audit)
$ optistop replay --help               # offline replay of stopping policies (see optistop.offline.replay)
$ optistop repo | collect | label | calibrate --help   # bring your own cascade (see optistop.pipeline)
$ optistop-client "12+35="             # ask the served cascade (client_main below)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from optistop.server.embedded import DEFAULT_REPOSITORY, EmbeddedServer, ServerConfig, ServerError
from optistop.spec import SpecError, SupervisorSpec, load_spec, parse_supervisor


def serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="optistop serve", description="Serve the cascade with a real tritonserver.")
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default loopback; Triton has no authentication of its own)")
    _port_args(ap, "HTTP port (default: gRPC port - 1, so 8000)")
    ap.add_argument("--tritonserver", type=Path, default=None, help="use this tritonserver binary")
    ap.add_argument("--backend-directory", type=Path, default=None,
                    help="with --tritonserver: its backends directory (default: pytriton's Python backend)")
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every model to be READY")
    ap.add_argument("--models", default="", help="serve only these models (comma-separated), from a copy of "
                    "the repository: one stage server of a split layout or one Kubernetes pod (deploy/)")
    ap.add_argument("--spec", type=Path, default=None, help="with --models cascade: the cascade spec to serve "
                    "(e.g. one whose stages have a url) instead of the repository's")
    ap.add_argument("--load-models", default="", help="load only these models of the repository (comma-"
                    "separated; explicit model control, no copy), e.g. without the *_stream variants")
    ap.add_argument("--no-supervise", action="store_true",
                    help="run tritonserver bare: no health checks, no recovery of dead backends")
    ap.add_argument("--supervisor-port", type=int, default=None,
                    help="the supervisor's /metrics and /healthz (default: metrics port + 1)")
    ap.add_argument("--drain-timeout", type=int, default=30,
                    help="on SIGTERM, seconds in-flight requests may take to finish")
    sup_flags = ap.add_argument_group("supervision (default: the served spec's [supervisor] table, else built in)")
    for flag, (key, what) in SUPERVISOR_FLAGS.items():
        sup_flags.add_argument(flag, type=float, default=None, dest=key, metavar="X" if key == "wedge_factor" else "S",
                               help=f"{what} ([supervisor] {key})")
    args = ap.parse_args(argv)
    _derive_ports(args)
    supervise = not args.no_supervise
    given = [flag for flag, (key, _) in SUPERVISOR_FLAGS.items() if getattr(args, key) is not None]
    if given and not supervise:
        ap.error(f"{given[0]} sets up supervision; it does nothing with --no-supervise")
    if args.models:
        from optistop.server.split import subset_repository

        try:
            spec = load_spec(args.spec) if args.spec else None
            workdir = Path(sys.prefix) / "share" / "optistop" / f"serve-{args.grpc_port}"
            args.repository = subset_repository(args.repository.resolve(), args.models.split(","),
                                                workdir / "repository", spec)
        except SpecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.spec:
        ap.error("--spec goes with --models (it replaces the spec of a copied cascade model)")
    try:
        timing, floors = _supervision(args, args.repository.resolve())
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = ServerConfig(repository=args.repository.resolve(), host=args.host, http_port=args.http_port,
                       grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                       tritonserver=args.tritonserver, backend_directory=args.backend_directory,
                       log_verbose=args.log_verbose, model_control=supervise, exit_timeout_s=args.drain_timeout,
                       load_models=tuple(m for m in args.load_models.split(",") if m))
    missing = [m for m in cfg.load_models if not (cfg.repository / m / "config.pbtxt").exists()]
    if missing:
        print(f"error: --load-models: {', '.join(missing)} not in {cfg.repository}", file=sys.stderr)
        return 2
    server = EmbeddedServer(cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print(f"starting tritonserver on {cfg.host} with {cfg.repository} ...", flush=True)
        server.start()
        server.wait_ready(args.timeout)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        server.stop(timeout=5)
        return 1
    print(f"ready: HTTP {cfg.http_url}  gRPC {cfg.grpc_url}  metrics http://{cfg.host}:{cfg.metrics_port}/metrics")
    if not supervise:
        return _serve_bare(server, stop)
    import logging

    from optistop.server.health import models_from_repository
    from optistop.server.supervisor import Supervisor, SupervisorConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    port = args.supervisor_port if args.supervisor_port is not None else cfg.metrics_port + 1
    models = {m: role for m, role in models_from_repository(cfg.repository).items()
              if not cfg.load_models or m in cfg.load_models}   # what this server loaded
    sup = Supervisor(server, models, SupervisorConfig(timing, port, floors))
    log_timing = ", ".join(f"{k}={v:g}" for k, v in asdict(timing).items())
    print(f"supervisor: {log_timing}; wedge window floors {floors or 'none'}", flush=True)
    print(f"supervised: health and recovery metrics on http://{cfg.host}:{port}/metrics, readiness on /healthz")
    print(f"try:   .venv/bin/optistop-client --url {cfg.grpc_url} 'R:hello=' '12+35='   (Ctrl-C stops the server)",
          flush=True)
    try:
        sup.run(stop)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        server.stop(timeout=5)
        return 1
    print("draining: new requests are refused, in-flight ones finish ...", flush=True)
    code = sup.drain()
    print(f"stopped (tritonserver exit code {code})")
    return 0 if code == 0 else 1


SUPERVISOR_FLAGS = {
    "--scan-interval": ("scan_s", "seconds between scans for backend processes that are gone"),
    "--probe-interval": ("probe_s", "seconds between readiness probes / statistics readings"),
    "--slow-after": ("slow_s", "a probe waiting this long while the model progresses is logged as slow"),
    "--wedge-after": ("wedge_s", "no progress this long with requests in flight: wedged, killed and reloaded"),
    "--wedge-factor": ("wedge_factor", "the wedge window is also at least this many times the longest batch"),
    "--reload-timeout": ("reload_timeout_s", "seconds a model reload may take before tritonserver restarts"),
}


def _supervision(args: argparse.Namespace, repository: Path) -> tuple[SupervisorSpec, dict[str, float]]:
    """The supervisor's timing (spec's [supervisor] table, then the flags) and each model's wedge-window
    floor: the longest call the spec allows a stage (timeout at max_tokens_cap), their sum for the cascade."""
    from optistop.server.health import CASCADE, spec_of_repository

    path = args.spec or spec_of_repository(repository)
    spec = load_spec(path, check_paths=False) if path else None
    table = asdict(spec.supervisor) if spec else {}
    table.update({key: getattr(args, key) for key, _ in SUPERVISOR_FLAGS.values() if getattr(args, key) is not None})
    timing = parse_supervisor(table, "supervisor (spec + flags)")
    floors: dict[str, float] = {}
    if spec is not None:
        for st in spec.stages:
            floors[st.triton_model] = st.timeout_for(spec.max_tokens_cap)
        floors[CASCADE] = sum(floors.values())
    return timing, floors


def _port_args(ap: argparse.ArgumentParser, http_help: str) -> None:
    ap.add_argument("--http-port", type=int, default=None, help=http_help)
    ap.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default 8001)")
    ap.add_argument("--metrics-port", type=int, default=None, help="metrics port (default: gRPC port + 1)")


def _derive_ports(args: argparse.Namespace) -> None:
    """Ports not given follow the gRPC port as Triton's defaults do (8000/8001/8002), so a second server
    started with ``--grpc-port 28101`` gets 28100/28101/28102 instead of colliding with the first."""
    grpc = args.grpc_port if args.grpc_port is not None else (args.http_port + 1 if args.http_port else 8001)
    args.grpc_port = grpc
    args.http_port = args.http_port if args.http_port is not None else grpc - 1
    args.metrics_port = args.metrics_port if args.metrics_port is not None else grpc + 1


def _serve_bare(server: EmbeddedServer, stop: threading.Event) -> int:
    while not stop.is_set():
        if server.proc is not None and server.proc.poll() is not None:
            print(f"error: tritonserver exited with code {server.proc.returncode}", file=sys.stderr)
            return 1
        stop.wait(0.5)
    print("stopping tritonserver ...", flush=True)
    code = server.stop()
    print(f"stopped (exit code {code})")
    return 0


def openai(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="optistop openai",
                                 description="OpenAI-compatible API (/v1/chat/completions, /v1/completions, "
                                 "/v1/models) over the cascade; starts the embedded tritonserver unless --attach.")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; no authentication)")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--attach", metavar="GRPC_URL", default=None,
                    help="use a running tritonserver (e.g. 127.0.0.1:8001) instead of starting one")
    ap.add_argument("--spec", type=Path, default=None,
                    help="cascade spec of that server (default: the one the repository's cascade model serves)")
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                    help="the served model repository: its cascade's resolved spec and its calibrated policy")
    _port_args(ap, "the started tritonserver's ports")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every model to be READY")
    args = ap.parse_args(argv)
    _derive_ports(args)
    import uvicorn

    from optistop.frontend.app import build_app
    from optistop.pipeline.repository import repository_spec
    from optistop.policy_artifact import PolicyArtifactError
    from optistop.spec import SpecError

    repo = args.repository.resolve()
    try:  # the repository's own spec: a bring-your-own cascade's model names and limits, never the bundled
        spec_path = args.spec or repository_spec(repo)
        app = build_app(args.attach or "", spec_path, repo)   # checks spec and policy before any server
    except (SpecError, PolicyArtifactError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"spec {spec_path}; policy from {repo}", flush=True)
    server = None
    url = args.attach
    if url is None:
        cfg = ServerConfig(repository=repo, http_port=args.http_port,
                           grpc_port=args.grpc_port, metrics_port=args.metrics_port)
        server = EmbeddedServer(cfg)
        try:
            server.start()
            print(f"starting tritonserver on {cfg.host} with {cfg.repository} ...", flush=True)
            server.wait_ready(args.timeout)
        except ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            server.stop()
            return 1
        url = cfg.grpc_url
    print(f"ready: OpenAI API on http://{args.host}:{args.port}/v1 (Triton gRPC {url}); Ctrl-C stops both",
          flush=True)
    try:
        if url != args.attach:
            app = build_app(url, spec_path, repo)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if server is not None:
            print("stopping tritonserver ...", flush=True)
            server.stop()
    return 0


@dataclass(frozen=True)
class Command:
    """One ``optistop`` command: ``target`` is "module:function" taking argv (imported only when it runs,
    so ``optistop --help`` loads nothing heavy). Adding a command is one line in COMMANDS."""

    name: str
    group: str
    target: str
    help: str


GROUPS = ("serve", "bring your own", "evaluate", "operate")
COMMANDS = (
    Command("serve", "serve", "optistop.cli:serve", "serve the cascade with a supervised tritonserver"),
    Command("serve-split", "serve", "optistop.server.split:main",
            "the cascade with its stages on two other tritonservers (gRPC)"),
    Command("openai", "serve", "optistop.cli:openai", "an OpenAI-compatible API (/v1) over the cascade"),
    Command("spec", "bring your own", "optistop.spec:main", "validate and print a cascade spec"),
    Command("repo", "bring your own", "optistop.pipeline.repository:main",
            "render a model repository from a cascade spec"),
    Command("collect", "bring your own", "optistop.pipeline.collect:main",
            "run prompts through every stage of a served repository"),
    Command("label", "bring your own", "optistop.pipeline.label:main", "grade collected answers"),
    Command("calibrate", "bring your own", "optistop.pipeline.calibrate:main",
            "fit the quality predictor and stopping policy from labelled records"),
    Command("replay", "evaluate", "optistop.offline.replay:main", "offline replay of stopping policies on records"),
    Command("health", "operate", "optistop.server.health:main",
            "a real inference to every model of a server; exit 1 if any fails"),
    Command("plan", "operate", "optistop.perf.plan:main", "replicas per stage for a request rate"),
    Command("audit", "operate", "optistop.audit:main",
            "summarise an audit log: delivered quality against the reference, drift alarms"),
)


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS) + 2
    lines = ["usage: optistop <command> [options]     (optistop <command> --help for its options)", ""]
    for group in GROUPS:
        lines.append(f"{group}:")
        lines += [f"  {c.name:<{width}}{c.help}" for c in COMMANDS if c.group == group]
    lines += ["", "ask a served cascade: optistop-client PROMPT ... (optistop-client --help)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(usage())
        return 0
    commands = {c.name: c for c in COMMANDS}
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] not in commands:
        print(f"optistop: unknown command {argv[0]!r}; valid: {', '.join(commands)} (optistop --help says what "
              f"each does)", file=sys.stderr)
        return 2
    import importlib

    module, _, func = commands[argv[0]].target.partition(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


_CLIENT_DOC = """Command-line client for the cascade over tritonclient gRPC or HTTP.

$ optistop-client "12+35="                                  # gRPC on 127.0.0.1:8001
$ optistop-client --protocol http --policy fixed:2 "R:abcdef="
$ optistop-client --file prompts.txt --json --check         # one JSON line per prompt; exit 1 if wrong

Exits non-zero on any error, and with ``--check`` when an answer to a task-suite prompt is wrong.
"""


def _check(rec: dict, text: str, grader) -> bool | None:
    """Grade with ``grader`` against the record's reference, else the bundled task suite."""
    if grader is not None:
        return bool(grader(text, rec.get("reference"), rec))
    from optistop.tiny.tasks import grade

    try:
        return grade(rec["prompt"], text) if "prompt" in rec else None
    except ValueError:  # not a task-suite prompt: nothing to check against
        return None


def client_main(argv: list[str] | None = None) -> int:
    """The ``optistop-client`` command: ask the cascade over gRPC or HTTP (see optistop.client.cascade)."""
    try:
        return _client(argv)
    except BrokenPipeError:
        # the reader went away (`optistop-client --file big | head`): stop quietly, as cat does. Python
        # flushes stdout again at exit, so point it at /dev/null first (the docs' recipe, "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141   # 128 + SIGPIPE, the shell's status for a writer whose reader closed the pipe


def _client(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="optistop-client", description=_CLIENT_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt", nargs="*", help="prompt(s), e.g. '12+35='")
    ap.add_argument("--file", help="prompts file: JSON Lines {\"prompt\" | \"messages\", \"reference\"?} (multi-line "
                    "prompts, chat messages), or plain text with one prompt per line")
    ap.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8001 gRPC, :8000 HTTP)")
    ap.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--lambda", dest="lam", type=float, default=None, help="price of quality (cost units)")
    ap.add_argument("--policy", default=None, help="optimal | router | ante | paper | fixed:<k> | random "
                    "(default: the operating point of policy.json)")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--check", action="store_true", help="grade task-suite prompts; exit 1 on a wrong answer")
    ap.add_argument("--grader", default=None, help="with --check: grade each answer against its line's reference "
                    "with this grader, as `optistop collect` does (exact | choice | number | module:function); "
                    "default: the bundled task suite")
    args = ap.parse_args(argv)
    if args.grader and not args.check:
        ap.error("--grader goes with --check")

    from tritonclient.utils import InferenceServerException

    from optistop.client.cascade import ask, make_client, read_prompt_file
    from optistop.pipeline.label import make_grader

    records = [{"prompt": p} for p in args.prompt]
    try:
        records += read_prompt_file(args.file) if args.file else []
        if args.grader and args.grader.startswith("agree"):
            raise ValueError(f"grader {args.grader!r} compares stages' answers, which the cascade does not return; "
                             "use exact, choice, number or module:function")
        grader = make_grader(args.grader) if args.grader else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not records:
        ap.error("give at least one prompt or --file")
    client = make_client(args.url, args.protocol)
    failures = 0
    for rec in records:
        prompt = rec.get("prompt", rec.get("messages"))
        try:
            ans = ask(client, args.protocol, prompt, lam=args.lam, policy=args.policy, max_tokens=args.max_tokens)
            ok = _check(rec, ans.text, grader) if args.check else None
        except InferenceServerException as exc:
            print(f"error: {prompt!r}: {exc.message()}", file=sys.stderr)
            failures += 1
            continue
        except ValueError as exc:   # a grader that needs a reference the line lacks
            print(f"error: {prompt!r}: {exc}", file=sys.stderr)
            failures += 1
            continue
        failures += ok is False
        # NaN threshold: the stage's answer stood whatever its confidence (no later stage to escalate to)
        ths = [None if t != t else t for t in ans.thresholds]
        if args.json:
            print(json.dumps({**asdict(ans), "thresholds": ths, **({"correct": ok} if ok is not None else {})}))
        else:
            mark = {True: "  [correct]", False: "  [WRONG]", None: ""}[ok]
            shown = "[" + ", ".join("none" if t is None else f"{t:g}" for t in ths) + "]"
            print(f"{ans.prompt} -> {ans.text!r}{mark}\n  stage {ans.stage} ({ans.stage_model}), stages run "
                  f"{ans.stages_run}, cost {ans.cost:g}, "
                  f"confidences {ans.confidences}, thresholds {shown}, "
                  f"latency ms {ans.stage_latency_ms}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
