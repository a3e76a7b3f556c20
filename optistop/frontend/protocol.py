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
            T.POLICY: "policy", T.STOP_WORDS: "stop", T.TEMPERATURE: "temperature", T.TOP_P: "top_p",
            T.RANDOM_SEED: "seed"}
NO_TOP = ("the stage engines return the chosen token's log-prob only (TensorRT-LLM's output_log_probs), "
          "no alternatives")
# Known OpenAI parameters this server does not support: name -> (accepted values, what to send instead).
# Absent or null is always accepted; anything else is a 400 naming the parameter. Fields OpenAI does not
# define are ignored, as OpenAI's own server does; the cascade's extensions (lambda, policy) are read.
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v == 1, "'n' must be 1: the cascade returns one answer per request"),
    "best_of": (lambda v: v == 1, "'best_of' must be 1: the cascade returns one answer per request"),
    "tools": (lambda v: v == [], "'tools' is not supported: the cascade's stages answer in plain text; "
              "send no tools"),
    "tool_choice": (lambda v: v == "none", "'tool_choice' is not supported (no tools); omit it or send \"none\""),
    "functions": (lambda v: v == [], "'functions' is not supported: the cascade's stages answer in plain text"),
    "function_call": (lambda v: v == "none", "'function_call' is not supported (no functions); omit it"),
    "parallel_tool_calls": (lambda v: False, "'parallel_tool_calls' is not supported (no tools); omit it"),
    "response_format": (lambda v: v == {"type": "text"}, "'response_format' supports only {\"type\": "
                        "\"text\"}: no JSON mode or JSON schema"),
    "logit_bias": (lambda v: v == {}, "'logit_bias' is not supported; omit it or send {}"),
    "presence_penalty": (lambda v: v == 0, "'presence_penalty' is not supported; omit it or send 0"),
    "frequency_penalty": (lambda v: v == 0, "'frequency_penalty' is not supported; omit it or send 0"),
    "suffix": (lambda v: v == "", "'suffix' (insertion) is not supported; omit it"),
    "audio": (lambda v: False, "'audio' is not supported: text in, text out"),
    "modalities": (lambda v: v == ["text"], "'modalities' supports only [\"text\"]"),
    "prediction": (lambda v: False, "'prediction' (predicted outputs) is not supported; omit it"),
    "reasoning_effort": (lambda v: False, "'reasoning_effort' is not supported: the stages are not reasoning "
                         "models; omit it"),
    "web_search_options": (lambda v: False, "'web_search_options' is not supported; omit it"),
    "store": (lambda v: v is False, "'store' is not supported: completions are not stored; omit it"),
    "top_logprobs": (lambda v: v == 0, f"'top_logprobs' must be 0: {NO_TOP}"),
}


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
    logprobs: bool = False              # return the answer's token log-probs
    batch: list[Call] = field(default_factory=list)   # /v1/completions with a list: one Call per prompt
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
    for name, (ok, message) in UNSUPPORTED.items():
        if body.get(name) is not None and not ok(body[name]):
            raise ApiError(400, f"{message} (got {json.dumps(body[name])[:80]})", param=name,
                           code="unsupported_parameter")
    if chat:
        prompt = chat_prompt(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) > 1:
                return _batch(body, spec, encode, policies, prompt)
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings (token-id prompts "
                           "are not supported)", param="prompt")
    logprobs = _logprobs(body, chat)
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
        if logprobs:
            raise ApiError(400, "'logprobs' with 'echo' would need the prompt's log-probs, which the stage "
                           "engines do not return; drop one of them", param="logprobs")
        inputs[T.EXCLUDE_INPUT_IN_OUTPUT] = np.array([[False]], dtype=bool)
    inputs.update(_sampling(body))
    try:
        req = parse_request(inputs, spec, encode, policies)   # the cascade model's checks, run here first
    except RequestError as exc:
        name = next((t for t in PARAM_OF if f"'{t}'" in str(exc)), None)
        param = "messages" if chat and name in (T.TEXT_INPUT, T.MESSAGES) else PARAM_OF.get(name or "")
        code = "context_length_exceeded" if "exceeds the context" in str(exc) else None
        raise ApiError(400, str(exc), param=param, code=code) from None
    return Call(chat, model, prompt, inputs, req.max_tokens, stream, bool(opts.get("include_usage")),
                len(req.input_ids), logprobs)


def _batch(body: Mapping[str, Any], spec: CascadeSpec, encode: Callable[..., Prompt], policies: PolicyBook,
           prompts: list[str]) -> Call:
    """A completions request with several prompts: one cascade request each, answered as choices in order."""
    if body.get("stream"):
        raise ApiError(400, f"'stream' with a list of {len(prompts)} prompts is not supported; stream one "
                       "prompt per request, or send the list without streaming", param="stream")
    calls = [parse_call({**body, "prompt": p}, spec, encode, policies, chat=False) for p in prompts]
    first = calls[0]
    return Call(False, first.model, first.prompt, first.inputs, first.max_tokens, False, False,
                sum(c.prompt_tokens for c in calls), first.logprobs, batch=calls)


