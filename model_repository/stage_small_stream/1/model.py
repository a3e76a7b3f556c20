"""Streaming stage engine (decoupled): thin glue over optistop.engines.stage.StageEngine.run_streaming.

The same checkpoint and tensor contract as stage_small, plus tensorrt_llm's ``streaming`` input: each
generated token goes out in its own response as it is chosen, then a final flag. The cascade_stream model
calls it for the last stage it runs; stage_medium_stream and stage_large_stream link to this file.
"""

# ruff: noqa: E402
import os
import sys

# The backend stub embeds the system libpython and ignores PYTHONPATH; apply it here, before anything
# imports numpy (pb_utils does), so the project's environment is importable. A no-op in the container.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import triton_python_backend_utils as pb_utils

from optistop import tensors as T
from optistop.engines.stage import StageEngine
from optistop.serving.triton_glue import exit_with_parent, model_parameters, serve_stage_stream

INPUTS = [t.name for t in T.STAGE_STREAM.inputs]


class TritonPythonModel:
    def initialize(self, args):
        exit_with_parent()   # this process ends with tritonserver (a stub may outlive it otherwise)
        _, params, model_dir = model_parameters(args)
        self.engine = StageEngine.from_parameters(params, model_dir)
        self.name = args["model_name"]
        pb_utils.Logger.log_info(f"{self.name}: streaming {self.engine.checkpoint}")

    def execute(self, requests):
        serve_stage_stream(pb_utils, self.name, requests, INPUTS, self.engine.run_streaming)
        return None
