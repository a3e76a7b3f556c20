"""Stage engine on TensorRT-LLM's LLM API (PyTorch backend): thin glue over optistop.engines.llmapi_host.

Copied as 1/model.py of every stage that `python -m optistop.render --profile llmapi` writes; the
plain stage and its decoupled streaming variant share this file (config.pbtxt says which it is).
"""

# ruff: noqa: E402
import os
import sys

# The backend stub ignores PYTHONPATH (see model_repository/stage_small/1/model.py); apply it first.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import triton_python_backend_utils as pb_utils

from optistop.engines.llmapi_host import LlmapiHost


class TritonPythonModel:
    def initialize(self, args):
        self.host = LlmapiHost(pb_utils, args)

    def execute(self, requests):
        return self.host.execute(requests)

    def finalize(self):
        self.host.close()
