"""optistop.render.repo: committed CPU configs equal what render produces; GPU profiles render and validate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from optistop.render import pbtxt
from optistop.render import repo as render
from optistop.spec import DEFAULT_SPEC, SpecError, load_spec
from optistop.tensors import STAGE

ROOT = DEFAULT_SPEC.parent
GPU_PROFILES = sorted((ROOT / "build").glob("*-trtllm.toml"))


def test_committed_cpu_configs_are_rendered_not_hand_edited() -> None:
    spec = load_spec(DEFAULT_SPEC, check_paths=False)
    rendered = render.render_all(spec, profile="cpu", repo=ROOT / "model_repository")
    names = [s.triton_model for s in spec.stages]
    assert [r.path.parent.name for r in rendered] == names + [f"{n}_stream" for n in names]
    for r in rendered:
        assert r.path.exists(), f"{r.path} missing; run python -m optistop.render.repo"
        assert r.path.read_text() == r.text, f"{r.path} is hand-edited; run python -m optistop.render.repo"


def test_check_mode_flags_a_hand_edit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert render.main(["--spec", str(DEFAULT_SPEC), "--repo", str(repo)]) == 0
    assert render.main(["--spec", str(DEFAULT_SPEC), "--repo", str(repo), "--check"]) == 0
    cfg = repo / "stage_small" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    assert render.main(["--spec", str(DEFAULT_SPEC), "--repo", str(repo), "--check"]) == 1


def test_cpu_checkpoint_dir_is_relative_to_the_model_dir(tmp_path: Path) -> None:
    spec = load_spec(DEFAULT_SPEC, check_paths=False)
    for repo in (ROOT / "model_repository", tmp_path / "elsewhere" / "repo"):
        for r in render.render_all(spec, profile="cpu", repo=repo):
            rel = pbtxt.parameter(pbtxt.parse(r.text), "checkpoint_dir")
            assert rel, r.text
            assert not Path(rel).is_absolute()
            assert (r.path.parent / rel).resolve() == r.stage.checkpoint


def test_one_template_serves_both_profiles(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "build" / "tiny-trtllm.toml", check_paths=False)
    trt = render.load_trtllm_settings(spec.source)
    stage = spec.stages[0]
    cpu = render.render_stage(spec, stage, profile="cpu", repo=tmp_path)
    gpu = render.render_stage(spec, stage, profile="trtllm", repo=tmp_path, engines_dir=tmp_path, trt=trt)
    c, g = pbtxt.parse(cpu.text), pbtxt.parse(gpu.text)
    # same skeleton (name, tensors, batching, instances, parameters), different values
    fields = lambda cfg: [f.name for f, _ in cfg.ListFields()]
    assert fields(c) == [f for f in fields(g) if f != "model_transaction_policy"]
    assert {"name", "backend", "max_batch_size", "input", "output", "dynamic_batching", "instance_group",
            "parameters"} == set(fields(c))
    assert [t.name for t in c.input] == [t.name for t in g.input] == [t.name for t in STAGE.inputs]
    assert (c.backend, g.backend) == ("python", "tensorrtllm")
    # the GPU stage says it is not decoupled (the cascade calls it so); the CPU one leaves Triton's default
    assert g.HasField("model_transaction_policy") and not g.model_transaction_policy.decoupled
    assert not c.HasField("model_transaction_policy")
    for r in (cpu, gpu):
        assert r.text.startswith("# Rendered by `python -m optistop.render.repo` from build/tiny-trtllm.toml")


def test_unknown_stage_and_profile_errors_name_the_choices(tmp_path: Path, capsys) -> None:
    assert render.main(["--repo", str(tmp_path), "--stage", "huge"]) == 2
    assert "stages are small, medium, large" in capsys.readouterr().err
    spec = load_spec(DEFAULT_SPEC, check_paths=False)
    with pytest.raises(SpecError, match="profiles are cpu, trtllm"):
        render.render_stage(spec, spec.stages[0], profile="onnx", repo=tmp_path)


@pytest.mark.parametrize("profile", GPU_PROFILES, ids=lambda p: p.name)
def test_gpu_profile_plan_lists_every_stage(profile: Path, tmp_path: Path, capsys) -> None:
    spec = load_spec(profile, check_paths=False)
    engines = tmp_path / "engines"
    assert render.main(["--profile", "trtllm", "--spec", str(profile), "--engines-dir", str(engines),
                        "--model-dir", str(tmp_path / "hf"), "--plan"]) == 0
    rows = [dict(zip(render.PLAN_COLUMNS, line.split("\t"), strict=True))
            for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(spec.stage_names)
    for row, stage in zip(rows, spec.stages, strict=True):
        assert row["tp"] == str(stage.tp_size)
        assert row["gpus"] == ",".join(map(str, stage.gpu_ids))
        assert row["engine_dir"] == f"{engines}/{stage.name}-tp{stage.tp_size}"
        assert row["ckpt_dir"] == f"{engines}/trtllm_checkpoints/{stage.name}-tp{stage.tp_size}"
        assert row["hf_dir"] == str(tmp_path / "hf" / stage.checkpoint.name)   # --model-dir rebases
        assert all(v for v in row.values()), row                                # "-" marks empty


def test_resolved_spec_round_trips(tmp_path: Path) -> None:
    for profile in [DEFAULT_SPEC, *GPU_PROFILES]:
        spec = load_spec(profile, check_paths=False)
        out = tmp_path / f"{profile.stem}.toml"
        out.write_text(render.spec_toml(render.rebase_checkpoints(spec, tmp_path / "hf")))
        again = load_spec(out, check_paths=False)
        assert again == render.rebase_checkpoints(spec, tmp_path / "hf")
        assert again.tokenizer == tmp_path / "hf" / spec.tokenizer.name


def test_trtllm_table_errors_are_one_line_and_name_the_field(tmp_path: Path) -> None:
    base = (ROOT / "build" / "tiny-trtllm.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(base + "\n[trtllm.stages.huge]\nmax_batch_size = 4\n")
    with pytest.raises(SpecError, match=r"trtllm\.stages\.huge: no such stage"):
        render.load_trtllm_settings(bad)
    bad.write_text(base.replace("[trtllm]", "[trtllm]\nweight_only = \"int3\""))
    with pytest.raises(SpecError, match=r"trtllm\.weight_only: must be one of"):
        render.load_trtllm_settings(bad)
    bad.write_text(base.replace("max_input_len = 63", "max_input_len = 48"))
    with pytest.raises(SpecError, match=r"stage small: max_input_len=48.*max_context_tokens=64"):
        render.load_trtllm_settings(bad)
    bad.write_text(base.replace("[trtllm]", "[trtllm]\nmax_batch_sise = 3"))
    with pytest.raises(SpecError, match=r"trtllm\.max_batch_sise: unknown key"):
        render.load_trtllm_settings(bad)


def test_a_checkpoint_path_with_quotes_and_newlines_survives_rendering(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "build" / "tiny-trtllm.toml", check_paths=False)
    trt = render.load_trtllm_settings(spec.source)
    odd = tmp_path / 'dir "with" quotes\\and backslash\nand a newline'
    stage = dataclasses.replace(spec.stages[0], checkpoint=odd)
    cpu = pbtxt.parse(render.render_stage(spec, stage, profile="cpu", repo=tmp_path / "repo").text)
    assert (tmp_path / "repo" / stage.triton_model / pbtxt.parameter(cpu, "checkpoint_dir")).resolve() == odd
    gpu = render.render_stage(spec, stage, profile="trtllm", repo=tmp_path, engines_dir=tmp_path, trt=trt)
    assert pbtxt.parameter(pbtxt.parse(gpu.text), "tokenizer_dir") == str(odd)
