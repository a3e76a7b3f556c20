"""Draining a supervised server on SIGTERM (optistop/server/supervisor.py), within ``--drain-timeout``.

1. /healthz turns 503 (``sup.draining``) so a load balancer stops sending;
2. the entry model (cascade) is unloaded: new requests are refused at once while Triton lets the in-flight
   ones finish, the stages still loaded for them (SIGTERM to tritonserver alone refuses the cascade's own
   BLS calls to the stages too: an in-flight request that still needed a stage failed, measured);
3. tritonserver gets SIGTERM and unloads the rest. After a reload of a killed backend it would wait out its
   whole exit timeout for the dead instance and exit 1; once every backend process has exited, it is ended.
"""

from __future__ import annotations

import logging
import signal
import time
import urllib.error
from typing import TYPE_CHECKING

from optistop.server.embedded import ServerError
from optistop.server.liveness import stub_processes

if TYPE_CHECKING:
    from optistop.server.supervisor import Supervisor

log = logging.getLogger("optistop.supervisor")


def drain(sup: Supervisor) -> int | None:
    """Steps 1-3 above within ``exit_timeout_s``; tritonserver's exit code (0 when it stopped cleanly)."""
    sup.draining = True
    budget = sup.server.cfg.exit_timeout_s
    log.warning("draining: in-flight requests have %ss to finish", budget)
    deadline = time.monotonic() + budget
    entry = [m for m, role in sup.models.items() if role == "cascade"]
    proc = sup.server.proc
    if proc is not None and proc.poll() is None:
        for model in entry:
            try:
                sup._control(model, "unload", timeout=budget)
            except (OSError, urllib.error.URLError, ServerError) as exc:
                log.error("unload of '%s' for the drain failed: %s", model, exc)
        while time.monotonic() < deadline and any(
                s.model in entry for s in stub_processes(proc.pid).values()):
            time.sleep(0.1)  # its stub exits once its in-flight requests are answered
    return _stop_server(sup, deadline)


def _stop_server(sup: Supervisor, deadline: float) -> int | None:
    """SIGTERM to tritonserver: it waits for in-flight requests, unloads every model and exits. After a
    reload of a killed backend, tritonserver 2.51 still counts the dead instance as a live model and
    waits out its whole exit timeout for it, then exits 1 (measured). So once every backend process
    has exited for 2 s (it checks once a second), nothing real is left: the server is ended, cleanly."""
    proc = sup.server.proc
    if proc is None or proc.poll() is not None:
        return sup.server.stop(timeout=0)
    phantoms = sum(n for (_, action), n in sup.recoveries.items() if action == "reload")
    if not phantoms or not all(sup._want[m] for m in sup.models):
        # nothing left behind, or a backend that is no Python stub (TensorRT-LLM): Triton's own exit
        return sup.server.stop(timeout=max(deadline - time.monotonic(), 0) + 10)
    proc.send_signal(signal.SIGTERM)
    quiet_since: float | None = None
    while proc.poll() is None and time.monotonic() < deadline + 10:
        if stub_processes(proc.pid):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 2.0:
            log.warning("every backend has stopped; tritonserver still waits for models it never releases "
                        "(%d reloaded after a kill): ending it", phantoms)
            sup.server.stop(timeout=0)
            return 0
        time.sleep(0.1)
    return sup.server.stop(timeout=max(deadline - time.monotonic(), 0) + 10)
