"""Fixtures shared by the e2e files: the OpenAI front end over one real tritonserver for the session.

The repository is a copy of model_repository where stage_large's streaming engine waits 50 ms per token
(so that tokens arriving one by one over time can be told from a buffered answer) and stage_medium, in
both variants, fails (so that "no living stage" has a request that meets it).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from optistop.serving.embedded import EmbeddedServer, ServerConfig, free_port
from tests.repos.paced_stage import install

OPENAI_TOKEN_DELAY_S = 0.05
ROOT = Path(__file__).resolve().parents[2]


def make_repo(tmp: Path, faults: dict[str, dict[str, object]]) -> Path:
    (tmp / "models").symlink_to(ROOT / "models")
    shutil.copy(ROOT / "cascade.toml", tmp / "cascade.toml")
    repo = tmp / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("__pycache__"))
    for model, params in faults.items():  # the test-only stage model: a real model's pace, faults
        install(repo / model, **params)
    return repo


@pytest.fixture(scope="session")
def api(tmp_path_factory, tiny_dir) -> Iterator[tuple[str, EmbeddedServer]]:
    import uvicorn

    from optistop.frontend.app import build_app

    tmp = tmp_path_factory.mktemp("openai")
    repo = make_repo(tmp, {"stage_large_stream": {"token_ms": int(OPENAI_TOKEN_DELAY_S * 1e3)},
                           "stage_medium": {"fault": "error"}, "stage_medium_stream": {"fault": "error"}})
    cfg = ServerConfig(repository=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with EmbeddedServer(cfg, log_path=tmp / "server.log") as srv:
        port = free_port()
        web = uvicorn.Server(uvicorn.Config(build_app(cfg.grpc_url, tmp / "cascade.toml"), host="127.0.0.1",
                                            port=port, log_level="warning"))
        thread = threading.Thread(target=web.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not web.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}/v1", srv
        finally:
            web.should_exit = True
            thread.join(10)


@pytest.fixture()
def client(api):
    import openai

    return openai.OpenAI(base_url=api[0], api_key="unused", max_retries=0, timeout=30)


