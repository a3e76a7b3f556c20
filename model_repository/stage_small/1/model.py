"""Stage engine (CPU stand-in for a TensorRT-LLM engine): thin glue over optistop.engines.stage.

Serves the Hugging Face causal-LM directory named by the ``checkpoint_dir`` parameter (relative to this
model's directory) with the tensorrt_llm tensor contract. stage_medium and stage_large link to this file.
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
from optistop.serving.triton_glue import exit_with_parent, model_parameters, serve_stage

INPUTS = [t.name for t in T.STAGE.inputs]


class TritonPythonModel:
    def initialize(self, args):
        exit_with_parent()   # this process ends with tritonserver (a stub may outlive it otherwise)
        _, params, model_dir = model_parameters(args)
        self.engine = StageEngine.from_parameters(params, model_dir)
        self.name = args["model_name"]
        pb_utils.Logger.log_info(f"{self.name}: serving {self.engine.checkpoint} "
                                 f"({self.engine.model.n_params} parameters)")

    def execute(self, requests):
        return serve_stage(pb_utils, self.name, requests, INPUTS, self.engine.run)
