"""The split layout: stages on two tritonservers, the cascade on a third, talking gRPC on loopback.

Asserts that it answers exactly as the single server does (the session ``server`` fixture), that a
stage server that stops degrades the cascade as specified (README, "Faults") and that the cascade
recovers when that server comes back; and the remote client's retry rule (UNAVAILABLE only).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from optistop.client.cascade import Answer, ask, make_client
from optistop.server.embedded import EmbeddedServer, free_port
from optistop.server.split import CASCADE_SERVER, SplitServer, build_split, default_layout
from optistop.serving.remote import RemoteError, RemoteTriton, RetryPolicy
from optistop.spec import load_spec
from optistop.tiny.tasks import generate_split
from tests.conftest import free_ports

SPEC = load_spec()
HARD = "4821+3777="
PROMPTS = [it.prompt for it in generate_split("test", 1, seed=11)]  # 12 prompts, every family and level
# (policy, lambda): the default, every fixed stage, and the paper's rule at lambda 0, which runs all three
CASES = [(None, None), ("fixed:0", None), ("fixed:1", None), ("fixed:2", None), ("paper", 0.0)]


class Split:
    def __init__(self, servers: list[SplitServer], workdir: Path) -> None:
        # stopping waits 5 s for the models to unload, then kills (as tests/conftest.py start_server)
        servers = [dataclasses.replace(s, config=dataclasses.replace(s.config, exit_timeout_s=5)) for s in servers]
        self.layout = {s.name: s for s in servers}
        self.running = {s.name: EmbeddedServer(s.config, log_path=workdir / f"{s.name}.log") for s in servers}

    def start(self, name: str) -> EmbeddedServer:
        srv = self.running[name] = EmbeddedServer(self.layout[name].config, log_path=self.running[name].log_path)
        srv.start()
        return srv

    @property
    def cascade_url(self) -> str:
        return self.layout[CASCADE_SERVER].config.grpc_url


@pytest.fixture(scope="module")
def split(tmp_path_factory, tiny_dir) -> Iterator[Split]:
    workdir = tmp_path_factory.mktemp("split")
    layout = default_layout(SPEC)
    names = [*layout, CASCADE_SERVER]
    free = iter(free_ports(3 * len(names)))
    ports = {n: (next(free), next(free), next(free)) for n in names}
    sp = Split(build_split(SPEC, workdir, ports, layout), workdir)
    try:
        for name in sp.layout:  # all three load at once; the cascade does not wait for its stages
            sp.start(name)
        for srv in sp.running.values():
            srv.wait_ready()
        yield sp
    finally:
        with ThreadPoolExecutor(len(sp.running)) as pool:   # all at once: each waits for its models to unload
            list(pool.map(lambda srv: srv.stop(), sp.running.values()))  # by process group of each server
        print(f"split logs: {workdir}")


def _key(a: Answer) -> tuple:
    return (a.text, a.stage, a.stage_model, a.stages_run, a.cost, a.degraded,
            [round(c, 4) for c in a.confidences], [None if t != t else round(t, 4) for t in a.thresholds])


def test_layout_puts_stages_and_predictor_on_other_servers(split) -> None:
    spec = load_spec(split.layout[CASCADE_SERVER].config.repository / "cascade" / "cascade_spec.toml")
    assert {s.url for s in spec.stages} == {split.layout[n].config.grpc_url for n in ("stages-a", "stages-b")}
    assert spec.predictor_url == split.layout["stages-a"].config.grpc_url
    assert sorted(p.name for p in split.layout[CASCADE_SERVER].config.repository.iterdir()) == ["cascade"]


def test_split_answers_exactly_as_the_single_server(split, server) -> None:
    single, remote = make_client(server.cfg.grpc_url), make_client(split.cascade_url)
    answers = []
    for policy, lam in CASES:
        for p in PROMPTS:
            a, b = ask(single, "grpc", p, policy=policy, lam=lam), ask(remote, "grpc", p, policy=policy, lam=lam)
            assert _key(a) == _key(b), (p, policy)
            answers.append(b)
    # the comparison went through every remote stage and the remote predictor, and escalated
    assert {a.stage for a in answers} == {0, 1, 2}
    assert any(a.stages_run == [0, 1, 2] for a in answers) and not any(a.degraded for a in answers)
    assert any(c > 0 for a in answers for c in a.confidences)


def test_stopped_stage_server_degrades_then_recovers(split, server) -> None:
    client = make_client(split.cascade_url)
    expected = ask(make_client(server.cfg.grpc_url), "grpc", HARD, policy="paper", lam=0.0)
    assert expected.stages_run == [0, 1, 2] and not expected.degraded
    b_url = split.layout["stages-b"].config.grpc_url
    split.running["stages-b"].stop()
    try:
        a = ask(client, "grpc", HARD, policy="paper", lam=0.0)
        # medium and large fail (paid for, escalated past); the best answer so far is the small stage's
        assert a.stages_run == [0, 1, 2] and a.stage == 0 and a.degraded
        assert f"stage 'stage_medium' at {b_url} failed: [StatusCode.UNAVAILABLE]" in a.degraded_reason
        assert f"stage 'stage_large' at {b_url} failed" in a.degraded_reason and "(3 attempts)" in a.degraded_reason
        assert a.cost == pytest.approx(15.5)
        with pytest.raises(InferenceServerException) as info:  # the caller asked for that stage
            ask(client, "grpc", HARD, policy="fixed:2")
        assert info.value.status() == "StatusCode.UNAVAILABLE" and "stage_large" in info.value.message()
        assert ask(client, "grpc", "R:hello=", policy="fixed:0").text == "olleh"  # stages-a still serves
    finally:
        split.start("stages-b").wait_ready()
    deadline = time.monotonic() + 15  # the channel reconnects within its 1 s backoff cap
    while True:
        a = ask(client, "grpc", HARD, policy="paper", lam=0.0)
        if not a.degraded or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert _key(a) == _key(expected)


def test_remote_client_retries_unavailable_only(split) -> None:
    feats = {"features": np.zeros((1, 64), dtype=np.float32)}
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: UNAVAILABLE, retried with backoff
    policy = RetryPolicy(attempts=3, backoff_s=0.1)
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as info:
        asyncio.run(RemoteTriton(closed, policy).infer("quality_predictor", feats, ["confidence"], 5.0))
    assert info.value.status == "StatusCode.UNAVAILABLE" and info.value.attempts == 3
    assert time.monotonic() - t0 >= 0.3  # 0.1 + 0.2 s of backoff
    a_url = split.layout["stages-a"].config.grpc_url
    with pytest.raises(RemoteError) as info:  # a model the server lacks fails the same way again: no retry
        asyncio.run(RemoteTriton(a_url, policy).infer("no_such_model", feats, ["confidence"], 5.0))
    assert info.value.attempts == 1 and info.value.status != "StatusCode.UNAVAILABLE"
