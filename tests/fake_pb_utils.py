"""A hand-written stand-in for ``triton_python_backend_utils`` (not MagicMock: a typo must fail).

Just enough of the Python backend's API for our model.py files: tensors, requests, responses, errors,
BLS ``InferenceRequest.async_exec`` routed to Python handlers registered by the test, and the logger.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)

    def __init__(self, message: str, code: int = 1) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor {name}: expected numpy array, got {type(array).__name__}")
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None) -> None:
        self._tensors, self._error = output_tensors, error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class ResponseSender:
    def __init__(self) -> None:
        self.sent: list[tuple[InferenceResponse | None, int]] = []

    def is_cancelled(self) -> bool:
        return False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        self.sent.append((response, flags))


Handler = Callable[[dict[str, np.ndarray]], Awaitable[InferenceResponse]]
HANDLERS: dict[str, Handler] = {}
READY: dict[str, bool] = {}
SENT: list[InferenceRequest] = []   # every BLS request, in the order async_exec was called


class InferenceRequest:
    def __init__(self, model_name: str, inputs: list[Tensor], requested_output_names: list[str],
                 request_id: str = "", timeout: int = 0) -> None:
        self.model_name, self.inputs, self.requested_output_names = model_name, inputs, requested_output_names
        self.request_id = request_id
        self.timeout = timeout   # microseconds, 0 = none (python_backend README, BLS)

    def get_response_sender(self) -> ResponseSender:
        """A decoupled model's sender for this request (one per request, as in the backend)."""
        if not hasattr(self, "_sender"):
            self._sender = ResponseSender()
        return self._sender

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name() == name), None)

    async def async_exec(self) -> InferenceResponse:
        SENT.append(self)
        if not READY.get(self.model_name, self.model_name in HANDLERS):
            err = TritonError(f"Model '{self.model_name}' is not ready.", TritonError.UNAVAILABLE)
            return InferenceResponse([], err)
        return await HANDLERS[self.model_name]({t.name(): t.as_numpy() for t in self.inputs})


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return request.input(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def request(**arrays: np.ndarray) -> InferenceRequest:
    """An incoming request carrying these input tensors."""
    return InferenceRequest("request", [Tensor(k, v) for k, v in arrays.items()], [])


def get_output_config_by_name(config: dict, name: str) -> dict | None:
    return next((o for o in config.get("output", []) if o["name"] == name), None)


def triton_string_to_numpy(triton_type: str) -> type:
    return {"TYPE_FP32": np.float32, "TYPE_INT32": np.int32, "TYPE_BOOL": np.bool_,
            "TYPE_STRING": np.object_}[triton_type]


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    return READY.get(model_name, model_name in HANDLERS)


class Logger:
    lines: list[str] = []

    @classmethod
    def log_info(cls, msg: str) -> None:
        cls.lines.append(msg)

    log_warn = log_error = log_verbose = log_info


def initialize_args(model_dir: Path, name: str) -> dict[str, str]:
    """The ``args`` Triton passes to initialize(), with the parameters of the model's config.pbtxt."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {"model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
            "model_repository": str(model_dir), "model_name": name, "model_version": "1",
            "model_instance_kind": "CPU", "model_instance_name": f"{name}_0"}


class Metric:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels, self._value = labels, 0.0

    def increment(self, value: float) -> None:
        if value < 0:
            raise ValueError("a counter cannot decrease")
        self._value += value

    def set(self, value: float) -> None:  # gauges
        self._value = value

    def value(self) -> float:
        return self._value


class MetricFamily:
    COUNTER, GAUGE = "COUNTER", "GAUGE"
    families: dict[str, MetricFamily] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        if kind not in (self.COUNTER, self.GAUGE):
            raise ValueError(f"unknown metric kind {kind!r}")
        self.name, self.description, self.kind, self.metrics = name, description, kind, []
        MetricFamily.families[name] = self

    def Metric(self, labels: dict[str, str]) -> Metric:  # noqa: N802 - the Python backend's spelling
        m = Metric(labels)
        self.metrics.append(m)
        return m
