"""Fixtures shared by the e2e files: the OpenAI front end, in this process, over the session
``fault_server`` of tests/conftest.py (no server of its own), whose plain models are the front end's world:
stage_large_stream waits OPENAI_TOKEN_DELAY_S per token, stage_medium and stage_medium_stream fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from optistop.server.embedded import EmbeddedServer, free_port
from tests.conftest import TOKEN_DELAY_S as OPENAI_TOKEN_DELAY_S

__all__ = ["OPENAI_TOKEN_DELAY_S"]


@pytest.fixture(scope="session")
def api(fault_server) -> Iterator[tuple[str, EmbeddedServer]]:
    import uvicorn

    from optistop.frontend.app import build_app

    port = free_port()
    spec = fault_server.cfg.repository.parent / "cascade.toml"
    web = uvicorn.Server(uvicorn.Config(build_app(fault_server.cfg.grpc_url, spec), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", fault_server
    finally:
        web.should_exit = True
        thread.join(10)


@pytest.fixture()
def client(api):
    import openai

    return openai.OpenAI(base_url=api[0], api_key="unused", max_retries=0, timeout=30)
