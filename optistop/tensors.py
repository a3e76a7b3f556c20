"""Tensor contracts, declared once. Every config.pbtxt in the repository is checked against these.

Shapes are per request (Triton adds the batch dimension when ``max_batch_size > 0``).
The stage contract is TensorRT-LLM's ``tensorrt_llm`` model, so that the cascade cannot tell a
TensorRT-LLM engine from the CPU stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    ),
    outputs=(
        Tensor(OUTPUT_IDS, "INT32", (-1, -1)),        # (beams, tokens); we decode greedily: 1 beam
        Tensor(SEQUENCE_LENGTH, "INT32", (-1,)),      # (beams,)
        Tensor(CUM_LOG_PROBS, "FP32", (-1,)),         # (beams,)
        Tensor(OUTPUT_LOG_PROBS, "FP32", (-1, -1)),   # (beams, generated tokens)
    ),
)

# The streaming variant of a stage engine (decoupled, as TensorRT-LLM's tensorrt_llm must be to stream):
# the same contract plus tensorrt_llm's optional ``streaming`` flag. Each response then carries the
# tokens chosen since the previous one (output_ids (1, 1, new), output_log_probs alike, sequence_length
# the count in this response); the last response is flagged final.
STREAMING = "streaming"
STAGE_STREAM = Contract(inputs=(*STAGE.inputs, Tensor(STREAMING, "BOOL", (1,), optional=True)),
                        outputs=STAGE.outputs)

# --- cascade (what users call; genai-perf / TRT-LLM ensemble names) -------------------------------
TEXT_INPUT = "text_input"
MAX_TOKENS = "max_tokens"
LAMBDA = "lambda"
POLICY = "policy"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
TEXT_OUTPUT = "text_output"
STAGE_INDEX = "stage"
STAGE_MODEL = "stage_model"
CONFIDENCES = "confidences"
THRESHOLDS = "thresholds"
COST = "cost"
STAGE_LATENCY_MS = "stage_latency_ms"
DEGRADED = "degraded"            # extension: True when a fault forced a fallback (see cascade.py)
DEGRADED_REASON = "degraded_reason"  # extension: why, empty when not degraded
CONTROLLER_MS = "controller_ms"  # extension: time outside stage engines (features, predictor, policy)
STAGES_RUN = "stages_run"  # extension: indices of the stages run, in order (cost = sum of their costs)

CASCADE = Contract(
    inputs=(
        Tensor(TEXT_INPUT, "BYTES", (1,)),
        Tensor(MAX_TOKENS, "INT32", (1,), optional=True),
        Tensor(LAMBDA, "FP32", (1,), optional=True),
        Tensor(POLICY, "BYTES", (1,), optional=True),
        Tensor(EXCLUDE_INPUT_IN_OUTPUT, "BOOL", (1,), optional=True),
    ),
    outputs=(
        Tensor(TEXT_OUTPUT, "BYTES", (1,)),
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
NUMPY_DTYPE: dict[str, str] = {"INT32": "int32", "FP32": "float32", "BOOL": "bool", "BYTES": "object"}
