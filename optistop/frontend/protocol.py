"""The OpenAI wire format for the cascade, without any I/O: request bodies in, response bodies out.

A request becomes a ``Call`` (the cascade's inputs plus what the reply needs); every problem is an
``ApiError`` carrying the HTTP status and OpenAI's error object. Values the cascade itself checks
(max_tokens, lambda, policy, prompt length) are validated by the same ``parse_request`` that the Triton
model runs (optistop.serving.request), so the front end and the server cannot disagree.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optistop import tensors as T
from optistop.policy_artifact import PolicyBook
from optistop.serving.request import RequestError, parse_request
from optistop.serving.tokenizers import Prompt
from optistop.spec import CascadeSpec

CASCADE_MODEL = "cascade"
EXTRA = "cascade"        # the response's extra object with what the cascade did
OWNER = "optistop"
# OpenAI body field <- cascade input tensor, to name the field in an error
PARAM_OF = {T.TEXT_INPUT: "prompt", T.MESSAGES: "messages", T.MAX_TOKENS: "max_tokens", T.LAMBDA: "lambda",
            T.POLICY: "policy"}


class ApiError(Exception):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, "service_unavailable_error", code="service_unavailable")


def model_ids(spec: CascadeSpec) -> list[str]:
    """The models served: the cascade, and each stage alone (the cascade with policy fixed:<k>)."""
    return [CASCADE_MODEL] + [s.triton_model for s in spec.stages]


@dataclass
class Call:
    chat: bool
    model: str
    prompt: str
    inputs: dict[str, np.ndarray]       # cascade input tensors, batch dimension included: (1, 1)
    max_tokens: int
    stream: bool
    include_usage: bool
    prompt_tokens: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def chat_prompt(messages: Any) -> str:
    """A chat request's messages, checked, as the JSON the cascade's ``messages`` input takes: the cascade
    applies the family's chat template itself (optistop.serving.tokenizers), once, as for any client."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}] must be an object with string 'role' and 'content'",
                           param="messages")
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise ApiError(400, "'messages' holds no message with role 'user'", param="messages")
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def parse_call(body: Mapping[str, Any], spec: CascadeSpec, encode: Callable[..., Prompt], policies: PolicyBook, *,
               chat: bool) -> Call:
    model = body.get("model")
    served = model_ids(spec)
    if model not in served:
        raise ApiError(404, f"model {model!r} does not exist; models here: {', '.join(served)}",
                       param="model", code="model_not_found")
    if chat:
        prompt = chat_prompt(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (or a list of one string)", param="prompt")
    if body.get("n", 1) != 1:
        raise ApiError(400, "'n' must be 1: the cascade returns one answer per request", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    for name, value, kinds in (("max_tokens", max_tokens, int), ("lambda", body.get("lambda"), (int, float)),
                               ("policy", body.get("policy"), str)):
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise ApiError(400, f"'{name}' has the wrong type ({type(value).__name__})", param=name)
    policy, lam = body.get("policy"), body.get("lambda")
    if model != CASCADE_MODEL:
        if policy is not None or lam is not None:
            raise ApiError(400, f"'policy' and 'lambda' apply to model '{CASCADE_MODEL}' only; model "
                           f"{model!r} is one stage", param="policy" if policy is not None else "lambda")
        policy = f"fixed:{[s.triton_model for s in spec.stages].index(model)}"
    inputs: dict[str, np.ndarray] = {T.MESSAGES if chat else T.TEXT_INPUT:
                                     np.array([[prompt.encode("utf-8")]], dtype=object)}
    if max_tokens is not None:
        inputs[T.MAX_TOKENS] = np.array([[max_tokens]], dtype=np.int32)
    if lam is not None:
        inputs[T.LAMBDA] = np.array([[lam]], dtype=np.float32)
    if policy is not None:
        inputs[T.POLICY] = np.array([[policy.encode()]], dtype=object)
    if body.get("echo"):
        inputs[T.EXCLUDE_INPUT_IN_OUTPUT] = np.array([[False]], dtype=bool)
    try:
        req = parse_request(inputs, spec, encode, policies)   # the cascade model's checks, run here first
    except RequestError as exc:
        name = next((t for t in PARAM_OF if f"'{t}'" in str(exc)), None)
        param = "messages" if chat and name in (T.TEXT_INPUT, T.MESSAGES) else PARAM_OF.get(name or "")
        code = "context_length_exceeded" if "exceeds the context" in str(exc) else None
        raise ApiError(400, str(exc), param=param, code=code) from None
    return Call(chat, model, prompt, inputs, req.max_tokens, stream, bool(opts.get("include_usage")),
                len(req.input_ids))


def metadata(out: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The cascade's outputs as the response's extra object (NaN, where nothing was computed, -> null)."""
    def col(name: str) -> list[Any]:
        return np.asarray(out[name]).reshape(-1).tolist()

    def num(xs: list[float]) -> list[float | None]:
        return [None if x != x else round(float(x), 6) for x in xs]
    text = lambda name: bytes(col(name)[0]).decode("utf-8")
    return {"stage": int(col(T.STAGE_INDEX)[0]), "stage_model": text(T.STAGE_MODEL),
            "stages_run": [int(x) for x in col(T.STAGES_RUN)], "cost": float(col(T.COST)[0]),
            "confidences": num(col(T.CONFIDENCES)), "thresholds": num(col(T.THRESHOLDS)),
            "stage_latency_ms": num(col(T.STAGE_LATENCY_MS)), "degraded": bool(col(T.DEGRADED)[0]),
            "degraded_reason": text(T.DEGRADED_REASON), "controller_ms": round(float(col(T.CONTROLLER_MS)[0]), 3)}


def usage(call: Call, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": call.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": call.prompt_tokens + completion_tokens}


def finish_reason(call: Call, completion_tokens: int) -> str:
    return "length" if completion_tokens >= call.max_tokens else "stop"


def completion(call: Call, text: str, completion_tokens: int, meta: dict[str, Any]) -> dict[str, Any]:
    reason = finish_reason(call, completion_tokens)
    choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text},
                               "finish_reason": reason, "logprobs": None} if call.chat else
                              {"index": 0, "text": text, "finish_reason": reason, "logprobs": None})
    return {"id": ("chatcmpl-" if call.chat else "cmpl-") + call.id,
            "object": "chat.completion" if call.chat else "text_completion", "created": call.created,
            "model": call.model, "choices": [choice], "usage": usage(call, completion_tokens), EXTRA: meta}


def chunk(call: Call, text: str | None, *, first: bool = False, reason: str | None = None,
          meta: dict[str, Any] | None = None, usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """One SSE chunk. ``usage_`` alone makes the usage chunk (empty choices), as OpenAI sends it."""
    if call.chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
    out: dict[str, Any] = {"id": ("chatcmpl-" if call.chat else "cmpl-") + call.id,
                           "object": "chat.completion.chunk" if call.chat else "text_completion",
                           "created": call.created, "model": call.model,
                           "choices": [] if usage_ is not None else [choice]}
    if usage_ is not None:
        out["usage"] = usage_
    if meta is not None:
        out[EXTRA] = meta
    return out


def sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
