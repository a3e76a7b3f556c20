"""The cascade BLS model: thin glue over optistop.serving.cascade_service.

Reads the cascade spec named by the ``cascade_spec`` parameter (relative to this model's directory),
runs each request's stopping loop through BLS calls to the stage engines and the quality predictor, and
answers each request on its own: a bad or failed request gets its own error, the batch goes on.
"""

# ruff: noqa: E402
import os
import sys

# The backend stub embeds the system libpython and ignores PYTHONPATH; apply it here, before anything
# imports numpy (pb_utils does), so the project's environment is importable. A no-op in the container.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import asyncio

import triton_python_backend_utils as pb_utils

from optistop.serving.bls import PROBE_PROMPT
from optistop.serving.cascade_service import INPUTS, CascadeService
from optistop.serving.remote import backend_for
from optistop.serving.request import RequestError
from optistop.serving.triton_glue import error_response, read_inputs, response


class TritonPythonModel:
    def initialize(self, args):
        self.service, local = CascadeService.for_triton(pb_utils, args)
        # BLS, or gRPC to another tritonserver for the stages / predictor that the spec gives a url
        self.backend = backend_for(pb_utils, self.service.spec, self.service.end_id, self.service.pad_id, local)
        self.ready = False  # BLS calls are not allowed in initialize(): check the stages on first use
        spec, book = self.service.spec, self.service.policies
        pb_utils.Logger.log_info(f"cascade '{spec.name}': stages {', '.join(spec.stage_names)}, "
                                 f"policy {book.default_policy}, lambda {book.default_lambda:g}")

    async def execute(self, requests):
        # A stage that is not ready or whose backend died is a per-request fault: the loop degrades to
        # the living stages and answers UNAVAILABLE only when none answers (optistop/cascade.py). The
        # first request checks the stages' log-prob contract (a configuration fault, refused for all).
        if not self.ready:
            problem = await self.backend.self_test(self.service.encoder.encode(text=PROBE_PROMPT).ids)
            if problem:  # e.g. log-probs missing or all zero: every answer would be mis-scored
                pb_utils.Logger.log_error(problem)
                return [error_response(pb_utils, RequestError(problem, code="UNAVAILABLE")) for _ in requests]
            self.ready = True
        results = await asyncio.gather(
            *(self.service.handle(read_inputs(pb_utils, r, INPUTS), self.backend) for r in requests))
        return [error_response(pb_utils, r) if isinstance(r, RequestError) else response(pb_utils, r)
                for r in results]

    def finalize(self):
        self.service.close()   # metric increments not yet sent
