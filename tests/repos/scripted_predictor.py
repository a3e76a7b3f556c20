"""A quality_predictor stand-in for fault tests: answers the constant in its ``constant`` parameter
(``nan`` allowed) for every feature vector. Copied over quality_predictor/1/model.py in a test repository."""

# ruff: noqa: E402
import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.value = float(params["constant"]["string_value"])

    def execute(self, requests):
        out = []
        for r in requests:
            n = pb_utils.get_input_tensor_by_name(r, "features").as_numpy().shape[0]
            conf = np.full((n, 1), self.value, dtype=np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("confidence", conf)]))
        return out
