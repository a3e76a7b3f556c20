"""Reading a tensorrt_llm response the way the BLS does, for both engines' conventions."""

from __future__ import annotations

import numpy as np

from optistop import tensors as T
from optistop.serving.bls import parse_stage_outputs

END = 2


def out(ids: list[int], seq: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
    width = pad_to or len(ids)
    padded = ids + [END] * (width - len(ids))
    return {
        T.OUTPUT_IDS: np.asarray(padded, np.int32).reshape(1, 1, width),
        T.SEQUENCE_LENGTH: np.asarray([[seq]], np.int32),
        T.OUTPUT_LOG_PROBS: np.asarray([-0.5 * (i + 1) for i in range(width)], np.float32).reshape(1, 1, width),
    }


def test_cpu_stand_in_convention() -> None:
    r = parse_stage_outputs(out([7, 8], seq=2), max_tokens=4, end_id=END)
    assert r.token_ids == (7, 8) and r.logprobs == (-0.5, -1.0) and not r.hit_max_tokens


def test_end_token_counted_in_sequence_length_is_dropped() -> None:
    r = parse_stage_outputs(out([7, 8, END], seq=3, pad_to=6), max_tokens=4, end_id=END)
    assert r.token_ids == (7, 8) and r.logprobs == (-0.5, -1.0) and not r.hit_max_tokens


def test_budget_reached_without_end_token() -> None:
    r = parse_stage_outputs(out([7, 8, 9], seq=3, pad_to=3), max_tokens=3, end_id=END)
    assert r.token_ids == (7, 8, 9) and r.hit_max_tokens


def test_empty_output() -> None:
    r = parse_stage_outputs(out([], seq=0), max_tokens=3, end_id=END)
    assert r.token_ids == () and r.logprobs == () and not r.hit_max_tokens
