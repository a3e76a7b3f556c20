"""The cascade model's request handling, behind the thin model_repository/cascade/1/model.py.

One ``CascadeService`` per model instance: it owns the spec, the tokenizer and a backend, turns raw
inputs into a checked request, runs the loop, and maps every failure to a per-request error.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from optistop import tensors as T
from optistop.cascade import CascadeBackend, CascadeRequest, CascadeResult, StageFailure, run_cascade
from optistop.policy_artifact import FILE_NAME as POLICY_FILE
from optistop.policy_artifact import PolicyArtifactError, PolicyBook, load_policy
from optistop.serving.request import RequestError, parse_request
from optistop.serving.tokenizers import PromptEncoder
from optistop.spec import CascadeSpec, SpecError, load_spec, tokenizer_sha256

log = logging.getLogger("optistop.cascade")


class MetricsSink(Protocol):
    def record(self, result: CascadeResult, policy: str) -> None: ...

    def error(self, code: str) -> None: ...

    def close(self) -> None: ...

INPUTS = [t.name for t in T.CASCADE.inputs]
PREDICTOR_MODES = ("auto", "true", "false")


class CascadeService:
    def __init__(self, spec: CascadeSpec, encoder: PromptEncoder, metrics: MetricsSink | None = None,
                 policies: PolicyBook | None = None) -> None:
        self.metrics = metrics  # optional: TritonMetrics in the server
        self.policies = policies  # the policy artifact; check_repository loads it from the repository
        self.spec = spec
        self.encoder = encoder
        self.end_id, self.pad_id = encoder.end_id, encoder.pad_id
        self.auditor: Any = None          # optistop.serving.audit.Auditor, from start_audits()
        self.policy_path: Path | None = None   # policy.json, watched for a new version (reload_policy)
        self._policy_stamp: tuple[int, int] | None = None
        self._policy_checked = 0.0

    @classmethod
    def from_spec_file(cls, path: str | Path) -> CascadeService:
        spec = load_spec(path)
        try:
            encoder = PromptEncoder.for_spec(spec)
        except ValueError as exc:
            raise SpecError(f"{spec.source}: {exc}") from None
        if not spec.stop_token_ids:  # the family's other end tokens (generation_config.json) stop it too
            spec = dataclasses.replace(spec, stop_token_ids=tuple(encoder.end_ids[1:]))
        return cls(spec, encoder)

    @classmethod
    def for_triton(cls, pb_utils: Any, args: dict[str, str]) -> tuple[CascadeService, Any]:
        """What both cascade models (plain and streaming) do in initialize(): the spec named by the
        ``cascade_spec`` parameter, the repository checks and policy, Prometheus metrics, and the
        predictor in this process (the repository's ONNX file and calibration) unless the parameter
        ``predictor_in_process`` is "false" or, with "auto" (the default), the spec names a
        ``predictor_url``; None means a call to the quality_predictor model (BLS or gRPC). The
        parameter ``predictor_engine`` picks what evaluates the ONNX graph in this process
        (predictor_runtime.ENGINES; "auto", the default: numpy when it matches onnxruntime)."""
        from optistop.serving.prometheus import TritonMetrics
        from optistop.serving.triton_glue import exit_with_parent, model_parameters

        exit_with_parent()
        _, params, model_dir = model_parameters(args)
        service = cls.from_spec_file(model_dir / params["cascade_spec"])
        service.check_repository(model_dir.parent)
        service.metrics = TritonMetrics(pb_utils)
        service.start_audits(model_dir, args.get("model_name", "cascade"))
        mode = params.get("predictor_in_process", "auto")
        if mode not in PREDICTOR_MODES:
            raise SpecError(f"parameter predictor_in_process is {mode!r}; valid: {', '.join(PREDICTOR_MODES)}")
        local = None
        # auto: score in this process unless the spec sends the predictor to another server
        if mode == "true" or (mode == "auto" and not service.spec.predictor_url):
            from optistop.serving.predictor_runtime import ENGINES, QualityPredictor

            engine = params.get("predictor_engine", "auto")
            if engine not in ENGINES:
                raise SpecError(f"parameter predictor_engine is {engine!r}; valid: {', '.join(ENGINES)}")
            local = QualityPredictor(model_dir.parent / service.spec.predictor_model / "1" / "model.onnx",
                                     engine=engine)
            pb_utils.Logger.log_info(f"cascade: quality predictor in this process, engine {local.engine}"
                                     f"{' (' + local.engine_note + ')' if local.engine_note else ''}")
        # Everything loaded so far (transformers, onnxruntime, spec, policy) lives as long as the process:
        # keep it out of the garbage collector's full passes, which would otherwise walk all of it every
        # few hundred requests inside some request's controller time (its p99).
        gc.freeze()
        return service, local

    def check_repository(self, repo: Path) -> None:
        """Refuse to load (``SpecError``, one line) when the repository cannot serve this spec: a stage
        model missing, a stage tokenizer that disagrees with the spec's, a predictor sidecar built for
        another feature version or for other stages or costs, or a policy artifact fitted for other stages.
        Loads the policy artifact. Run from initialize(), where BLS calls are not allowed yet."""
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
            # the remote server's predictor checks its own sidecar; the policy is read here all the same
            # (beside the predictor's files when the repository holds them, else beside the cascade's)
            local = repo / self.spec.predictor_model / "1" / POLICY_FILE
            path = local if local.exists() else repo / "cascade" / "1" / POLICY_FILE
            try:
                self.policies = load_policy(path)
                self.policy_path, self._policy_stamp = path, _stamp(path)
                self.policies.check_matches(self.spec.stage_names, self.spec.costs, str(path))
            except PolicyArtifactError as exc:
                raise SpecError(f"cascade.predictor_url: {exc}") from None
            return
        version_dir = repo / self.spec.predictor_model / "1"
        try:
            side = load_sidecar(version_dir / "model.json")
            if list(side["stages"]) != list(self.spec.stage_names) or list(side["costs"]) != list(self.spec.costs):
                raise PredictorLoadError(
                    f"{version_dir / 'model.json'}: the predictor was calibrated for stages {side['stages']} with "
                    f"costs {side['costs']}, but this cascade's spec has stages {list(self.spec.stage_names)} "
                    f"with costs {list(self.spec.costs)}; run `optistop calibrate` for this spec")
            self.policy_path = version_dir / POLICY_FILE
            self._policy_stamp = _stamp(self.policy_path)
            self.policies = self._checked_policy(self.policy_path)
        except (PredictorLoadError, PolicyArtifactError, OSError, ValueError) as exc:
            raise SpecError(f"cascade.predictor_model: {exc}") from None

    def _checked_policy(self, path: Path) -> PolicyBook:
        """A policy artifact checked against this spec, with the spec's explicit defaults applied."""
        book = load_policy(path)
        book.check_matches(self.spec.stage_names, self.spec.costs, str(path))
        theirs = book.art.get("tokenizer_sha256")
        if theirs and theirs != tokenizer_sha256(self.spec.tokenizer):
            raise PolicyArtifactError(
                f"{path.parent}: calibrated for cascade '{book.art.get('spec', '?')}' whose tokenizer "
                f"differs from this spec's ('{self.spec.name}', {self.spec.tokenizer}); its confidences mean "
                f"nothing for these models: run `optistop calibrate` for this spec")
        if self.spec.default_policy is not None:   # an operator's explicit choice beats the calibrated one
            book.make(self.spec.default_policy, self.spec.default_lambda)   # valid name?
            book.default_policy = self.spec.default_policy
        if self.spec.default_lambda is not None:
            book.default_lambda = self.spec.default_lambda
        return book

    def start_audits(self, model_dir: Path, model: str = "cascade") -> None:
        """Audit sampling (optistop.serving.audit), logging to the spec's audit_log (default: audit.jsonl
        beside the spec file)."""
        from optistop.serving.audit import Auditor

        assert self.policies is not None, "check_repository() loads the policy artifact"
        where = self.spec.audit_log or (self.spec.source.parent if self.spec.source else model_dir) / "audit.jsonl"
        self.auditor = Auditor(self.spec, self.policies, where, self.metrics, model=model)

    def reload_policy(self, force: bool = False) -> bool:
        """Swap in a new policy.json when the file changed (checked at most every ``policy_watch_s``).
        Requests already parsed keep the rule they were given, so in-flight requests finish on the old
        policy; a file that fails its checks is logged and the old policy serves on. True when swapped."""
        now = time.monotonic()
        if self.policy_path is None or (not force and (self.spec.policy_watch_s <= 0
                                                       or now - self._policy_checked < self.spec.policy_watch_s)):
            return False
        self._policy_checked = now
        stamp = _stamp(self.policy_path)
        if stamp == self._policy_stamp or stamp is None:
            return False
        self._policy_stamp = stamp
        try:
            book = self._checked_policy(self.policy_path)
        except (PolicyArtifactError, SpecError, OSError, ValueError) as exc:
            log.error("new policy artifact not used, the old one serves on: %s", exc)
            return False
        self.policies = book
        if self.auditor is not None:
            self.auditor.use(book)
        log.warning("policy artifact %s version %s now serving (%s, lambda %g)", self.policy_path,
                    book.art.get("version", 1), book.default_policy, book.default_lambda)
        return True

    def close(self) -> None:
        """From the model's finalize(): send the metric increments not yet flushed and release the metrics."""
        if self.metrics is not None:
            self.metrics.close()

    def decode(self, ids) -> str:
        return self.encoder.decode(ids)

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
            self.reload_policy()
            assert self.policies is not None, "check_repository() loads the policy artifact"
            req = parse_request(inputs, self.spec, self.encoder.encode, self.policies, self.encoder.token_ids)
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
        if self.auditor is not None:
            self.auditor.after(req, result, backend, self.decode)   # never the streaming wrap: not the client's
        return self.outputs(result)

    @staticmethod
    def outputs(r: CascadeResult) -> dict[str, np.ndarray]:
        """Output tensors with the batch dimension: shapes (1, 1) or (1, stages run)."""
        return T.CASCADE.cast_outputs({
            T.TEXT_OUTPUT: [[r.text]],
            T.FINISH_REASON: [[r.finish_reason]],
            T.OUTPUT_IDS: [r.token_ids],
            T.OUTPUT_LOG_PROBS: [r.logprobs],
            T.STAGE_INDEX: [[r.stage]],
            T.STAGE_MODEL: [[r.stage_model]],
            T.CONFIDENCES: [T.wire(r.confidences)],     # no NaN on the wire (tensors.NO_VALUE)
            T.THRESHOLDS: [T.wire(r.thresholds)],
            T.COST: [[r.cost]],
            T.STAGE_LATENCY_MS: [r.stage_latency_ms],
            T.STAGES_RUN: [r.stages_run],
            T.DEGRADED: [[r.degraded]],
            T.DEGRADED_REASON: [["; ".join(r.reasons)]],
            T.CONTROLLER_MS: [[r.controller_ms]],
        })


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _models(repo: Path) -> list[str]:
    return [p.parent.name for p in repo.glob("*/config.pbtxt")]


def _vocab(tokenizer_json: Path) -> dict:
    """The parts of tokenizer.json that decide token ids (model vocabulary and added tokens)."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))  # byte-level BPE vocabularies are not ASCII
    return {"vocab": data.get("model", {}).get("vocab"), "added": data.get("added_tokens")}
