"""The cascade model's request handling, behind the thin model_repository/cascade/1/model.py.

One ``CascadeService`` per model instance: it owns the spec, the tokenizer and a backend, turns raw
inputs into a checked request, runs the loop, and maps every failure to a per-request error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from optistop import tensors as T
from optistop.cascade import CascadeBackend, CascadeRequest, CascadeResult, StageFailure, run_cascade
from optistop.serving.request import RequestError, parse_request
from optistop.spec import CascadeSpec, SpecError, load_spec

log = logging.getLogger("optistop.cascade")


class MetricsSink(Protocol):
    def record(self, result: CascadeResult, policy: str) -> None: ...

    def error(self, code: str) -> None: ...

INPUTS = [t.name for t in T.CASCADE.inputs]


class CascadeService:
    def __init__(self, spec: CascadeSpec, tokenizer, metrics: MetricsSink | None = None) -> None:
        self.metrics = metrics  # optional: TritonMetrics in the server
        self.spec = spec
        self.tokenizer = tokenizer
        self.end_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id)

    @classmethod
    def from_spec_file(cls, path: str | Path) -> CascadeService:
        from optistop.serving.tokenizers import load_tokenizer

        spec = load_spec(path)
        return cls(spec, load_tokenizer(spec.tokenizer))

    def check_repository(self, repo: Path) -> None:
        """Refuse to load (``SpecError``, one line) when the repository cannot serve this spec: a stage
        model missing, a stage tokenizer that disagrees with the spec's, or a predictor sidecar built for
        another feature version. Run from initialize(), where BLS calls are not allowed yet."""
        from optistop.serving.predictor_runtime import PredictorLoadError, load_sidecar

        for i, stage in enumerate(self.spec.stages):
            if not (repo / stage.triton_model / "config.pbtxt").exists():
                raise SpecError(f"stages[{i}].triton_model: model '{stage.triton_model}' is not in the "
                                f"repository {repo}; models there: {', '.join(sorted(_models(repo)))}")
            theirs = stage.checkpoint / "tokenizer.json"
            if theirs.exists() and _vocab(theirs) != _vocab(self.spec.tokenizer / "tokenizer.json"):
                raise SpecError(f"stages[{i}].checkpoint: the tokenizer in {stage.checkpoint} differs from "
                                f"cascade.tokenizer {self.spec.tokenizer}; the cascade tokenizes once for all stages")
        sidecar = repo / self.spec.predictor_model / "1" / "model.json"
        try:
            load_sidecar(sidecar)
        except (PredictorLoadError, OSError) as exc:
            raise SpecError(f"cascade.predictor_model: {exc}") from None

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt).input_ids)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    async def handle(self, inputs: Mapping[str, np.ndarray | None], backend: CascadeBackend,
                     wrap: Callable[[CascadeRequest], CascadeBackend] | None = None,
                     ) -> dict[str, np.ndarray] | RequestError:
        """Serve one request; never raises: failures come back as ``RequestError`` with a Triton code.
        ``wrap`` gives a per-request backend around ``backend`` (streaming: optistop.serving.streaming)."""
        out = await self._handle(inputs, backend, wrap)
        if self.metrics is not None and isinstance(out, RequestError):
            self.metrics.error(out.code)
        return out

    async def _handle(self, inputs: Mapping[str, np.ndarray | None], backend: CascadeBackend,
                      wrap: Callable[[CascadeRequest], CascadeBackend] | None = None,
                      ) -> dict[str, np.ndarray] | RequestError:
        try:
            req = parse_request(inputs, self.spec, self.encode)
            result = await run_cascade(req, self.spec, wrap(req) if wrap else backend, self.decode)
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
    data = json.loads(tokenizer_json.read_text())
    return {"vocab": data.get("model", {}).get("vocab"), "added": data.get("added_tokens")}
