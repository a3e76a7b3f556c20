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

import json
import traceback
from pathlib import Path

import triton_python_backend_utils as pb_utils

from optistop.serving.predictor_runtime import QualityPredictor
from optistop.tensors import CONFIDENCE, FEATURES


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        # onnxruntime session created here, once per instance, with 1 intra-op thread by default
        self.predictor = QualityPredictor(version_dir / params.get("onnx_file", "model.onnx"),
                                          threads=int(params.get("intra_op_threads", "1")))
        out = pb_utils.get_output_config_by_name(config, CONFIDENCE)
        self.out_dtype = pb_utils.triton_string_to_numpy(out["data_type"])
        self.logger = pb_utils.Logger

    def execute(self, requests):
        batches = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, FEATURES)
            batches.append(None if tensor is None else tensor.as_numpy())
        try:
            results = self.predictor.predict_requests(batches)
        except Exception:  # the whole batch is doomed: log the traceback, never send it to clients
            self.logger.log_error(f"quality_predictor: {traceback.format_exc()}")
            results = ["quality_predictor failed on this batch; see the server log"] * len(requests)
            code = pb_utils.TritonError.INTERNAL
        else:
            code = pb_utils.TritonError.INVALID_ARG
        responses = []
        for result in results:
            if isinstance(result, str):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(result, code)))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(CONFIDENCE, result.astype(self.out_dtype))]))
        return responses

    def finalize(self):
        self.predictor = None
