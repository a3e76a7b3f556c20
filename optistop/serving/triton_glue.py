"""Small helpers shared by the model.py files: reading a request's inputs and building responses, and
a stage model's whole ``execute`` (plain and decoupled), shared by model_repository/ and the test stages.

Imported only inside the Triton Python backend (``pb_utils`` is passed in, never imported here), so
the package stays importable without Triton.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optistop.serving.request import RequestError

# The watchdog beside each backend process: POSIX sh builtins only (read, test) but for one `sleep` per poll.
# It ends when the process it watches ends, and kills it once that process has a new parent.
_WATCHDOG = ("while :; do [ -e /proc/{me} ] || exit 0; read -r _ _ _ ppid _ < /proc/{me}/stat || exit 0; "
             "[ \"$ppid\" = {parent} ] || break; sleep {poll}; done; kill -9 {me} 2>/dev/null")


def exit_with_parent(poll_s: float = 0.5) -> threading.Thread:
    """End this backend process as soon as tritonserver is gone (its parent pid changes: reparented).

    The stub's own check of its parent ends it through the model's finalize and the interpreter's exit,
    which in the cascade's process did not return: after kill -9 of `optistop serve` (tritonserver dies
    with it) the cascade stub stayed asleep, reparented to pid 1, while every other stub exited
    (tests/e2e/test_lifecycle_e2e.py). Nothing is left to flush or answer once the server is gone.

    Two watchers: a Python thread (exits at once when the interpreter is free) and a tiny sh process that
    kills this one from outside. The second is needed because a stub whose server died mid-request waits
    in C++ (the response's completion) holding the GIL: the thread can then never run, and such stubs
    were found asleep for hours, every thread parked on the GIL (gdb)."""
    parent, me = os.getppid(), os.getpid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    # polls at most once a second: one `sleep` process per poll per stub, nine stubs in the embedded server
    subprocess.Popen(["sh", "-c", _WATCHDOG.format(me=me, parent=parent, poll=max(poll_s, 1.0))],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     close_fds=True)
    thread = threading.Thread(target=watch, name="optistop-exit-with-parent", daemon=True)
    thread.start()
    return thread


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


def _batch_failed(pb_utils: Any, name: str, n: int) -> list[RequestError]:
    """From an ``except`` block around a stage engine's batch: the traceback into the log, a plain error
    for each of the ``n`` requests."""
    log_failure(pb_utils, f"{name}: stage batch failed")
    return [RequestError("stage engine failed on this batch; see server log", code="INTERNAL")] * n


def serve_stage(pb_utils: Any, name: str, requests: list[Any], inputs: list[str],
                run: Callable[[list[dict[str, np.ndarray | None]]], Sequence[dict[str, np.ndarray] | RequestError]],
                ) -> list[Any]:
    """A stage model's ``execute``: one response per request from ``run`` (a stage engine's ``run``) over
    the requests' ``inputs``; a bad request fails alone, a failing batch answers each request plainly."""
    batch = [read_inputs(pb_utils, r, inputs) for r in requests]
    try:
        results = run(batch)
    except Exception:  # the whole batch failed: traceback to the log, a plain error to each request
        results = _batch_failed(pb_utils, name, len(requests))
    return [error_response(pb_utils, r) if isinstance(r, RequestError) else response(pb_utils, r)
            for r in results]


def serve_stage_stream(pb_utils: Any, name: str, requests: list[Any], inputs: list[str],
                       run_streaming: Callable[[list[dict[str, np.ndarray | None]],
                                                Callable[[int, dict[str, np.ndarray]], bool]],
                                               Sequence[RequestError | None]]) -> None:
    """A decoupled stage model's ``execute``: ``run_streaming`` (a stage engine's) sends each token in
    its own response as it is chosen and stops decoding for a request its caller cancelled; then every
    request gets its final flag, with its error if it failed."""
    senders = [r.get_response_sender() for r in requests]

    def emit(i: int, tensors: dict[str, np.ndarray]) -> bool:
        if senders[i].is_cancelled():   # the caller went away: stop decoding for it
            pb_utils.Logger.log_info(f"{name}: request cancelled; decoding stopped")
            return False
        senders[i].send(response(pb_utils, tensors))
        return True

    results: Sequence[RequestError | None]
    try:
        results = run_streaming([read_inputs(pb_utils, r, inputs) for r in requests], emit)
    except Exception:  # the whole batch failed: traceback to the log, a plain error to each request
        results = _batch_failed(pb_utils, name, len(requests))
    final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    for sender, res in zip(senders, results):
        if isinstance(res, RequestError):
            sender.send(error_response(pb_utils, res), flags=final)
        else:
            sender.send(flags=final)
