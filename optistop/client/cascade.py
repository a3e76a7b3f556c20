"""tritonclient helpers for the cascade: build its inputs, call it, read its outputs.

Used by the ``optistop-client`` command (optistop.cli), the soak and the benchmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


def build_inputs(protocol: str, prompt: str | bytes | list[dict[str, str]], *, lam: float | None = None,
                 policy: str | None = None, max_tokens: int | None = None, audit: float | None = None) -> list[Any]:
    """Cascade inputs with the batch dimension ([1, 1] each); optional ones only when given.

    ``prompt`` is raw text, or OpenAI-style chat messages (a list of {"role", "content"}) sent as JSON
    in the ``messages`` input."""
    mod = _module(protocol)
    if isinstance(prompt, list):
        name, raw = T.MESSAGES, json.dumps(prompt, ensure_ascii=False).encode()
    else:
        name, raw = T.TEXT_INPUT, prompt.encode() if isinstance(prompt, str) else prompt
    values: list[tuple[str, str, np.ndarray]] = [(name, "BYTES", np.array([[raw]], dtype=object))]
    if max_tokens is not None:
        values.append((T.MAX_TOKENS, "INT32", np.array([[max_tokens]], dtype=np.int32)))
    if lam is not None:
        values.append((T.LAMBDA, "FP32", np.array([[lam]], dtype=np.float32)))
    if policy is not None:
        values.append((T.POLICY, "BYTES", np.array([[policy.encode()]], dtype=object)))
    if audit is not None:   # this request's audit probability (README, "Knowing the quality you deliver")
        values.append((T.AUDIT, "FP32", np.array([[audit]], dtype=np.float32)))
    inputs = []
    for name, dtype, arr in values:
        inp = mod.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def ask(client: Any, protocol: str, prompt: str | list[dict[str, str]], model: str = "cascade",
        **kw: Any) -> Answer:
    """One cascade request; tritonclient's InferenceServerException propagates on error."""
    mod = _module(protocol)
    outputs = [mod.InferRequestedOutput(n) for n in OUTPUTS]
    res = client.infer(model, build_inputs(protocol, prompt, **kw), outputs=outputs)
    get = lambda n: res.as_numpy(n).reshape(-1)
    return Answer(
        prompt=prompt if isinstance(prompt, str) else json.dumps(prompt),
        text=get(T.TEXT_OUTPUT)[0].decode(),
        stage=int(get(T.STAGE_INDEX)[0]),
        stage_model=get(T.STAGE_MODEL)[0].decode(),
        confidences=[round(x, 4) for x in T.unwire(get(T.CONFIDENCES))],
        thresholds=[round(x, 4) for x in T.unwire(get(T.THRESHOLDS))],
        cost=float(get(T.COST)[0]),
        stage_latency_ms=[round(float(x), 2) for x in get(T.STAGE_LATENCY_MS)],
        stages_run=[int(x) for x in get(T.STAGES_RUN)],
        degraded=bool(get(T.DEGRADED)[0]),
        degraded_reason=get(T.DEGRADED_REASON)[0].decode(),
        controller_ms=round(float(get(T.CONTROLLER_MS)[0]), 3),
    )


def read_prompt_file(path: str) -> list[dict[str, Any]]:
    """Prompts of ``optistop-client --file``: JSON Lines ``{"prompt" | "messages", "reference"?}`` (what
    ``optistop collect`` reads; prompts may span lines there) when the first non-blank line is a JSON
    object, else plain text, one prompt per line. ValueError naming the line of a bad record."""
    with open(path, encoding="utf-8") as fh:
        lines = [(n, line.rstrip("\n")) for n, line in enumerate(fh, 1) if line.strip()]
    if not lines or not lines[0][1].lstrip().startswith("{"):
        return [{"prompt": line} for _, line in lines]
    out = []
    for n, line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg}); a JSONL prompts file has one object a line") from None
        ok = isinstance(rec, dict) and (("prompt" in rec) != ("messages" in rec))
        if not ok or not isinstance(rec.get("prompt", rec.get("messages")), str | list):
            raise ValueError(f"{path}:{n}: give exactly one of 'prompt' (text) and 'messages' (a list of "
                             "{role, content}), and optionally 'reference'")
        out.append(rec)
    return out
