"""Validation of cascade requests, in one place. Each failure names the input, what was wrong and what
is valid; the BLS turns ``RequestError`` into a per-request Triton error (the batch goes on)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from optistop import tensors as T
from optistop.cascade import CascadeRequest
from optistop.policy import make_policy
from optistop.spec import CascadeSpec

# The byte cap only bounds the work done before tokenizing; the exact limit is the token count checked
# after it. BPE vocabularies average 3-5 bytes per token and a UTF-8 character is at most 4 bytes, so 16
# bytes per token of context rejects nothing that could fit.
MAX_BYTES_PER_TOKEN = 16


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


def parse_request(inputs: Mapping[str, np.ndarray | None], spec: CascadeSpec,
                  encode: Callable[[str], Sequence[int]]) -> CascadeRequest:
    """Turn raw input arrays (batch dimension included or not) into a checked ``CascadeRequest``."""
    raw = _scalar(inputs, T.TEXT_INPUT)
    if raw is None:
        raise RequestError(f"missing required input '{T.TEXT_INPUT}' (BYTES, shape [1]: the prompt)")
    if isinstance(raw, str):
        raw = raw.encode()
    if not isinstance(raw, bytes | np.bytes_):
        raise RequestError(f"input '{T.TEXT_INPUT}' must be BYTES (a UTF-8 string), got {type(raw).__name__}")
    if len(raw) > max_prompt_bytes(spec):
        raise RequestError(f"input '{T.TEXT_INPUT}' is {len(raw)} bytes; at most {max_prompt_bytes(spec)} "
                           f"allowed ({spec.max_context_tokens} tokens of context)")
    try:
        prompt = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"input '{T.TEXT_INPUT}' is not valid UTF-8 ({exc.reason} at byte "
                           f"{exc.start})") from None
    if not prompt.strip():
        raise RequestError(f"input '{T.TEXT_INPUT}' is empty; send a non-empty prompt such as '12+35='")

    max_tokens = _scalar(inputs, T.MAX_TOKENS)
    max_tokens = spec.max_tokens_default if max_tokens is None else int(max_tokens)  # type: ignore[arg-type]
    if not 1 <= max_tokens <= spec.max_tokens_cap:
        raise RequestError(f"input '{T.MAX_TOKENS}' is {max_tokens}; valid range is 1..{spec.max_tokens_cap}")

    lam = _scalar(inputs, T.LAMBDA)
    lam = spec.default_lambda if lam is None else float(lam)  # type: ignore[arg-type]
    if not math.isfinite(lam) or lam < 0:
        raise RequestError(f"input '{T.LAMBDA}' is {lam}; it must be a finite number >= 0 "
                           f"(price of quality in units of the cheapest stage's cost; default "
                           f"{spec.default_lambda})")

    raw_policy = _scalar(inputs, T.POLICY)
    name = spec.default_policy if raw_policy is None else _text(raw_policy, T.POLICY)
    try:
        # `random` is seeded by the prompt: the same request gets the same stopping stage
        policy = make_policy(name, len(spec.stages), seed=zlib.crc32(prompt.encode()))
    except ValueError as exc:
        raise RequestError(f"input '{T.POLICY}': {exc}") from None

    excl = _scalar(inputs, T.EXCLUDE_INPUT_IN_OUTPUT)
    exclude = True if excl is None else bool(excl)

    ids = tuple(int(i) for i in encode(prompt))
    if len(ids) + max_tokens > spec.max_context_tokens:
        raise RequestError(f"input '{T.TEXT_INPUT}' is {len(ids)} tokens; with {T.MAX_TOKENS}={max_tokens} "
                           f"it exceeds the context of {spec.max_context_tokens} tokens (at most "
                           f"{spec.max_context_tokens - max_tokens} prompt tokens)")
    return CascadeRequest(prompt, ids, max_tokens, lam, policy, exclude)


def _text(value: object, name: str) -> str:
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"input '{name}' is not valid UTF-8") from None
    return str(value)
