"""Small helpers shared by the model.py files: reading a request's inputs and building responses.

Imported only inside the Triton Python backend (``pb_utils`` is passed in, never imported here), so
the package stays importable without Triton.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from optistop.serving.request import RequestError


def model_parameters(args: dict[str, str]) -> tuple[dict[str, Any], dict[str, str], Path]:
    """(model config, string parameters, model directory) from TritonPythonModel.initialize args."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    model_dir = Path(args["model_repository"])
    return config, params, model_dir


def read_inputs(pb_utils: Any, request: Any, names: list[str]) -> dict[str, np.ndarray | None]:
    out: dict[str, np.ndarray | None] = {}
    for name in names:
        t = pb_utils.get_input_tensor_by_name(request, name)
        out[name] = None if t is None else t.as_numpy()
    return out


def error_response(pb_utils: Any, exc: RequestError) -> Any:
    code = getattr(pb_utils.TritonError, exc.code, pb_utils.TritonError.INVALID_ARG)
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc), code))


def response(pb_utils: Any, tensors: dict[str, np.ndarray]) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])


def log_failure(pb_utils: Any, what: str) -> None:
    """From an ``except`` block: ``what`` and the traceback into the server log. Clients get a plain
    RequestError instead (STYLE.md: log tracebacks, never send them)."""
    pb_utils.Logger.log_error(f"{what}\n{traceback.format_exc()}")
