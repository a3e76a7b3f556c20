"""Validation of cascade requests, in one place. Each failure names the input, what was wrong and what
is valid; the BLS turns ``RequestError`` into a per-request Triton error (the batch goes on)."""

from __future__ import annotations

import math
import secrets
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from optistop import tensors as T
from optistop.cascade import CascadeRequest, GenerationOptions
from optistop.policy_artifact import PolicyBook
from optistop.serving.tokenizers import Prompt, parse_messages
from optistop.spec import CascadeSpec

# The byte cap only bounds the work done before tokenizing; the exact limit is the token count checked
# after it. BPE vocabularies average 3-5 bytes per token and a UTF-8 character is at most 4 bytes, so 16
# bytes per token of context rejects nothing that could fit.
MAX_BYTES_PER_TOKEN = 16
MAX_STOP_BYTES = 256


def max_prompt_bytes(spec: CascadeSpec) -> int:
    """The prompt byte cap of a spec: its context (the engines' max_input_len + 1) in bytes."""
    return spec.max_context_tokens * MAX_BYTES_PER_TOKEN


class RequestError(ValueError):
    """A request that cannot be served as sent. ``code`` is a Triton error code name."""

    def __init__(self, message: str, code: str = "INVALID_ARG") -> None:
        super().__init__(message)
        self.code = code


def _scalar(inputs: Mapping[str, np.ndarray | None], name: str) -> object | None:
    arr = inputs.get(name)
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.size != 1:
        raise RequestError(f"input '{name}' must hold exactly one element per request, got shape "
                           f"{list(arr.shape)}")
    return arr.reshape(-1)[0]


def _bytes_input(inputs: Mapping[str, np.ndarray | None], name: str, example: str,
                 spec: CascadeSpec) -> str | None:
    """A BYTES input decoded as UTF-8 (None when absent), within the byte cap and not blank."""
    raw = _scalar(inputs, name)
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode()
    if not isinstance(raw, bytes | np.bytes_):
        raise RequestError(f"input '{name}' must be BYTES (a UTF-8 string), got {type(raw).__name__}")
    if len(raw) > max_prompt_bytes(spec):
        raise RequestError(f"input '{name}' is {len(raw)} bytes; at most {max_prompt_bytes(spec)} "
                           f"allowed ({spec.max_context_tokens} tokens of context)")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"input '{name}' is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise RequestError(f"input '{name}' is empty; send {example}")
    return text


def parse_request(inputs: Mapping[str, np.ndarray | None], spec: CascadeSpec,
                  encode: Callable[..., Prompt], policies: PolicyBook,
                  token_ids: Callable[[str], Sequence[int]] | None = None) -> CascadeRequest:
    """Turn raw input arrays (batch dimension included or not) into a checked ``CascadeRequest``.

    ``encode(text=...)`` or ``encode(messages=...)`` is the family's PromptEncoder.encode; ``policies``
    is the loaded policy artifact (the default policy and lambda are its operating point);
    ``token_ids`` (PromptEncoder.token_ids) turns stop words into the stages' ``stop_words_list``
    (without it the stages get none, and the cascade still cuts the text: a caller that only checks)."""
    text = _bytes_input(inputs, T.TEXT_INPUT, "a non-empty prompt such as '12+35='", spec)
    raw_messages = _bytes_input(inputs, T.MESSAGES, 'a JSON list such as [{"role": "user", "content": "12+35="}]',
                                spec)
    if (text is None) == (raw_messages is None):
        raise RequestError(f"send exactly one of '{T.TEXT_INPUT}' (BYTES, the prompt) and '{T.MESSAGES}' "
                           f"(BYTES, OpenAI-style chat messages as JSON); got "
                           f"{'both' if text is not None else 'neither'}")
    messages = None
    if raw_messages is not None:
        try:
            messages = parse_messages(raw_messages)
        except ValueError as exc:
            raise RequestError(f"input '{T.MESSAGES}' {exc}") from None

    max_tokens = _scalar(inputs, T.MAX_TOKENS)
    max_tokens = spec.max_tokens_default if max_tokens is None else int(max_tokens)  # type: ignore[arg-type]
    if not 1 <= max_tokens <= spec.max_tokens_cap:
        raise RequestError(f"input '{T.MAX_TOKENS}' is {max_tokens}; valid range is 1..{spec.max_tokens_cap}")

    raw_lam = _scalar(inputs, T.LAMBDA)
    lam = None if raw_lam is None else float(raw_lam)  # type: ignore[arg-type]
    if lam is not None and (not math.isfinite(lam) or lam < 0):
        raise RequestError(f"input '{T.LAMBDA}' is {lam}; it must be a finite number >= 0 "
                           f"(price of quality in units of the cheapest stage's cost; default: the "
                           f"calibrated operating point, {policies.default_lambda:g})")

    raw_policy = _scalar(inputs, T.POLICY)
    name = None if raw_policy is None else _text(raw_policy, T.POLICY)
    try:
        # `random` is seeded by the prompt: the same request gets the same stopping stage
        policy, lam = policies.make(name, lam, seed=zlib.crc32((text or raw_messages or "").encode()))
    except ValueError as exc:
        raise RequestError(f"input '{T.POLICY}': {exc}") from None

    excl = _scalar(inputs, T.EXCLUDE_INPUT_IN_OUTPUT)
    exclude = True if excl is None else bool(excl)

    raw_audit = _scalar(inputs, T.AUDIT)
    audit = None if raw_audit is None else float(raw_audit)  # type: ignore[arg-type]
    if audit is not None and not 0.0 <= audit <= 1.0:   # NaN fails too
        raise RequestError(f"input '{T.AUDIT}' is {audit}; it must be a probability in [0, 1] (the chance that "
                           f"this request is audited; default: the spec's audit_rate, {spec.audit_rate:g})")

    prompt = encode(text=text) if messages is None else encode(messages=messages)
    ids = prompt.ids
    if len(ids) + max_tokens > spec.max_context_tokens:
        which = T.TEXT_INPUT if messages is None else T.MESSAGES
        raise RequestError(f"input '{which}' is {len(ids)} tokens; with {T.MAX_TOKENS}={max_tokens} "
                           f"it exceeds the context of {spec.max_context_tokens} tokens (at most "
                           f"{spec.max_context_tokens - max_tokens} prompt tokens)")
    stop = parse_stop_words(inputs.get(T.STOP_WORDS))
    stop_ids = tuple(tuple(int(t) for t in token_ids(w)) for w in stop) if token_ids else ()
    options = GenerationOptions(*parse_sampling(inputs, spec), stop_ids=stop_ids)
    return CascadeRequest(prompt.user_text, ids, max_tokens, lam, policy, exclude, audit=audit, stop=stop,
                          options=options)


