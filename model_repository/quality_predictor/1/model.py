"""Triton Python-backend glue for `quality_predictor`: features FP32[64] -> calibrated confidence FP32[1].

All logic lives in optistop/serving/predictor_runtime.py (tested without Triton). This file parses the config,
converts tensors and builds one response per request; a bad request gets its own INVALID_ARG error.
Loading fails with a clear message if model.json's feature version differs from optistop.features.
"""

# ruff: noqa: E402
import os
import sys

# The backend stub embeds the system libpython and ignores PYTHONPATH; apply it here, before anything
# imports numpy (pb_utils does), so the project's environment is importable. A no-op in the container.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import traceback

import triton_python_backend_utils as pb_utils

from optistop.serving.predictor_runtime import QualityPredictor
from optistop.serving.request import RequestError
from optistop.serving.triton_glue import error_response, exit_with_parent, model_parameters, read_inputs, response
from optistop.tensors import CONFIDENCE, FEATURES


class TritonPythonModel:
    def initialize(self, args):
        exit_with_parent()   # this process ends with tritonserver (a stub may outlive it otherwise)
        _, params, model_dir = model_parameters(args)
        version_dir = model_dir / str(args["model_version"])
        # onnxruntime session created here, once per instance, with 1 intra-op thread by default
        self.predictor = QualityPredictor(version_dir / params.get("onnx_file", "model.onnx"),
                                          threads=int(params.get("intra_op_threads", "1")))
        self.logger = pb_utils.Logger

    def execute(self, requests):
        batches = [read_inputs(pb_utils, r, [FEATURES])[FEATURES] for r in requests]
        try:
            results = self.predictor.predict_requests(batches)
        except Exception:  # the whole batch is doomed: log the traceback, never send it to clients
            self.logger.log_error(f"quality_predictor: {traceback.format_exc()}")
            err = RequestError("quality_predictor failed on this batch; see the server log", code="INTERNAL")
            return [error_response(pb_utils, err) for _ in requests]
        return [error_response(pb_utils, r) if isinstance(r, RequestError) else response(pb_utils, {CONFIDENCE: r})
                for r in results]

    def finalize(self):
        self.predictor = None
