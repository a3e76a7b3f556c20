"""Tensor contracts, declared once. Every config.pbtxt in the repository is checked against these.

Shapes are per request (Triton adds the batch dimension when ``max_batch_size > 0``).
The stage contract is TensorRT-LLM's ``tensorrt_llm`` model, so that the cascade cannot tell a
TensorRT-LLM engine from the CPU stand-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str                # Triton dtype name without the TYPE_ prefix: INT32, FP32, BOOL, BYTES
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Contract:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def input(self, name: str) -> Tensor:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> Tensor:
        return next(t for t in self.outputs if t.name == name)

    def cast_outputs(self, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Output arrays in the dtypes this contract declares (the one place those dtypes are written).

        Strings are encoded as UTF-8 for BYTES outputs; a name not in the contract is a KeyError."""
        out: dict[str, np.ndarray] = {}
        for name, value in values.items():
            dtype = self.output(name).dtype
            if dtype == "BYTES":
                enc = lambda v: v.encode("utf-8") if isinstance(v, str) else v
                out[name] = np.vectorize(enc, otypes=[object])(np.asarray(value, dtype=object))
            else:
                out[name] = np.asarray(value, dtype=NUMPY_DTYPE[dtype])
        return out


# --- stage engine (tensorrt_llm model contract) -------------------------------------------------
INPUT_IDS = "input_ids"
INPUT_LENGTHS = "input_lengths"
REQUEST_OUTPUT_LEN = "request_output_len"
END_ID = "end_id"
PAD_ID = "pad_id"
RETURN_LOG_PROBS = "return_log_probs"
RUNTIME_TOP_K = "runtime_top_k"
TEMPERATURE = "temperature"
RUNTIME_TOP_P = "runtime_top_p"
RANDOM_SEED = "random_seed"  # UINT64, tensorrtllm_backend v0.19.0 (templates after ~2025-05 call it `seed`)
STOP_WORDS_LIST = "stop_words_list"  # (2, N) per request: see stop_words_list() below
STOP = "stop"                        # true: cancel the in-flight request with the same request id
OUTPUT_IDS = "output_ids"
SEQUENCE_LENGTH = "sequence_length"
CUM_LOG_PROBS = "cum_log_probs"
OUTPUT_LOG_PROBS = "output_log_probs"

STAGE = Contract(
    inputs=(
        Tensor(INPUT_IDS, "INT32", (-1,)),
        Tensor(INPUT_LENGTHS, "INT32", (1,)),
        Tensor(REQUEST_OUTPUT_LEN, "INT32", (1,)),
        Tensor(END_ID, "INT32", (1,), optional=True),
        Tensor(PAD_ID, "INT32", (1,), optional=True),
        Tensor(RETURN_LOG_PROBS, "BOOL", (1,), optional=True),
        Tensor(RUNTIME_TOP_K, "INT32", (1,), optional=True),
        Tensor(TEMPERATURE, "FP32", (1,), optional=True),
        Tensor(RUNTIME_TOP_P, "FP32", (1,), optional=True),
        Tensor(RANDOM_SEED, "UINT64", (1,), optional=True),
        Tensor(STOP_WORDS_LIST, "INT32", (2, -1), optional=True),
        Tensor(STOP, "BOOL", (1,), optional=True),
    ),
    outputs=(
        Tensor(OUTPUT_IDS, "INT32", (-1, -1)),        # (beams, tokens); we decode greedily: 1 beam
        Tensor(SEQUENCE_LENGTH, "INT32", (-1,)),      # (beams,)
        Tensor(CUM_LOG_PROBS, "FP32", (-1,)),         # (beams,)
        Tensor(OUTPUT_LOG_PROBS, "FP32", (-1, -1)),   # (beams, generated tokens)
    ),
)


# The PyTorch-backend stage (TensorRT-LLM's LLM API, optistop.engines.llmapi_stage) serves STAGE as well:
# the stock tensorrtllm_backend `llmapi` model (text in, text out, no per-token log-probs) is not used.


def stop_words_list(words: Sequence[Sequence[int]]) -> np.ndarray:
    """One request's ``stop_words_list`` in TensorRT-LLM's (2, N) INT32 layout: row 0 holds the words'
    token ids end to end (0-padded), row 1 the cumulative end offset of each word (-1-padded).

    The layout the C++ backend parses (tensorrtllm_backend v0.19.0 inflight_batcher_llm/src/utils.cc,
    convertWordList) and that its preprocessing model writes (_to_word_list_format)."""
    words = [list(w) for w in words if len(w)]
    flat = [int(t) for w in words for t in w]
    n = max(1, len(flat))
    out = np.full((2, n), -1, dtype=np.int32)
    out[0] = 0
    out[0, :len(flat)] = flat
    out[1, :len(words)] = np.cumsum([len(w) for w in words], dtype=np.int64)
    return out


def parse_stop_words_list(arr: np.ndarray | None) -> tuple[tuple[int, ...], ...]:
    """The words of a ``stop_words_list`` (leading batch axes of size 1 allowed); ValueError if malformed."""
    if arr is None:
        return ()
    a = np.asarray(arr)
    if a.ndim < 2 or a.shape[-2] != 2 or int(np.prod(a.shape[:-2], dtype=np.int64)) != 1:
        raise ValueError(f"'{STOP_WORDS_LIST}' must have shape [2, N] per request, got {list(a.shape)}")
    ids, offsets = a.reshape(2, -1)
    words, start = [], 0
    for end in (int(o) for o in offsets):
        if end == -1:
            break
        if not start < end <= len(ids):
            raise ValueError(f"'{STOP_WORDS_LIST}' offsets must increase and stay within {len(ids)}, "
                             f"got {offsets.tolist()}")
        words.append(tuple(int(t) for t in ids[start:end]))
        start = end
    return tuple(words)


