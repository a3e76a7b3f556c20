"""The cascade model's request handling, behind the thin model_repository/cascade/1/model.py.

One ``CascadeService`` per model instance: it owns the spec, the tokenizer and a backend, turns raw
inputs into a checked request, runs the loop, and maps every failure to a per-request error.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from optistop import tensors as T
from optistop.cascade import CascadeBackend, CascadeResult, StageFailure, run_cascade
from optistop.config import CascadeSpec, load_spec
from optistop.validation import RequestError, parse_request

log = logging.getLogger("optistop.cascade")
INPUTS = [t.name for t in T.CASCADE.inputs]


class CascadeService:
    def __init__(self, spec: CascadeSpec, tokenizer) -> None:  # tokenizer: transformers fast tokenizer
        self.spec = spec
        self.tokenizer = tokenizer
        self.end_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id)

    @classmethod
    def from_spec_file(cls, path: str | Path) -> CascadeService:
        from optistop.tokenizer import load_tokenizer

        spec = load_spec(path)
        return cls(spec, load_tokenizer(spec.tokenizer))

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt).input_ids)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    async def handle(self, inputs: Mapping[str, np.ndarray | None],
                     backend: CascadeBackend) -> dict[str, np.ndarray] | RequestError:
        """Serve one request; never raises: failures come back as ``RequestError`` with a Triton code."""
        try:
            seed = zlib.crc32(repr(inputs.get(T.TEXT_INPUT)).encode())  # `random` policy: per prompt
            req = parse_request(inputs, self.spec, self.encode, seed=seed)
            result = await run_cascade(req, self.spec, backend, self.decode)
        except RequestError as exc:
            return exc
        except StageFailure as exc:
            log.error("cascade request failed: %s", exc)
            return RequestError(str(exc), code="UNAVAILABLE")
        except Exception:
            log.exception("cascade request failed")
            return RequestError("internal error in the cascade; see the server log", code="INTERNAL")
        return self.outputs(result)

    @staticmethod
    def outputs(r: CascadeResult) -> dict[str, np.ndarray]:
        """Output tensors with the batch dimension: shapes (1, 1) or (1, stages run)."""
        f32 = lambda xs: np.asarray([xs], dtype=np.float32)
        return {
            T.TEXT_OUTPUT: np.asarray([[r.text.encode()]], dtype=object),
            T.STAGE_INDEX: np.asarray([[r.stage]], dtype=np.int32),
            T.STAGE_MODEL: np.asarray([[r.stage_model.encode()]], dtype=object),
            T.CONFIDENCES: f32(r.confidences),
            T.THRESHOLDS: f32(r.thresholds),
            T.COST: f32([r.cost]),
            T.STAGE_LATENCY_MS: f32(r.stage_latency_ms),
        }
