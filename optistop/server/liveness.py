"""Liveness apart from readiness: which backends are dead, which are wedged, which are only slow.

Kubernetes asks two questions of a pod and so does the supervisor (optistop/server/supervisor.py):

- **Readiness** (can it take traffic now?): a real, tiny inference per model (``health.probe``). It waits
  in the model's queue behind real work like any request and is never failed for waiting there: a real
  model busy decoding a batch answers it late, and that is no fault.
- **Liveness** (is it wedged?): progress, read from Triton's own statistics (one
  ``get_inference_statistics`` call for every model; no inference, so it never competes with real work):
  requests answered and batches executed. A model with work in flight (its readiness probe unanswered, or
  requests in Triton's queue) whose counters do not move for the wedge window is **wedged**. A slow model
  still finishes batches: it is **slow but progressing** and is left alone. A stub process that is gone
  (the supervisor's /proc scan), or a probe answered with "stub not healthy"/"not loaded", is **dead**.

The wedge window is ``max(wedge_s, floor_s, wedge_factor x the longest batch seen)``: a static floor, the
longest call the spec allows the model (its stage timeout; for the cascade the sum of its stages'), and a
multiple of the model's own measured batch time, so a model that takes 20 s a batch is given 80 s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from optistop import prometheus_text
from optistop.server.health import ModelHealth
from optistop.spec import SupervisorSpec as Timing

STUB_BINARY = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    region: str  # its shared-memory region in /dev/shm (the stub's second argument)


def stub_processes(server_pid: int) -> dict[int, Stub]:
    """Live backend stubs of ``server_pid`` (argv: stub, <repo>/<model>/<ver>/model.py, region); zombies
    (exited, not yet reaped) are not live. {} when the server itself is gone."""
    try:
        kids = psutil.Process(server_pid).children()
    except psutil.NoSuchProcess:
        return {}
    out: dict[int, Stub] = {}
    for k in kids:
        try:
            with k.oneshot():
                if k.status() == psutil.STATUS_ZOMBIE:
                    continue
                argv = k.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # gone while we looked
        if len(argv) > 2 and argv[0].endswith(STUB_BINARY):
            out[k.pid] = Stub(k.pid, Path(argv[1]).parts[-3], argv[2])
    return out


@dataclass(frozen=True)
class Progress:
    """One model's counters in Triton's statistics."""

    answered: int    # requests answered (success + failure)
    batches: int     # model executions
    busy_ns: int     # time spent in those executions (compute input + infer + output)


def progress_from_stats(response: Any) -> dict[str, Progress]:
    """model -> Progress from a tritonclient gRPC ``ModelStatisticsResponse`` (versions summed)."""
    out: dict[str, Progress] = {}
    for s in response.model_stats:
        st = s.inference_stats
        p = Progress(st.success.count + st.fail.count, s.execution_count,
                     st.compute_input.ns + st.compute_infer.ns + st.compute_output.ns)
        q = out.get(s.name)
        out[s.name] = p if q is None else Progress(q.answered + p.answered, q.batches + p.batches,
                                                   q.busy_ns + p.busy_ns)
    return out


PENDING = "nv_inference_pending_request_count"


def pending_from_metrics(text: str) -> dict[str, int]:
    """model -> requests waiting in Triton's queue, from its Prometheus text (``/metrics``), versions summed.
    Raises ValueError on text that is not Prometheus exposition."""
    out: dict[str, int] = {}
    for (name, labels), v in prometheus_text.samples(text, PENDING).items():
        model = dict(labels).get("model")
        if name == PENDING and model is not None:
            out[model] = out.get(model, 0) + int(v)
    return out


@dataclass(frozen=True)
class Verdict:
    model: str
    kind: str        # "dead" (recover), "wedged" (kill, then recover), "slow" (log only)
    text: str        # the log line's reason


@dataclass
class Watch:
    """What the supervisor knows of one model's progress. Times are ``time.monotonic()`` seconds."""

    model: str
    role: str
    floor_s: float = 0.0                 # the longest call the spec allows this model
    seen: Progress | None = None
    progress_at: float | None = None
    longest_batch_s: float = 0.0
    probe_since: float | None = None     # a readiness probe is unanswered since then
    stalled_since: float | None = None   # work in flight and no progress since then
    pending: int = 0
    slow_told: bool = False              # "slow but progressing" logged for the current probe
    last: ModelHealth | None = None      # the last answered readiness probe
    answered_since_probe: int = 0

    def window(self, t: Timing) -> float:
        return max(t.wedge_s, self.floor_s, t.wedge_factor * self.longest_batch_s)

    def observe(self, p: Progress, pending: int, now: float) -> bool:
        """Take one statistics reading; True when the model made progress since the last."""
        moved = self.seen is not None and (p.answered != self.seen.answered or p.batches != self.seen.batches)
        if moved and self.seen is not None:
            if p.batches > self.seen.batches:  # mean batch time since the last reading
                batch_s = (p.busy_ns - self.seen.busy_ns) / (p.batches - self.seen.batches) / 1e9
                self.longest_batch_s = max(self.longest_batch_s, batch_s)
            self.answered_since_probe += max(p.answered - self.seen.answered, 0)
            self.progress_at = now
        self.seen, self.pending = p, pending
        self._stall(now, moved)
        return moved

    def probe_sent(self, now: float) -> None:
        self.probe_since, self.slow_told, self.answered_since_probe = now, False, 0
        if self.stalled_since is None:
            self.stalled_since = now

    def probe_answered(self, health: ModelHealth, now: float) -> None:
        self.probe_since, self.last = None, health
        if not health.slow:   # an answer, even an error, is the backend alive and working
            self.progress_at = now
        self._stall(now, not health.slow)

    def _stall(self, now: float, moved: bool) -> None:
        busy = self.pending > 0 or self.probe_since is not None
        if not busy:
            self.stalled_since = None
        elif moved or self.stalled_since is None:
            self.stalled_since = now

    def judge(self, now: float, t: Timing) -> Verdict | None:
        """Wedged (no progress with work in flight for the window), slow (told once per probe), or None."""
        if self.stalled_since is not None and now - self.stalled_since >= self.window(t):
            in_flight = max(self.pending, 1 if self.probe_since is not None else 0)
            return Verdict(self.model, "wedged", f"no progress for {now - self.stalled_since:.0f} s with "
                           f"{in_flight} request{'s' * (in_flight != 1)} in flight "
                           f"(wedge window {self.window(t):.0f} s)")
        if (self.probe_since is not None and not self.slow_told and now - self.probe_since >= t.slow_s
                and self.progress_at is not None and self.progress_at > self.probe_since):
            self.slow_told = True
            return Verdict(self.model, "slow", f"readiness probe unanswered for {now - self.probe_since:.0f} s, "
                           f"{self.answered_since_probe} request(s) answered meanwhile, {self.pending} queued "
                           f"(wedge window {self.window(t):.0f} s)")
        return None

    def health(self, now: float, t: Timing) -> ModelHealth | None:
        """The last answer, with "busy" said when a probe has been waiting longer than ``slow_s``."""
        if self.last is None or self.probe_since is None or now - self.probe_since < t.slow_s:
            return self.last
        return ModelHealth(self.model, self.last.ok, self.last.ms,
                           f"{self.last.detail}; busy: probe waiting {now - self.probe_since:.0f} s behind real "
                           f"work, last progress {now - (self.progress_at or now):.0f} s ago", self.last.dead)


@dataclass
class Watches:
    """Every watched model, in the supervisor's order."""

    items: dict[str, Watch] = field(default_factory=dict)

    @classmethod
    def of(cls, models: dict[str, str], floors: dict[str, float] | None = None) -> Watches:
        return cls({m: Watch(m, role, (floors or {}).get(m, 0.0)) for m, role in models.items()})

    def __iter__(self):  # noqa: ANN204 - a plain iterator over the watches
        return iter(self.items.values())

    def observe(self, progress: dict[str, Progress], pending: dict[str, int], now: float) -> None:
        for w in self:
            if w.model in progress:
                w.observe(progress[w.model], pending.get(w.model, 0), now)

    def judge(self, now: float, t: Timing) -> list[Verdict]:
        return [v for w in self if (v := w.judge(now, t)) is not None]

    def reset(self, models: Iterable[str]) -> None:
        """A model was replaced (reload, restart): forget what was seen of the old instance."""
        for m in models:
            if m in self.items:
                old = self.items[m]
                self.items[m] = Watch(m, old.role, old.floor_s, longest_batch_s=old.longest_batch_s)
