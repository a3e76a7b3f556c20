"""The cascade refuses to load, with one line saying why, when the repository cannot serve its spec."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from optistop.serving.cascade_service import CascadeService
from optistop.serving.tokenizers import PromptEncoder
from optistop.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"


@pytest.fixture()
def service(tiny_dir) -> CascadeService:
    spec = load_spec()
    return CascadeService(spec, PromptEncoder.for_spec(spec))


def test_the_committed_repository_passes(service: CascadeService) -> None:
    service.check_repository(REPO)


def test_missing_stage_model(service: CascadeService, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("stage_medium", "__pycache__"))
    with pytest.raises(SpecError, match=r"stages\[1\].triton_model: model 'stage_medium' is not in the repository"):
        service.check_repository(repo)


def test_stage_tokenizer_that_disagrees(service: CascadeService, tmp_path: Path) -> None:
    ckpt = tmp_path / "large"
    shutil.copytree(service.spec.stages[2].checkpoint, ckpt)
    data = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # same tokens, different ids
    (ckpt / "tokenizer.json").write_text(json.dumps(data))
    stages = service.spec.stages[:2] + (replace(service.spec.stages[2], checkpoint=ckpt),)
    bad = CascadeService(replace(service.spec, stages=stages), service.encoder)
    with pytest.raises(SpecError, match=r"stages\[2\].checkpoint: the tokenizer in .* differs"):
        bad.check_repository(REPO)


def test_predictor_sidecar_of_another_feature_version(service: CascadeService, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    sidecar = repo / "quality_predictor" / "1" / "model.json"
    data = json.loads(sidecar.read_text())
    data["feature_version"] = 999
    sidecar.write_text(json.dumps(data))
    with pytest.raises(SpecError, match=r"cascade.predictor_model: .*feature version 999"):
        service.check_repository(repo)


def test_a_calibration_of_another_family_is_refused(tmp_path: Path) -> None:
    """The chat family's predictor and policy installed under the tiny spec: one line, naming why."""
    from optistop.pipeline.repository import build_stages, install_serving_models

    tiny, chat = load_spec(ROOT / "cascade.toml"), load_spec(ROOT / "chat.toml")
    build_stages(tiny, tmp_path)
    install_serving_models(tiny, tmp_path, ROOT / "models" / "chat" / "predictor")
    svc = CascadeService(tiny, PromptEncoder.for_spec(tiny))
    with pytest.raises(SpecError) as info:
        svc.check_repository(tmp_path)
    msg = str(info.value)
    assert "calibrated for cascade 'chat'" in msg and "optistop calibrate" in msg and "\n" not in msg
    assert chat.stage_names == tiny.stage_names and chat.costs == tiny.costs  # names alone could not tell
