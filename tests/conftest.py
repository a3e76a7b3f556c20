"""Shared fixtures and the test tiers. Tests run with one torch thread: the machine has two shared cores.

Tiers are folders; each test gets its folder's marker, so one tier runs alone with ``-m <tier>``
(``make test-unit`` ...): unit (package code, no server), contract (config.pbtxt / tensors / sidecar /
model.py against fake pb_utils / shell scripts), parity (ONNX vs torch), e2e (a real tritonserver).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "contract", "parity", "e2e")

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "tiny"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of the tier folders {TIERS}")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the locked environment
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    if not (TINY / "large" / "model.safetensors").exists():
        pytest.fail(f"tiny family missing under {TINY}; run `make models-train models-eval`")
    return TINY



@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path):
    """A real tritonserver on the project's model_repository, on free loopback ports."""
    from optistop.serving.embedded import EmbeddedServer, ServerConfig, free_port

    if not (ROOT / "model_repository" / "quality_predictor" / "1" / "model.onnx").exists():
        pytest.fail("model_repository/quality_predictor/1/model.onnx missing; run `make predictor`")
    cfg = ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    log = tmp_path_factory.mktemp("triton") / "server.log"
    srv = EmbeddedServer(cfg, log_path=log)
    with srv:
        yield srv
    # the whole log is kept in the tmp dir for post-mortems; print its path when a test fails
    print(f"tritonserver log: {log}")
