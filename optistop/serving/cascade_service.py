"""The cascade model's request handling, behind the thin model_repository/cascade/1/model.py.

One ``CascadeService`` per model instance: it owns the spec, the tokenizer and a backend, turns raw
inputs into a checked request, runs the loop, and maps every failure to a per-request error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from optistop import tensors as T
from optistop.cascade import CascadeBackend, CascadeResult, StageFailure, run_cascade
from optistop.serving.request import RequestError, parse_request
from optistop.serving.tokenizers import PromptEncoder
from optistop.spec import CascadeSpec, SpecError, load_spec

log = logging.getLogger("optistop.cascade")


class MetricsSink(Protocol):
    def record(self, result: CascadeResult, policy: str) -> None: ...

    def error(self, code: str) -> None: ...

INPUTS = [t.name for t in T.CASCADE.inputs]


class CascadeService:
    def __init__(self, spec: CascadeSpec, encoder: PromptEncoder, metrics: MetricsSink | None = None) -> None:
        self.metrics = metrics  # optional: TritonMetrics in the server
        self.spec = spec
        self.encoder = encoder
        self.end_id, self.pad_id = encoder.end_id, encoder.pad_id

    @classmethod
    def from_spec_file(cls, path: str | Path) -> CascadeService:
        spec = load_spec(path)
        try:
            return cls(spec, PromptEncoder.for_spec(spec))
        except ValueError as exc:
            raise SpecError(f"{spec.source}: {exc}") from None

    def check_repository(self, repo: Path) -> None:
        """Refuse to load (``SpecError``, one line) when the repository cannot serve this spec: a stage
        model missing, a stage tokenizer that disagrees with the spec's, or a predictor sidecar built for
        another feature version. Run from initialize(), where BLS calls are not allowed yet."""
        from optistop.serving.predictor_runtime import PredictorLoadError, load_sidecar

        for i, stage in enumerate(self.spec.stages):
            if not stage.url and not (repo / stage.triton_model / "config.pbtxt").exists():
                raise SpecError(f"stages[{i}].triton_model: model '{stage.triton_model}' is not in the "
                                f"repository {repo}; models there: {', '.join(sorted(_models(repo)))}")
            theirs = stage.checkpoint / "tokenizer.json"
            if theirs.exists() and _vocab(theirs) != _vocab(self.spec.tokenizer / "tokenizer.json"):
                raise SpecError(f"stages[{i}].checkpoint: the tokenizer in {stage.checkpoint} differs from "
                                f"cascade.tokenizer {self.spec.tokenizer}; the cascade tokenizes once for all stages")
        if self.spec.predictor_url:
            return  # the remote server's predictor model checks its own sidecar when it loads
        sidecar = repo / self.spec.predictor_model / "1" / "model.json"
        try:
            load_sidecar(sidecar)
        except (PredictorLoadError, OSError) as exc:
            raise SpecError(f"cascade.predictor_model: {exc}") from None

    def decode(self, ids) -> str:
        return self.encoder.decode(ids)

    async def handle(self, inputs: Mapping[str, np.ndarray | None],
                     backend: CascadeBackend) -> dict[str, np.ndarray] | RequestError:
        """Serve one request; never raises: failures come back as ``RequestError`` with a Triton code."""
        out = await self._handle(inputs, backend)
        if self.metrics is not None and isinstance(out, RequestError):
            self.metrics.error(out.code)
        return out

    async def _handle(self, inputs: Mapping[str, np.ndarray | None],
                      backend: CascadeBackend) -> dict[str, np.ndarray] | RequestError:
        try:
            req = parse_request(inputs, self.spec, self.encoder.encode)
            result = await run_cascade(req, self.spec, backend, self.decode)
        except RequestError as exc:
            return exc
        except StageFailure as exc:
            log.error("cascade request failed: %s", exc)
            return RequestError(str(exc), code="UNAVAILABLE")
        except Exception:
            log.exception("cascade request failed")
            return RequestError("internal error in the cascade; see the server log", code="INTERNAL")
        if result.degraded:
            log.warning("degraded answer from stage %s: %s", result.stage_model, "; ".join(result.reasons))
        if self.metrics is not None:
            self.metrics.record(result, req.policy.name)
        return self.outputs(result)

    @staticmethod
    def outputs(r: CascadeResult) -> dict[str, np.ndarray]:
        """Output tensors with the batch dimension: shapes (1, 1) or (1, stages run)."""
        return T.CASCADE.cast_outputs({
            T.TEXT_OUTPUT: [[r.text]],
            T.STAGE_INDEX: [[r.stage]],
            T.STAGE_MODEL: [[r.stage_model]],
            T.CONFIDENCES: [r.confidences],
            T.THRESHOLDS: [r.thresholds],
            T.COST: [[r.cost]],
            T.STAGE_LATENCY_MS: [r.stage_latency_ms],
            T.STAGES_RUN: [r.stages_run],
            T.DEGRADED: [[r.degraded]],
            T.DEGRADED_REASON: [["; ".join(r.reasons)]],
            T.CONTROLLER_MS: [[r.controller_ms]],
        })


def _models(repo: Path) -> list[str]:
    return [p.parent.name for p in repo.glob("*/config.pbtxt")]


def _vocab(tokenizer_json: Path) -> dict:
    """The parts of tokenizer.json that decide token ids (model vocabulary and added tokens)."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))  # byte-level BPE vocabularies are not ASCII
    return {"vocab": data.get("model", {}).get("vocab"), "added": data.get("added_tokens")}
