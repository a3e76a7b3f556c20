"""Real-model speed with the supervisor on (issue 23). The tiny family is slowed to a real model's pace on
a CPU (seconds per request: a prompt pass per batch, then 100-200 ms a decode step) by the test-only stage
model tests/repos/paced_stage.py, and served by the real `optistop serve` (supervised, default timing)
on a repository holding only the models used, plus ``stage_wedge``, a variant that never returns a batch
holding token 0 (a wedged backend; the wedge window is cut to 4 s by flag so the test is short).
One server for the module; in order:

1. ``optistop collect`` at default settings records 0 stage errors;
2. the calibrated cascade under two concurrent clients answers every request, none degraded;
3. kill -9 of a stage's backend is healed within 10 s plus that stage's load (reload) time;
4. the wedged model is killed and reloaded, the log saying "wedged: no progress for N s with M requests
   in flight"; no paced stage was ever judged wedged (slow ones are logged "slow but progressing");
5. SIGTERM after those recoveries: exit 0 within the drain time.

Short by default (8 prompts: one batch per stage; 2 x 2 requests); ``make real-speed`` runs the full version
(OPTISTOP_REAL_SPEED=full: 100 prompts, 2 x 50 requests) and prints its figures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from optistop import prometheus_text
from optistop.reliability.chaos import _children, _get
from optistop.render import pbtxt
from optistop.server.embedded import free_port
from optistop.server.supervisor import stub_processes
from tests.repos.paced_stage import install

ROOT = Path(__file__).resolve().parents[2]
FULL = os.environ.get("OPTISTOP_REAL_SPEED") == "full"
PROMPTS, REQUESTS_PER_CLIENT = (100, 50) if FULL else (4, 2)   # short: every stage paced, still seconds
# (prefill ms per batch, ms per decode step): a 0.5B-7B model on a few CPU cores; every request takes seconds
PACE = {"stage_small": (1000, 100), "stage_medium": (1500, 150), "stage_large": (2000, 200)}
WEDGE_AFTER_S, DRAIN_S, HANG_TOKEN = 4, 20, 0   # <pad>: in no encoded prompt, nor in the probe (1, 2, 3)
MODELS = ("cascade", "quality_predictor", *PACE)


@dataclass
class Served:
    proc: subprocess.Popen
    grpc: str
    sup: str
    log: Path
    tmp: Path

    def metric(self, name: str, **labels: str) -> float:
        """The supervisor's sample ``name`` with exactly these labels; 0.0 when not exported yet."""
        return prometheus_text.value(prometheus_text.samples(_get(self.sup + "/metrics")[1], name), name, **labels)

    def wait_healthy(self, timeout_s: float, recovered: tuple[str, int] | None = None) -> float:
        """Seconds until /healthz is 200 (and ``recovered`` = (model, n) reloads are counted)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            assert self.proc.poll() is None, f"optistop serve exited; log {self.log}"
            if _get(self.sup + "/healthz")[0] == 200 and (
                    recovered is None or self.metric("optistop_supervisor_recoveries_total", model=recovered[0],
                                                     action="reload") >= recovered[1]):
                return time.monotonic() - t0
            time.sleep(0.2)
        raise AssertionError(f"not healthy within {timeout_s:.0f}s: {_get(self.sup + '/healthz')[1]}; log {self.log}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dir) -> Iterator[Served]:
    from optistop.server.split import subset_repository
    from optistop.spec import load_spec

    tmp = tmp_path_factory.mktemp("real_speed")
    repo = subset_repository(ROOT / "model_repository", list(MODELS), tmp / "model_repository", load_spec())
    wedge = repo / "stage_wedge"  # not in the spec: watched like any model of the repository, no spec floor
    shutil.copytree(repo / "stage_small", wedge)
    pbtxt.edit(wedge / "config.pbtxt", name="stage_wedge")
    install(wedge, fault=f"hang_on_token:{HANG_TOKEN}")
    for model, (prefill, step) in PACE.items():
        install(repo / model, prefill_ms=prefill, token_ms=step)
    ports = {k: free_port() for k in ("http", "grpc", "metrics", "supervisor")}
    log = tmp / "serve.log"
    cmd = [sys.executable, "-m", "optistop.cli", "serve", "--repository", str(repo),
           *(f"--{k}-port={v}" for k, v in ports.items()), f"--drain-timeout={DRAIN_S}",
           f"--wedge-after={WEDGE_AFTER_S}"]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    srv = Served(proc, f"127.0.0.1:{ports['grpc']}", f"http://127.0.0.1:{ports['supervisor']}", log, tmp)
    try:
        srv.wait_healthy(300)
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        print(f"optistop serve log: {log}")


def test_collect_at_default_settings_records_no_errors(served) -> None:
    from optistop.tiny.tasks import generate_split

    prompts = served.tmp / "prompts.jsonl"
    items = generate_split("test", PROMPTS // 12 + 1, seed=11)[:PROMPTS]
    prompts.write_text("".join(json.dumps({"id": i, "prompt": it.prompt}) + "\n" for i, it in enumerate(items)))
    out = served.tmp / "replay.jsonl"
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "optistop.cli", "collect", "--prompts", str(prompts),
                          "--url", served.grpc, "--out", str(out)], capture_output=True, text=True, timeout=900)
    took = time.monotonic() - t0
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(records) == PROMPTS
    errors = [st["error"] for r in records for st in r["stages"] if "error" in st]
    assert not errors, errors[:3]
    lat = {m: [st["latency_ms"] / 1e3 for r in records for st in r["stages"] if st["model"] == m]
           for m in ("small", "medium", "large")}
    assert min(lat["large"]) >= PACE["stage_large"][0] / 1e3  # it really ran at real-model pace
    print(f"\ncollect {PROMPTS} prompts: {took:.1f} s, 0 errors; stage call seconds mean/max: "
          + ", ".join(f"{m} {statistics.mean(v):.1f}/{max(v):.1f}" for m, v in lat.items()))


def test_cascade_under_two_clients_answers_every_request(served) -> None:
    from optistop.client.cascade import ask, make_client
    from optistop.tiny.tasks import generate_split

    prompts = [it.prompt for it in generate_split("test", REQUESTS_PER_CLIENT, seed=12)][:2 * REQUESTS_PER_CLIENT]

    def client(w: int) -> list[tuple[float, object]]:
        c, out = make_client(served.grpc), []
        for p in prompts[w::2]:
            t0 = time.monotonic()
            try:
                a: object = ask(c, "grpc", p)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                a = exc
            out.append((time.monotonic() - t0, a))
        return out

    with ThreadPoolExecutor(2) as pool:
        results = [r for f in [pool.submit(client, w) for w in range(2)] for r in f.result()]
    failed = [a for _, a in results if isinstance(a, Exception)]
    assert len(results) == 2 * REQUESTS_PER_CLIENT and not failed, failed[:3]
    degraded = [a.degraded_reason for _, a in results if a.degraded]
    assert not degraded, degraded[:3]
    secs = [t for t, _ in results]
    print(f"\ncascade, 2 clients: {len(results)}/{len(results)} answered, 0 degraded; seconds per request "
          f"p50 {statistics.median(secs):.1f}, max {max(secs):.1f}")


def test_kill_9_of_a_stage_heals_within_10s_plus_its_load_time(served) -> None:
    (server,) = [p for p, _, argv in _children(served.proc.pid) if argv.endswith("tritonserver")]
    (stub,) = [s.pid for s in stub_processes(server).values() if s.model == "stage_large"]
    os.kill(stub, signal.SIGKILL)
    healed = served.wait_healthy(120, recovered=("stage_large", 1))
    load_s = served.metric("optistop_supervisor_recovery_seconds_total", model="stage_large")
    assert 0 < load_s and healed <= 10 + load_s, (healed, load_s)
    assert "model 'stage_large' dead: process gone" in served.log.read_text()
    print(f"\nkill -9 stage_large: healthy again after {healed:.1f} s (its reload took {load_s:.1f} s)")


def test_a_wedged_model_is_killed_and_reloaded_slow_ones_are_not(served) -> None:
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    from optistop import tensors as T

    inputs = []
    for name, arr in ((T.INPUT_IDS, np.array([[4, HANG_TOKEN, 5]], np.int32)),
                      (T.INPUT_LENGTHS, np.array([[3]], np.int32)), (T.REQUEST_OUTPUT_LEN, np.array([[2]], np.int32))):
        inputs.append(grpc.InferInput(name, list(arr.shape), "INT32"))
        inputs[-1].set_data_from_numpy(arr)
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as info:  # answered with an error once it is killed
        grpc.InferenceServerClient(served.grpc).infer("stage_wedge", inputs, client_timeout=90)
    took = time.monotonic() - t0
    assert "DEADLINE" not in str(info.value.status()), "the wedged request was never ended"
    served.wait_healthy(120, recovered=("stage_wedge", 1))
    text = served.log.read_text()
    m = re.search(r"model 'stage_wedge' wedged: no progress for (\d+) s with (\d+) requests? in flight", text)
    assert m and int(m.group(1)) >= WEDGE_AFTER_S and int(m.group(2)) >= 1, text[-3000:]
    assert took < WEDGE_AFTER_S + 30
    for model in PACE:  # the paced stages were slow, never wedged: no kill but the one kill -9 above
        assert served.metric("optistop_supervisor_verdicts_total", model=model, verdict="wedged") == 0
    assert served.metric("optistop_supervisor_recoveries_total", model="stage_small", action="reload") == 0
    assert served.metric("optistop_supervisor_recoveries_total", model="cascade", action="reload") == 0
    slow = {m: served.metric("optistop_supervisor_verdicts_total", model=m, verdict="slow") for m in PACE}
    print(f"\nwedged stage_wedge: request ended after {took:.1f} s ({m.group(0)}); "
          f"'slow but progressing' verdicts (not killed): {slow}")


def test_shutdown_after_recoveries_exits_0_within_the_drain_time(served) -> None:
    t0 = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    code = served.proc.wait(DRAIN_S + 30)
    took = time.monotonic() - t0
    assert code == 0, served.log.read_text()[-3000:]
    assert took <= DRAIN_S + 10
    print(f"\nSIGTERM after 2 recoveries: exit 0 in {took:.1f} s (drain budget {DRAIN_S} s)")
