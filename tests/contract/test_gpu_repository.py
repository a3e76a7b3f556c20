"""Every GPU profile's rendered repository against the cascade's own load-time check
(CascadeService.from_spec_file + check_repository, what cascade/1/model.py runs in initialize()).

The GPU repository holds the stage models only until a calibration for that spec exists: served as
rendered, there is no cascade to fail at load; the embedded tiny family's predictor copied in (what
engines.sh once did) is refused; after `optistop calibrate --spec <profile> --out <repository>` on a
collected, labelled file (synthetic here: no GPU) the check passes on the cascade the calibration installed.
Checkpoints are stand-ins under a temporary directory laid out as the profile's paths expect (the chat
family's tokenizer, which has a chat template, in place of Qwen2.5's).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from optistop.pipeline import calibrate
from optistop.render import pbtxt
from optistop.render import repo as render
from optistop.serving.cascade_service import CascadeService
from optistop.spec import DEFAULT_SPEC, SpecError, load_spec
from tests.unit.test_predictor_pipeline import synthetic_records

ROOT = DEFAULT_SPEC.parent
PROFILES = {"qwen2.5-trtllm": "trtllm", "qwen2.5-llmapi": "llmapi", "tiny-trtllm": "trtllm"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json")


def lay_out(profile: Path, tmp: Path) -> Path:
    """The profile copied to tmp/build/, its ../checkpoints/<name> dirs filled with a tokenizer (the Qwen
    profiles) or the real tiny-trt family (its ../models/ paths made absolute)."""
    text = profile.read_text().replace('"../models/', f'"{ROOT}/models/')
    (tmp / "build").mkdir()
    for name in set(re.findall(r'"\.\./checkpoints/([^"]+)"', text)):
        d = tmp / "checkpoints" / name
        d.mkdir(parents=True)
        for f in TOKENIZER_FILES:
            shutil.copyfile(ROOT / "models" / "chat" / "small" / f, d / f)
    out = tmp / "build" / profile.name
    out.write_text(text)
    return out


def render_repo(profile: Path, kind: str, tmp: Path) -> Path:
    repo = tmp / "repo"
    args = ["--profile", kind, "--spec", str(profile), "--out", str(repo)]
    assert render.main(args + (["--engines-dir", str(tmp / "engines")] if kind == "trtllm" else [])) == 0
    return repo


def cascade_check(spec_path: Path, repo: Path) -> None:
    service = CascadeService.from_spec_file(spec_path)
    service.check_repository(repo)


def labelled(profile: Path, tmp: Path) -> Path:
    spec = load_spec(profile)
    records = synthetic_records({"val": 3, "test": 1}, seed=1)
    for r in records:
        for st, stage in zip(r["stages"], spec.stages, strict=True):
            assert (st["model"], st["cost"]) == (stage.name, stage.cost)
    path = tmp / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def quick_report(monkeypatch):
    """Skip only calibrate's cross-fitted report (a 5-fold refit of the policy, printed, not installed):
    the predictor, its sidecar and the installed policy artifact are fitted exactly as in a real run."""
    from optistop.offline import replay

    nan = float("nan")
    monkeypatch.setattr(replay, "kfold", lambda *a, **k: {"per": None})
    monkeypatch.setattr(replay, "summarise", lambda *a, **k: {"conditions": {
        "quality_rel": nan, "cost": nan, "cheapest_single_stage": nan, "router_cost": nan}})


@pytest.mark.parametrize("name", list(PROFILES))
def test_gpu_repository_loads_only_with_a_calibration_for_its_spec(name: str, tmp_path: Path, quick_report) -> None:
    profile = lay_out(ROOT / "build" / f"{name}.toml", tmp_path)
    repo = render_repo(profile, PROFILES[name], tmp_path)
    spec = load_spec(profile)
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    assert models == sorted(s.triton_model for s in spec.stages)          # stages only: nothing fails at load
    with pytest.raises(SpecError, match="predictor_model"):
        cascade_check(profile, repo)                                       # no calibration for this spec
    if name.startswith("qwen"):
        # the embedded tiny family's calibration (what --with-models used to copy) is not this spec's.
        # (tiny-trt shares the tiny family's tokenizer, stages and costs: the check cannot tell them apart)
        shutil.copytree(ROOT / "model_repository" / "quality_predictor", repo / "quality_predictor")
        with pytest.raises(SpecError, match="run `optistop calibrate` for this spec"):
            cascade_check(profile, repo)
        shutil.rmtree(repo / "quality_predictor")

    rc = calibrate.main([str(labelled(profile, tmp_path)), "--spec", str(profile), "--out", str(repo),
                         "--max-epochs", "2", "--replay-out", str(tmp_path / "scored.jsonl")])
    assert rc == 0
    spec_name = pbtxt.parameter(pbtxt.load(repo / "cascade" / "config.pbtxt"), "cascade_spec")
    installed = repo / "cascade" / spec_name
    assert load_spec(installed).stage_names == spec.stage_names
    cascade_check(installed, repo)                                         # what initialize() runs: passes
    policy = json.loads((repo / spec.predictor_model / "1" / "policy.json").read_text())
    assert policy["spec"] == spec.name
    if name == "tiny-trtllm":   # --scored: a new policy (other confidence) beside the same predictor
        version = repo / spec.predictor_model / "1"
        onnx = (version / "model.onnx").read_bytes()
        rc = calibrate.main([str(tmp_path / "labelled.jsonl"), "--spec", str(profile), "--out", str(repo),
                             "--scored", str(tmp_path / "scored.jsonl"), "--confidence", "0.8"])
        assert rc == 0
        refit = json.loads((version / "policy.json").read_text())
        assert refit["criterion"]["confidence"] == 0.8 and policy["criterion"]["confidence"] == 0.9
        assert refit["data_sha256"] == policy["data_sha256"] and (version / "model.onnx").read_bytes() == onnx
        cascade_check(installed, repo)
        # flags that only training reads are refused, not ignored
        with pytest.raises(SystemExit) as info:
            calibrate.main([str(tmp_path / "labelled.jsonl"), "--spec", str(profile), "--out", str(repo),
                            "--scored", str(tmp_path / "scored.jsonl"), "--max-epochs", "3"])
        assert info.value.code == 2
        # without an exported predictor there is nothing to refit beside: one line, exit 2
        assert calibrate.main([str(tmp_path / "labelled.jsonl"), "--spec", str(profile), "--out",
                               str(tmp_path / "empty"), "--scored", str(tmp_path / "scored.jsonl")]) == 2


def test_the_kubernetes_gpu_cascade_serves_a_calibration_from_the_volume_not_the_images() -> None:
    """The image's model_repository holds the tiny family's calibration, which the Qwen spec refuses."""
    yaml = pytest.importorskip("yaml")
    patch = yaml.safe_load((ROOT / "deploy" / "overlays" / "qwen2.5-gpu" / "cascade.yaml").read_text())
    cmd = patch["spec"]["template"]["spec"]["containers"][0]["command"]
    repo = cmd[cmd.index("--repository") + 1]
    assert repo.startswith("/engines/") and "/opt/optistop/model_repository" not in cmd
    assert cmd[cmd.index("--spec") + 1] == "/etc/optistop/cascade.toml"
    spec = load_spec(ROOT / "deploy" / "overlays" / "qwen2.5-gpu" / "cascade.toml", check_paths=False)
    assert spec.chat_template and spec.tokenizer.is_relative_to("/engines")


@pytest.mark.parametrize("name", ["qwen2.5-trtllm", "qwen2.5-llmapi"])
def test_streaming_renders_each_gpu_stage_s_decoupled_variant(name: str, tmp_path: Path) -> None:
    from optistop import tensors as T
    from tests.contract.test_pbtxt_contracts import assert_contract, parse

    profile, kind = ROOT / "build" / f"{name}.toml", PROFILES[name]
    repo = tmp_path / "repo"
    args = ["--profile", kind, "--spec", str(profile), "--out", str(repo), "--streaming"]
    assert render.main(args + (["--engines-dir", str(tmp_path / "e")] if kind == "trtllm" else [])) == 0
    spec = load_spec(profile, check_paths=False)
    for stage in spec.stages:
        plain, stream = parse(repo / stage.triton_model / "config.pbtxt"), \
            parse(repo / f"{stage.triton_model}_stream" / "config.pbtxt")
        assert_contract(stream, T.STAGE_STREAM, stage.triton_model)
        assert stream.model_transaction_policy.decoupled and not plain.model_transaction_policy.decoupled
        assert stream.backend == plain.backend and stream.parameters == plain.parameters   # same engine / GPUs
    assert not (tmp_path / "plain").exists()
    assert render.main(["--profile", kind, "--spec", str(profile), "--out", str(tmp_path / "plain")]
                       + (["--engines-dir", str(tmp_path / "e")] if kind == "trtllm" else [])) == 0
    assert not list((tmp_path / "plain").glob("*_stream"))                  # off by default