def parse_stop_words(arr: np.ndarray | None) -> tuple[str, ...]:
    """The ``stop_words`` input: 0..MAX_STOP_WORDS non-empty UTF-8 strings of at most MAX_STOP_BYTES each."""
    if arr is None:
        return ()
    values = np.asarray(arr, dtype=object).reshape(-1)
    if len(values) > T.MAX_STOP_WORDS:
        raise RequestError(f"input '{T.STOP_WORDS}' holds {len(values)} strings; at most {T.MAX_STOP_WORDS}")
    words = tuple(_text(v, T.STOP_WORDS) for v in values)
    for w in words:
        if not w or len(w.encode()) > MAX_STOP_BYTES:
            raise RequestError(f"input '{T.STOP_WORDS}' holds {w!r}; each stop word must be 1..{MAX_STOP_BYTES} "
                               f"bytes of UTF-8")
    return words


def parse_sampling(inputs: Mapping[str, np.ndarray | None], spec: CascadeSpec) -> tuple[float, float, int]:
    """(temperature, top_p, seed) of a request. Absent temperature or 0: greedy. A sampled request without
    a seed gets a random one (as OpenAI: repeated requests differ); the same seed serves every stage."""
    raw_t, raw_p, raw_seed = (_scalar(inputs, n) for n in (T.TEMPERATURE, T.TOP_P, T.RANDOM_SEED))
    temperature = 0.0 if raw_t is None else float(raw_t)  # type: ignore[arg-type]
    if not 0.0 <= temperature <= spec.max_temperature:
        raise RequestError(f"input '{T.TEMPERATURE}' is {temperature:g}; valid range is 0..{spec.max_temperature:g} "
                           f"(cascade.max_temperature: the stopping rule was calibrated on greedy answers; "
                           f"0 is greedy)")
    top_p = 1.0 if raw_p is None else float(raw_p)  # type: ignore[arg-type]
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"input '{T.TOP_P}' is {top_p:g}; valid range is (0, 1]")
    if raw_seed is None:
        seed = secrets.randbits(63) if temperature > 0 else 0
    else:
        seed = int(raw_seed)  # type: ignore[call-overload]
        if not 0 <= seed < 2**64:
            raise RequestError(f"input '{T.RANDOM_SEED}' is {seed}; valid range is 0..{2**64 - 1}")
    return temperature, top_p, seed


def _text(value: object, name: str) -> str:
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"input '{name}' is not valid UTF-8") from None
    return str(value)
