"""The streaming cascade BLS model (decoupled): thin glue over optistop.serving.streaming.

Same spec, service and backend as model_repository/cascade; each request gets a response sender, text
goes out as it becomes final, and the last response carries the cascade's metadata with the final flag.
"""

# ruff: noqa: E402
import os
import sys

# The backend stub embeds the system libpython and ignores PYTHONPATH; apply it here, before anything
# imports numpy (pb_utils does), so the project's environment is importable. A no-op in the container.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import asyncio

import triton_python_backend_utils as pb_utils

from optistop.serving.bls import BlsBackend
from optistop.serving.cascade_service import INPUTS, CascadeService
from optistop.serving.request import RequestError
from optistop.serving.streaming import handle_stream
from optistop.serving.triton_glue import error_response, read_inputs, response

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        self.service, local = CascadeService.for_triton(pb_utils, args)
        self.backend = BlsBackend(pb_utils, self.service.spec, self.service.end_id, self.service.pad_id, local)
        self.ready = False  # BLS calls are not allowed in initialize(): check the stages on first use

    async def execute(self, requests):
        if not self.ready:
            missing = self.backend.not_ready(streaming=True)
            if missing:
                err = RequestError(f"cascade not ready: model(s) {', '.join(missing)} not ready",
                                   code="UNAVAILABLE")
                for r in requests:
                    r.get_response_sender().send(error_response(pb_utils, err), flags=FINAL)
                return None
            self.ready = True
        await asyncio.gather(*(self._serve(r) for r in requests))
        return None

    async def _serve(self, request):
        sender = request.get_response_sender()
        out = await handle_stream(self.service, read_inputs(pb_utils, request, INPUTS), self.backend,
                                  lambda tensors: sender.send(response(pb_utils, tensors)), sender.is_cancelled)
        if isinstance(out, RequestError):
            sender.send(error_response(pb_utils, out), flags=FINAL)
        else:
            sender.send(response(pb_utils, out), flags=FINAL)

    def finalize(self):
        self.service.close()   # metric increments not yet sent
