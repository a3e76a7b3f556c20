"""Test-only: the production stage engine at a real model's speed, with faults injected on purpose.

Wraps ``optistop.engines.stage.StageEngine`` unchanged (the production engine knows nothing of tests) and
adds, from the test repository's config.pbtxt parameters (all optional, all strings):

- ``prefill_ms``: slept once per batch before the first token (a real model's prompt pass);
- ``token_ms``: slept once per decode step of a batch (the rows of a batch share each step, as they do
  on a real engine: a batch of 8 costs about what one request costs);
- ``fault``: ``error`` (every batch raises), ``empty`` (no tokens), ``hang_on_token:<id>`` (a batch
  holding a request whose input ids contain ``<id>`` never returns: a wedged backend, for the supervisor).

The tiny family decodes a token in about a millisecond; a real 0.5B-7B model on a CPU takes 50-300 ms a
token, so ``token_ms`` of that size makes requests take seconds, as they do in production. Installed over a
stage's model.py by ``tests/repos/paced_stage.py`` (``install``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from optistop import tensors as T
from optistop.engines.runner import Generated
from optistop.engines.stage import to_tensors

# the one sleep the pace goes through: a test replaces this name, not time.sleep for every thread of the
# process (a background thread polling with time.sleep would spin and flood the recorded list)
sleep = time.sleep

FAULTS = ("error", "empty", "hang_on_token:<id>")
PARAMETERS = ("prefill_ms", "token_ms", "fault")


class PacedEngine:
    def __init__(self, engine: Any, params: Mapping[str, str]) -> None:
        unknown = sorted(k for k in params if k not in PARAMETERS)
        if unknown:
            raise ValueError(f"paced stage: unknown parameter(s) {unknown}; valid: {', '.join(PARAMETERS)}")
        self.engine = engine
        self.prefill_s = float(params.get("prefill_ms", "0")) / 1e3
        self.token_s = float(params.get("token_ms", "0")) / 1e3
        fault = params.get("fault", "")
        self.hang_token: int | None = None
        if fault.startswith("hang_on_token:"):
            self.hang_token = int(fault.split(":", 1)[1])
        elif fault not in ("", "error", "empty"):
            raise ValueError(f"paced stage: fault {fault!r} is not one of {', '.join(FAULTS)}")
        self.fault = fault

    def __getattr__(self, name: str) -> Any:  # .model, .parse, ... of the wrapped engine
        return getattr(self.engine, name)

    def _before(self, batch: Sequence[Mapping[str, np.ndarray | None]]) -> None:
        if self.fault == "error":
            raise RuntimeError("injected fault: error")
        if self.hang_token is not None and any(
                inp.get(T.INPUT_IDS) is not None and self.hang_token in np.asarray(inp[T.INPUT_IDS]).reshape(-1)
                for inp in batch):
            threading.Event().wait()  # wedged for good: only a kill ends this process
        sleep(self.prefill_s)

    def run(self, batch: Sequence[Mapping[str, np.ndarray | None]], *args: Any, **kw: Any) -> list[Any]:
        self._before(batch)
        results = self.engine.run(batch, *args, **kw)
        steps = 0
        for i, r in enumerate(results):
            if isinstance(r, dict):
                steps = max(steps, int(np.asarray(r[T.SEQUENCE_LENGTH]).reshape(-1)[0]))
                if self.fault == "empty":
                    results[i] = to_tensors(Generated((), (), False))
        sleep(self.token_s * steps)  # the decode steps a real engine would have spent on this batch
        return results

    def run_streaming(self, batch: Sequence[Mapping[str, np.ndarray | None]],
                      emit: Callable[[int, dict[str, np.ndarray]], bool], *args: Any, **kw: Any) -> list[Any]:
        self._before(batch)
        sent: dict[int, int] = {}
        steps = [0]

        def paced(i: int, tensors: dict[str, np.ndarray]) -> bool:
            if self.fault == "empty":
                return False  # stops that request's decoding: it ends with no tokens
            sent[i] = sent.get(i, 0) + 1
            if sent[i] > steps[0]:  # the first request to reach a new step pays for it
                steps[0] = sent[i]
                sleep(self.token_s)
            return emit(i, tensors)

        return self.engine.run_streaming(batch, paced, *args, **kw)
