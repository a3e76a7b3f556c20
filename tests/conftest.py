"""Shared fixtures. Tests run with one torch thread: the machine has two shared cores."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "tiny"


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