def _logprobs(body: Mapping[str, Any], chat: bool) -> bool:
    """Chat: ``logprobs`` true/false (``top_logprobs`` 0 is checked with UNSUPPORTED). Completions:
    ``logprobs`` is the number of alternatives per token, 0 for the chosen tokens' log-probs alone."""
    value = body.get("logprobs")
    if value is None:
        return False
    if chat:
        if not isinstance(value, bool):
            raise ApiError(400, "'logprobs' must be true or false", param="logprobs")
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, "'logprobs' must be an integer >= 0", param="logprobs")
    if value > 0:
        raise ApiError(400, f"'logprobs' must be 0 (the chosen tokens' log-probs): {NO_TOP}", param="logprobs",
                       code="unsupported_parameter")
    return True


def _sampling(body: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """stop, temperature, top_p and seed as cascade inputs (their ranges are the cascade's checks)."""
    out: dict[str, np.ndarray] = {}
    stop = body.get("stop")
    if stop is not None:
        words = [stop] if isinstance(stop, str) else stop
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ApiError(400, "'stop' must be a string or a list of up to 4 strings", param="stop")
        if words:
            out[T.STOP_WORDS] = np.array([[w.encode("utf-8") for w in words]], dtype=object)
    for name, tensor in (("temperature", T.TEMPERATURE), ("top_p", T.TOP_P)):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ApiError(400, f"'{name}' must be a number", param=name)
        out[tensor] = np.array([[value]], dtype=np.float32)
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ApiError(400, "'seed' must be an integer", param="seed")
        out[T.RANDOM_SEED] = np.array([[seed % 2**64]], dtype=np.uint64)   # a negative seed wraps, reproducibly
    return out


def metadata(out: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The cascade's outputs as the response's extra object (NaN, where nothing was computed, -> null)."""
    def col(name: str) -> list[Any]:
        return np.asarray(out[name]).reshape(-1).tolist()

    def num(xs: list[float]) -> list[float | None]:
        return [None if x != x else round(float(x), 6) for x in xs]
    text = lambda name: bytes(col(name)[0]).decode("utf-8")
    return {"stage": int(col(T.STAGE_INDEX)[0]), "stage_model": text(T.STAGE_MODEL),
            "stages_run": [int(x) for x in col(T.STAGES_RUN)], "cost": float(col(T.COST)[0]),
            "confidences": num(T.unwire(col(T.CONFIDENCES))), "thresholds": num(T.unwire(col(T.THRESHOLDS))),
            "stage_latency_ms": num(col(T.STAGE_LATENCY_MS)), "degraded": bool(col(T.DEGRADED)[0]),
            "degraded_reason": text(T.DEGRADED_REASON), "controller_ms": round(float(col(T.CONTROLLER_MS)[0]), 3)}


def usage(call: Call, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": call.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": call.prompt_tokens + completion_tokens}


@dataclass(frozen=True)
class Answer:
    """What the reply needs of one cascade response: the text, why it ended, the answering stage's tokens."""

    text: str
    finish_reason: str
    token_ids: list[int]
    logprobs: list[float]
    meta: dict[str, Any]


def answer(out: Mapping[str, np.ndarray], text: str) -> Answer:
    """The final cascade response ``out`` (streamed text already joined into ``text``)."""
    col = lambda name: np.asarray(out[name]).reshape(-1)
    return Answer(text, bytes(col(T.FINISH_REASON)[0]).decode(), [int(t) for t in col(T.OUTPUT_IDS)],
                  [float(x) for x in col(T.OUTPUT_LOG_PROBS)], metadata(out))


def logprobs_of(call: Call, a: Answer, token_text: Callable[[int], str]) -> dict[str, Any] | None:
    """The answer's token log-probs in OpenAI's shape for the endpoint, or None when not asked for."""
    if not call.logprobs:
        return None
    tokens = [token_text(t) for t in a.token_ids]
    if call.chat:
        return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                            for t, lp in zip(tokens, a.logprobs)], "refusal": None}
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": a.logprobs, "top_logprobs": None, "text_offset": offsets}


def completion(call: Call, answers: list[Answer], token_text: Callable[[int], str]) -> dict[str, Any]:
    """The non-streaming reply: one choice per answer (several for a completions list), in order."""
    choices = []
    for i, a in enumerate(answers):
        lp = logprobs_of(call, a, token_text)
        choices.append({"index": i, "message": {"role": "assistant", "content": a.text},
                        "finish_reason": a.finish_reason, "logprobs": lp} if call.chat else
                       {"index": i, "text": a.text, "finish_reason": a.finish_reason, "logprobs": lp})
    used = usage(call, sum(len(a.token_ids) for a in answers))
    meta: Any = answers[0].meta if len(answers) == 1 else [a.meta for a in answers]
    return {"id": ("chatcmpl-" if call.chat else "cmpl-") + call.id,
            "object": "chat.completion" if call.chat else "text_completion", "created": call.created,
            "model": call.model, "choices": choices, "usage": used, EXTRA: meta}


def chunk(call: Call, text: str | None, *, first: bool = False, reason: str | None = None,
          meta: dict[str, Any] | None = None, usage_: dict[str, int] | None = None,
          logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One SSE chunk. ``usage_`` alone makes the usage chunk (empty choices), as OpenAI sends it.
    Log-probs travel on the chunk with the finish reason, all of them: the cascade knows which stage
    answers, hence whose tokens they are, only at the end."""
    if call.chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": logprobs}
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
