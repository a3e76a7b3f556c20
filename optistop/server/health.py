"""Truthful health: a real, tiny inference to every model of the cascade.

$ optistop health --url 127.0.0.1:8001            # one line per model; exit 0 when all answer in time
$ optistop health --url 127.0.0.1:8001 --timeout 2 --model stage_large

Why not ``/v2/health/ready``: in tritonserver 2.51 (and 2.64, upstream issue #8604) a Python-backend
model whose stub process died keeps answering ready while every request to it fails with "Stub process
'<model>_0_0' is not healthy". Only an inference tells. Each probe is the smallest request the model's
contract allows: one generated token for a stage, a zero feature vector for the predictor, a two-token
answer for the cascade (default policy, so a cascade that degrades to its living stages is healthy; the
degraded flag is shown). The supervisor (optistop/server/supervisor.py) sends the same probe as its
readiness check, but lets it wait behind real work: it judges liveness from Triton's statistics
(optistop/server/liveness.py), since a real model busy with a batch answers any probe late.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optistop import prometheus_text
from optistop import tensors as T
from optistop.features import ex_ante_features
from optistop.render import pbtxt
from optistop.spec import DEFAULT_SPEC, load_spec

CASCADE = "cascade"
PROBE_PROMPT = b"R:ab="


@dataclass(frozen=True)
class ModelHealth:
    model: str
    ok: bool
    ms: float
    detail: str          # "ok", "ok (degraded: ...)", or why it failed, one line
    dead: bool = False   # the error says the backend cannot serve at all (stub dead, not loaded)
    slow: bool = False   # no answer within the timeout

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.model:<20} {self.ms:8.1f} ms  {self.detail}"


def models_from_spec(spec_path: str | Path = DEFAULT_SPEC) -> dict[str, str]:
    """model name -> role ("stage", "predictor", "cascade") for every model the cascade needs."""
    spec = load_spec(spec_path, check_paths=False)
    roles = {s.triton_model: "stage" for s in spec.stages}
    roles[spec.predictor_model] = "predictor"
    roles[CASCADE] = "cascade"
    return roles


def models_from_repository(repo: str | Path) -> dict[str, str]:
    """model name -> role for every model of a repository, read from its config.pbtxt: what a server
    (a whole cascade, a stage-only server, one pod of a split layout) actually serves. Decoupled models
    (cascade_stream, stage_*_stream) are left out: a plain infer cannot probe them, and they share their
    process-free logic and their stages with the models that are probed."""
    roles: dict[str, str] = {}
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        cfg = pbtxt.load(path)
        if pbtxt.is_decoupled(cfg):
            continue
        names = pbtxt.tensor_names(cfg)
        if T.FEATURES in names:
            roles[path.parent.name] = "predictor"
        elif T.INPUT_IDS in names:
            roles[path.parent.name] = "stage"
        elif T.TEXT_INPUT in names:
            roles[path.parent.name] = "cascade"
    return roles


def spec_of_repository(repo: str | Path) -> Path | None:
    """The cascade spec a repository's cascade model serves (its ``cascade_spec`` parameter, relative to the
    model's directory as the cascade resolves it), or None for a repository without a cascade."""
    cfg = Path(repo) / CASCADE / "config.pbtxt"
    if not cfg.exists():
        return None
    ref = pbtxt.parameter(pbtxt.load(cfg), "cascade_spec")
    return (cfg.parent / ref).resolve() if ref is not None else None


