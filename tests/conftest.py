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
    """A real tritonserver on a temporary copy of the project's model_repository and cascade.toml, on free
    loopback ports. The copy's spec sets ``audit_rate = 0`` and an audit log in the copy: no test's requests
    are audited unless the test asks (the request's ``audit`` input), and a test that writes the served
    policy.json (``server.cfg.repository``) leaves the tracked files alone."""
    import shutil

    from optistop.serving.embedded import EmbeddedServer, ServerConfig, free_port

    if not (ROOT / "model_repository" / "quality_predictor" / "1" / "model.onnx").exists():
        pytest.fail("model_repository/quality_predictor/1/model.onnx missing; run `make predictor`")
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "models").symlink_to(ROOT / "models")
    spec = (ROOT / "cascade.toml").read_text(encoding="utf-8")
    if "\n[cascade]\n" not in "\n" + spec:
        pytest.fail("cascade.toml has no [cascade] table to set the test server's audit_rate in")
    (tmp / "cascade.toml").write_text(
        spec.replace("[cascade]\n", '[cascade]\naudit_rate = 0.0\naudit_log = "audit.jsonl"\n', 1), encoding="utf-8")
    shutil.copytree(ROOT / "model_repository", tmp / "model_repository",
                    ignore=shutil.ignore_patterns("__pycache__", "audit.jsonl*"))
    cfg = ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       repository=tmp / "model_repository")
    log = tmp_path_factory.mktemp("triton") / "server.log"
    srv = EmbeddedServer(cfg, log_path=log)
    with srv:
        yield srv
    # the whole log is kept in the tmp dir for post-mortems; print its path when a test fails
    print(f"tritonserver log: {log}")