# The streaming variant of a stage engine (decoupled, as TensorRT-LLM's tensorrt_llm must be to stream):
# the same contract plus tensorrt_llm's optional ``streaming`` flag. Each response then carries the
# tokens chosen since the previous one (output_ids (1, 1, new), output_log_probs alike, sequence_length
# the count in this response); the last response is flagged final.
STREAMING = "streaming"
STAGE_STREAM = Contract(inputs=(*STAGE.inputs, Tensor(STREAMING, "BOOL", (1,), optional=True)),
                        outputs=STAGE.outputs)

# --- cascade (what users call; genai-perf / TRT-LLM ensemble names) -------------------------------
TEXT_INPUT = "text_input"
MESSAGES = "messages"      # extension: OpenAI-style chat messages as JSON (instead of text_input)
MAX_TOKENS = "max_tokens"
MAX_STOP_WORDS = 4         # as OpenAI
LAMBDA = "lambda"
POLICY = "policy"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
STOP_WORDS = "stop_words"  # the ensemble's name: up to MAX_STOP_WORDS strings; the answer ends before the first
TOP_P = "top_p"
TEXT_OUTPUT = "text_output"
FINISH_REASON = "finish_reason"  # "stop" (end token or a stop word) or "length" (max_tokens reached)
STAGE_INDEX = "stage"
STAGE_MODEL = "stage_model"
CONFIDENCES = "confidences"
THRESHOLDS = "thresholds"
# confidences[i] of a stage not scored (it or the predictor failed) and thresholds[i] when no stopping
# decision was taken on stage i (router, fixed, the last stage run): both are probabilities otherwise, so
# -1 is unambiguous, and NaN would make Triton's HTTP/JSON response invalid JSON (it writes a bare NaN),
# which strict parsers and perf_analyzer's --profile-export-file writer reject (its file came out empty)
NO_VALUE = -1.0


def wire(xs: list[float]) -> list[float]:
    """NaN -> NO_VALUE, for the confidences and thresholds outputs."""
    return [NO_VALUE if x != x else x for x in xs]


def unwire(xs: Iterable[float]) -> list[float]:
    """The clients' side of ``wire``: NO_VALUE (any negative) -> NaN."""
    return [float(x) if x >= 0 else float("nan") for x in xs]
COST = "cost"
STAGE_LATENCY_MS = "stage_latency_ms"
DEGRADED = "degraded"            # extension: True when a fault forced a fallback (see cascade.py)
DEGRADED_REASON = "degraded_reason"  # extension: why, empty when not degraded
CONTROLLER_MS = "controller_ms"  # extension: time outside stage engines (features, predictor, policy)
AUDIT = "audit"  # extension, input: this request's audit probability (overrides spec audit_rate)
STAGES_RUN = "stages_run"  # extension: indices of the stages run, in order (cost = sum of their costs)

CASCADE = Contract(
    inputs=(
        # exactly one of text_input and messages per request (checked in optistop.serving.request)
        Tensor(TEXT_INPUT, "BYTES", (1,), optional=True),
        Tensor(MESSAGES, "BYTES", (1,), optional=True),
        Tensor(MAX_TOKENS, "INT32", (1,), optional=True),
        Tensor(LAMBDA, "FP32", (1,), optional=True),
        Tensor(POLICY, "BYTES", (1,), optional=True),
        Tensor(EXCLUDE_INPUT_IN_OUTPUT, "BOOL", (1,), optional=True),
        # sampling on every stage (absent or temperature 0: greedy, what the predictor was calibrated on)
        Tensor(STOP_WORDS, "BYTES", (-1,), optional=True),
        Tensor(TEMPERATURE, "FP32", (1,), optional=True),
        Tensor(TOP_P, "FP32", (1,), optional=True),
        Tensor(RANDOM_SEED, "UINT64", (1,), optional=True),
        Tensor(AUDIT, "FP32", (1,), optional=True),
    ),
    outputs=(
        Tensor(TEXT_OUTPUT, "BYTES", (1,)),
        Tensor(FINISH_REASON, "BYTES", (1,)),
        # the answering stage's generated tokens (stop word cut off) and their log-probs
        Tensor(OUTPUT_IDS, "INT32", (-1,)),
        Tensor(OUTPUT_LOG_PROBS, "FP32", (-1,)),
        Tensor(STAGE_INDEX, "INT32", (1,)),
        Tensor(STAGE_MODEL, "BYTES", (1,)),
        Tensor(CONFIDENCES, "FP32", (-1,)),
        Tensor(THRESHOLDS, "FP32", (-1,)),
        Tensor(COST, "FP32", (1,)),
        Tensor(STAGE_LATENCY_MS, "FP32", (-1,)),
        Tensor(STAGES_RUN, "INT32", (-1,)),
        Tensor(DEGRADED, "BOOL", (1,)),
        Tensor(DEGRADED_REASON, "BYTES", (1,)),
        Tensor(CONTROLLER_MS, "FP32", (1,)),
    ),
)

# --- quality predictor ----------------------------------------------------------------------------
FEATURES = "features"
CONFIDENCE = "confidence"
N_FEATURES = 64

PREDICTOR = Contract(
    inputs=(Tensor(FEATURES, "FP32", (N_FEATURES,)),),
    outputs=(Tensor(CONFIDENCE, "FP32", (1,)),),
)

# numpy dtype per Triton dtype, for code that builds tensors without pb_utils.
NUMPY_DTYPE: dict[str, str] = {"INT32": "int32", "UINT64": "uint64", "FP32": "float32", "BOOL": "bool",
                               "BYTES": "object"}
