"""Command-line client for the cascade over tritonclient gRPC or HTTP.

$ optistop-client "12+35="                                  # gRPC on 127.0.0.1:8001
$ optistop-client --protocol http --policy fixed:2 "R:abcdef="
$ optistop-client --file prompts.txt --json --check         # one JSON line per prompt; exit 1 if wrong

Exits non-zero on any error, and with ``--check`` when an answer to a task-suite prompt is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from optistop import tensors as T

OUTPUTS = [t.name for t in T.CASCADE.outputs]
DEFAULT_URL = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}


@dataclass
class Answer:
    prompt: str
    text: str
    stage: int
    stage_model: str
    confidences: list[float]
    thresholds: list[float]
    cost: float
    stage_latency_ms: list[float]
    stages_run: list[int]
    degraded: bool = False
    degraded_reason: str = ""
    controller_ms: float = 0.0


def _module(protocol: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as mod
    elif protocol == "http":
        import tritonclient.http as mod
    else:
        raise ValueError(f"unknown protocol {protocol!r}; valid: grpc, http")
    return mod


def make_client(url: str | None = None, protocol: str = "grpc") -> Any:
    return _module(protocol).InferenceServerClient(url or DEFAULT_URL[protocol])


def build_inputs(protocol: str, prompt: str | bytes, *, lam: float | None = None, policy: str | None = None,
                 max_tokens: int | None = None) -> list[Any]:
    """Cascade inputs with the batch dimension ([1, 1] each); optional ones only when given."""
    mod = _module(protocol)
    raw = prompt.encode() if isinstance(prompt, str) else prompt
    values: list[tuple[str, str, np.ndarray]] = [(T.TEXT_INPUT, "BYTES", np.array([[raw]], dtype=object))]
    if max_tokens is not None:
        values.append((T.MAX_TOKENS, "INT32", np.array([[max_tokens]], dtype=np.int32)))
    if lam is not None:
        values.append((T.LAMBDA, "FP32", np.array([[lam]], dtype=np.float32)))
    if policy is not None:
        values.append((T.POLICY, "BYTES", np.array([[policy.encode()]], dtype=object)))
    inputs = []
    for name, dtype, arr in values:
        inp = mod.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def ask(client: Any, protocol: str, prompt: str, model: str = "cascade", **kw: Any) -> Answer:
    """One cascade request; tritonclient's InferenceServerException propagates on error."""
    mod = _module(protocol)
    outputs = [mod.InferRequestedOutput(n) for n in OUTPUTS]
    res = client.infer(model, build_inputs(protocol, prompt, **kw), outputs=outputs)
    get = lambda n: res.as_numpy(n).reshape(-1)
    return Answer(
        prompt=prompt,
        text=get(T.TEXT_OUTPUT)[0].decode(),
        stage=int(get(T.STAGE_INDEX)[0]),
        stage_model=get(T.STAGE_MODEL)[0].decode(),
        confidences=[round(float(x), 4) for x in get(T.CONFIDENCES)],
        thresholds=[round(float(x), 4) for x in get(T.THRESHOLDS)],
        cost=float(get(T.COST)[0]),
        stage_latency_ms=[round(float(x), 2) for x in get(T.STAGE_LATENCY_MS)],
        stages_run=[int(x) for x in get(T.STAGES_RUN)],
        degraded=bool(get(T.DEGRADED)[0]),
        degraded_reason=get(T.DEGRADED_REASON)[0].decode(),
        controller_ms=round(float(get(T.CONTROLLER_MS)[0]), 3),
    )


def _check(prompt: str, text: str) -> bool | None:
    from optistop.tasks import grade

    try:
        return grade(prompt, text)
    except ValueError:  # not a task-suite prompt: nothing to check against
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop-client", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt", nargs="*", help="prompt(s), e.g. '12+35='")
    ap.add_argument("--file", help="read prompts from this file, one per line")
    ap.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8001 gRPC, :8000 HTTP)")
    ap.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--lambda", dest="lam", type=float, default=None, help="price of quality (cost units)")
    ap.add_argument("--policy", default=None, help="optimal | paper | fixed:<k> | random")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--check", action="store_true", help="grade task-suite prompts; exit 1 on a wrong answer")
    args = ap.parse_args(argv)

    from tritonclient.utils import InferenceServerException

    prompts = list(args.prompt)
    if args.file:
        with open(args.file, encoding="utf-8") as fh:
            prompts += [line.rstrip("\n") for line in fh if line.strip()]
    if not prompts:
        ap.error("give at least one prompt or --file")
    client = make_client(args.url, args.protocol)
    failures = 0
    for prompt in prompts:
        try:
            ans = ask(client, args.protocol, prompt, lam=args.lam, policy=args.policy, max_tokens=args.max_tokens)
        except InferenceServerException as exc:
            print(f"error: {prompt!r}: {exc.message()}", file=sys.stderr)
            failures += 1
            continue
        ok = _check(prompt, ans.text) if args.check else None
        failures += ok is False
        if args.json:
            print(json.dumps({**asdict(ans), **({"correct": ok} if ok is not None else {})}))
        else:
            mark = {True: "  [correct]", False: "  [WRONG]", None: ""}[ok]
            print(f"{prompt} -> {ans.text!r}{mark}\n  stage {ans.stage} ({ans.stage_model}), stages run "
                  f"{ans.stages_run}, cost {ans.cost:g}, "
                  f"confidences {ans.confidences}, thresholds {ans.thresholds}, "
                  f"latency ms {ans.stage_latency_ms}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