def models_from_server(url: str) -> dict[str, str]:
    """The same, asked of a running server (its repository index and model configs): for a probe that
    knows only the URL, e.g. a Kubernetes exec probe in any pod."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    roles: dict[str, str] = {}
    # The statistics API lists every loaded model and stays open when the supervisor restricts the
    # model-repository API to itself (optistop.server.supervisor).
    names = sorted({s.name for s in client.get_inference_statistics().model_stats})
    for name in names:
        try:
            cfg = client.get_model_config(name).config
        except Exception:  # a model whose config cannot be read: probed by name, so it fails visibly
            roles[name] = "stage"
            continue
        if cfg.model_transaction_policy.decoupled:
            continue
        names = {i.name for i in cfg.input}
        role = ("predictor" if T.FEATURES in names else "stage" if T.INPUT_IDS in names
                else "cascade" if T.TEXT_INPUT in names else None)
        if role:
            roles[name] = role
    return roles


def _inputs(grpc: Any, role: str, n_stages: int) -> tuple[list[Any], list[str]]:
    if role == "stage":
        values = {T.INPUT_IDS: np.array([[1, 2, 3]], dtype=np.int32),     # (1, L): any in-vocabulary ids
                  T.INPUT_LENGTHS: np.array([[3]], dtype=np.int32),
                  T.REQUEST_OUTPUT_LEN: np.array([[1]], dtype=np.int32)}
        outputs = [T.OUTPUT_IDS]
    elif role == "predictor":
        # a valid vector (the predictor checks its one-hot stage slots): stage 0's prompt-only estimate
        values = {T.FEATURES: ex_ante_features(PROBE_PROMPT.decode(), 0, n_stages)[None, :].astype(np.float32)}
        outputs = [T.CONFIDENCE]
    elif role == "cascade":
        values = {T.TEXT_INPUT: np.array([[PROBE_PROMPT]], dtype=object),
                  T.MAX_TOKENS: np.array([[2]], dtype=np.int32)}
        outputs = [T.TEXT_OUTPUT, T.DEGRADED, T.DEGRADED_REASON]
    else:
        raise ValueError(f"unknown role {role!r}; valid: stage, predictor, cascade")
    dtypes = {np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32", np.dtype(object): "BYTES"}
    inputs = []
    for name, arr in values.items():
        inp = grpc.InferInput(name, list(arr.shape), dtypes[arr.dtype])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs, outputs


def probe(client: Any, model: str, role: str, timeout_s: float, n_stages: int = 3) -> ModelHealth:
    """One real inference to ``model``; never raises."""
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    from optistop.serving.bls import is_dead_model_error

    inputs, outputs = _inputs(grpc, role, n_stages)
    t0 = time.perf_counter()
    try:
        res = client.infer(model, inputs, outputs=[grpc.InferRequestedOutput(n) for n in outputs],
                           client_timeout=timeout_s)
    except InferenceServerException as exc:
        ms = (time.perf_counter() - t0) * 1e3
        msg = " ".join(str(exc.message()).split())
        if "Deadline Exceeded" in msg or exc.status() == "StatusCode.DEADLINE_EXCEEDED":
            return ModelHealth(model, False, ms, f"too slow: no answer within {timeout_s:g}s", slow=True)
        return ModelHealth(model, False, ms, f"{exc.status()}: {msg}", dead=is_dead_model_error(msg))
    ms = (time.perf_counter() - t0) * 1e3
    if role == "predictor":
        conf = float(res.as_numpy(T.CONFIDENCE).reshape(-1)[0])
        if not (math.isfinite(conf) and 0.0 <= conf <= 1.0):
            return ModelHealth(model, False, ms, f"confidence {conf} is not a probability")
    if role == "cascade" and bool(res.as_numpy(T.DEGRADED).reshape(-1)[0]):
        why = res.as_numpy(T.DEGRADED_REASON).reshape(-1)[0].decode(errors="replace")
        return ModelHealth(model, True, ms, f"ok (degraded: {why})")
    return ModelHealth(model, True, ms, "ok")


def check(url: str, models: dict[str, str], timeout_s: float = 3.0,
          clients: dict[tuple[str, str], Any] | None = None) -> list[ModelHealth]:
    """Probe every model concurrently (so one slow model does not hide the others); in ``models`` order.
    ``clients`` ((url, model) -> gRPC client) lets a caller that checks often reuse one client per model."""
    import tritonclient.grpc as grpc

    clients = clients if clients is not None else {}
    for m in models:
        if (url, m) not in clients:  # not setdefault: its argument (a new client and channel) is always built
            clients[(url, m)] = grpc.InferenceServerClient(url)
    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        n = sum(role == "stage" for role in models.values()) or 3
        futures = [pool.submit(probe, clients[(url, m)], m, role, timeout_s, n) for m, role in models.items()]
        return [f.result() for f in futures]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop health", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="127.0.0.1:8001", help="gRPC host:port of the server")
    ap.add_argument("--spec", type=Path, default=None,
                    help="check the models of this cascade spec (default: every model the server serves)")
    ap.add_argument("--model", action="append", default=None, help="check only this model (repeatable)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds each model has to answer")
    ap.add_argument("--metrics-url", default=None,
                    help="host:port of the server's metrics: also show the delivered-quality estimate (audits)")
    ap.add_argument("--audit-log", type=Path, default=None, help="also summarise this audit log (optistop audit)")
    args = ap.parse_args(argv)
    try:
        models = models_from_spec(args.spec) if args.spec else models_from_server(args.url)
    except Exception as exc:  # the server does not answer at all
        print(f"{args.url}: not answering ({type(exc).__name__}: {str(exc)[:200]})")
        return 1
    if args.model:  # a named model is probed even when the server no longer lists it (then it fails)
        models = {m: models.get(m, "stage") for m in args.model}
    results = check(args.url, models, args.timeout)
    for r in results:
        print(r.line())
    if args.metrics_url:
        print(quality_line(args.metrics_url, args.timeout))
    if args.audit_log:
        from optistop.audit import read_log, summarise, summary_line

        try:
            print(summary_line(summarise(read_log(args.audit_log), 1.0, 0.945)) + " (q_ref 1: see optistop audit)")
        except OSError as exc:
            print(f"audit log: {exc}")
    return 0 if all(r.ok for r in results) else 1


def quality_line(metrics_url: str, timeout_s: float = 3.0) -> str:
    """The cascade's delivered-quality gauges (optistop.serving.audit) from Triton's metrics endpoint."""
    import urllib.request

    from optistop.serving.prometheus import GAUGES, PREFIX

    try:
        with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode()
    except OSError as exc:
        return f"quality: metrics at {metrics_url} not answering ({exc})"
    try:
        found = prometheus_text.samples(text, PREFIX)
    except ValueError as exc:
        return f"quality: metrics at {metrics_url} are not Prometheus text ({exc})"
    # the plain cascade's gauges (the streaming cascade keeps its own, labelled model="cascade_stream")
    cascade = frozenset({("model", "cascade")})
    vals = {key: found[(f"{PREFIX}_{key}", cascade)] for key in GAUGES if (f"{PREFIX}_{key}", cascade) in found}
    if not vals.get("audits_in_window"):
        return "quality: no audits yet (spec audit_rate; see README, 'Knowing the quality you deliver')"
    return (f"quality: {vals.get('quality_estimate', math.nan):.3f} of the reference "
            f"[{vals.get('quality_lower_bound', math.nan):.3f}, {vals.get('quality_upper_bound', math.nan):.3f}] over "
            f"{vals['audits_in_window']:g} audits; audit cost share {vals.get('audit_cost_share', 0.0):.1%}; policy "
            f"version {vals.get('policy_version', 1):g}; {'DRIFT ALARM' if vals.get('drift_alarm') else 'no alarm'}")


if __name__ == "__main__":
    sys.exit(main())
