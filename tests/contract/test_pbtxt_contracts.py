"""Every config.pbtxt parses with Triton's model-config schema and keeps the optistop.tensors contracts.

Covers the committed repository (CPU profile) and GPU repositories rendered into tmp_path from every
build/*-trtllm.toml profile, checked against their spec: names, GPU ids, engine dirs, log-prob settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from optistop.render import repo as render
from optistop.serving.streaming import stream_model
from optistop.spec import DEFAULT_SPEC, CascadeSpec, load_spec
from optistop.tensors import CASCADE, PREDICTOR, STAGE, STAGE_STREAM, Contract

text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

ROOT = DEFAULT_SPEC.parent
REPO = ROOT / "model_repository"
QWEN = ROOT / "build" / "qwen2.5-trtllm.toml"
TINY = ROOT / "build" / "tiny-trtllm.toml"


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def params(cfg) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def triton_dtype(dtype: str) -> int:
    return model_config_pb2.DataType.Value(f"TYPE_{'STRING' if dtype == 'BYTES' else dtype}")


def assert_contract(cfg, contract: Contract, where: str) -> None:
    """Contract tensors present with the same dtype/dims/optionality; extra inputs only if optional."""
    assert cfg.max_batch_size > 0, f"{where}: max_batch_size must be > 0 (contract dims are per request)"
    for kind, declared, wanted in (("input", cfg.input, contract.inputs), ("output", cfg.output, contract.outputs)):
        by_name = {t.name: t for t in declared}
        assert len(by_name) == len(declared), f"{where}: duplicate {kind} names"
        for t in wanted:
            assert t.name in by_name, f"{where}: {kind} {t.name!r} missing"
            got = by_name[t.name]
            assert got.data_type == triton_dtype(t.dtype), f"{where}: {kind} {t.name} dtype"
            assert tuple(got.dims) == t.dims, f"{where}: {kind} {t.name} dims {list(got.dims)} != {t.dims}"
            if kind == "input":
                assert got.optional == t.optional, f"{where}: input {t.name} optional={got.optional}"
        extra = set(by_name) - {t.name for t in wanted}
        if kind == "input":
            assert all(by_name[n].optional for n in extra), f"{where}: extra required inputs {extra}"
        else:
            assert not extra, f"{where}: outputs not in the contract: {extra}"


def assert_loadable_layout(repo: Path) -> list[Path]:
    """What Triton needs to load a repository as it is: config name == dir name, a version dir."""
    configs = sorted(repo.glob("*/config.pbtxt"))
    assert configs, f"{repo}: no models"
    for path in configs:
        cfg = parse(path)
        assert cfg.name == path.parent.name, f"{path}: name {cfg.name!r} != directory"
        assert (path.parent / "1").is_dir(), f"{path.parent}: no version directory 1/"
    return configs


# --- committed repository (CPU profile) -------------------------------------------------------------

def test_every_committed_config_parses_and_is_named_after_its_directory() -> None:
    for path in sorted(REPO.glob("*/config.pbtxt")):
        cfg = parse(path)
        assert cfg.name == path.parent.name, path


@pytest.mark.parametrize("stage", load_spec(DEFAULT_SPEC, check_paths=False).stages, ids=lambda s: s.name)
def test_cpu_stage_config_matches_contract_and_spec(stage) -> None:
    path = REPO / stage.triton_model / "config.pbtxt"
    cfg = parse(path)
    assert_contract(cfg, STAGE, str(path))
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == (stage.triton_model, "python", 8)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    p = params(cfg)
    assert (path.parent / p["checkpoint_dir"]).resolve() == stage.checkpoint
    assert p["torch_threads"] == "1"
    assert "do not edit by hand" in path.read_text().splitlines()[0]


@pytest.mark.parametrize("stage", load_spec(DEFAULT_SPEC, check_paths=False).stages, ids=lambda s: s.name)
def test_cpu_streaming_stage_is_decoupled_with_the_same_checkpoint(stage) -> None:
    plain = parse(REPO / stage.triton_model / "config.pbtxt")
    path = REPO / stream_model(stage.triton_model) / "config.pbtxt"
    cfg = parse(path)
    assert_contract(cfg, STAGE_STREAM, str(path))
    assert cfg.model_transaction_policy.decoupled and not plain.model_transaction_policy.decoupled
    assert params(cfg) == params(plain)   # same checkpoint, same threads


def test_cascade_stream_is_cascade_made_decoupled() -> None:
    plain, stream = parse(REPO / "cascade" / "config.pbtxt"), parse(REPO / "cascade_stream" / "config.pbtxt")
    assert stream.model_transaction_policy.decoupled and not plain.model_transaction_policy.decoupled
    stream.ClearField("model_transaction_policy")
    stream.name = plain.name
    assert stream == plain, "cascade_stream must differ from cascade only in name and decoupled"


@pytest.mark.parametrize(("model", "contract"), [("cascade", CASCADE), ("cascade_stream", CASCADE),
                                                 ("quality_predictor", PREDICTOR)])
def test_serving_models_match_their_contracts(model: str, contract: Contract) -> None:
    path = REPO / model / "config.pbtxt"
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: every serving model has a config.pbtxt"
    assert_contract(parse(path), contract, str(path))


# --- GPU repositories rendered from the profiles --------------------------------------------------

def render_gpu(profile: Path, tmp_path: Path, *extra: str) -> tuple[CascadeSpec, Path, Path]:
    engines, out = tmp_path / "engines", tmp_path / "repo"
    args = ["--profile", "trtllm", "--spec", str(profile), "--engines-dir", str(engines), "--out", str(out),
            *extra]
    assert render.main(args) == 0
    return load_spec(profile, check_paths=False), engines, out


@pytest.mark.parametrize("profile", [QWEN, TINY], ids=lambda p: p.name)
def test_gpu_stage_configs_match_contract_and_spec(profile: Path, tmp_path: Path) -> None:
    spec, engines, out = render_gpu(profile, tmp_path)
    for stage in spec.stages:
        path = out / stage.triton_model / "config.pbtxt"
        cfg = parse(path)
        assert_contract(cfg, STAGE, str(path))
        assert (cfg.name, cfg.backend) == (stage.triton_model, "tensorrtllm")
        assert cfg.model_transaction_policy.decoupled is False         # the BLS calls exec(decoupled=False)
        # the backend ignores instance_group placement; GPUs come from gpu_device_ids
        assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        p = params(cfg)
        assert p["gpt_model_path"] == str(engines / f"{stage.name}-tp{stage.tp_size}")
        assert p["gpu_device_ids"] == ",".join(map(str, stage.gpu_ids))
        assert p["normalize_log_probs"] == "false"
        assert p["exclude_input_in_output"] == "true"
        assert p["gpt_model_type"] == "inflight_fused_batching"
        assert 0 < float(p["kv_cache_free_gpu_mem_fraction"]) < 1
        for key in ("tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"):
            assert key in p, f"{path}: {key} must be present or the tensorrtllm backend fails to load"
        scalars = [t for t in cfg.input if list(t.dims) == [1]]
        assert scalars and all(list(t.reshape.shape) == [] and t.HasField("reshape") for t in scalars)


def test_qwen_profile_is_7b_32b_72b_at_tp_1_2_4_on_disjoint_gpus(tmp_path: Path) -> None:
    spec, _, out = render_gpu(QWEN, tmp_path)
    assert [(s.stands_in_for, s.tp_size, s.gpu_ids, s.cost) for s in spec.stages] == [
        ("Qwen2.5-7B-Instruct", 1, (0,), 1.0), ("Qwen2.5-32B-Instruct", 2, (1, 2), 4.5),
        ("Qwen2.5-72B-Instruct", 4, (3, 4, 5, 6), 10.0)]
    ids = [params(parse(out / s.triton_model / "config.pbtxt"))["gpu_device_ids"] for s in spec.stages]
    assert ids == ["0", "1,2", "3,4,5,6"]


@pytest.mark.parametrize("profile", [QWEN, TINY], ids=lambda p: p.name)
def test_gpu_repository_loads_as_is(profile: Path, tmp_path: Path) -> None:
    spec, _, out = render_gpu(profile, tmp_path)
    configs = assert_loadable_layout(out)
    stage_dirs = {s.triton_model for s in spec.stages}
    assert stage_dirs <= {c.parent.name for c in configs}
    # the stage models alone: the cascade is installed by `optistop calibrate --spec` once a calibration for
    # this spec exists (tests/contract/test_gpu_repository.py checks that path and the refusal before it)
    assert not (out / "cascade").exists() and not (out / "quality_predictor").exists()
    assert not any(p.parent.name.startswith("stage_") and p.parent.name not in stage_dirs for p in configs)


def test_model_dir_rebases_engine_and_tokenizer_paths(tmp_path: Path) -> None:
    spec, _, out = render_gpu(QWEN, tmp_path, "--model-dir", "/models")
    for stage in spec.stages:
        assert params(parse(out / stage.triton_model / "config.pbtxt"))["tokenizer_dir"] == \
            f"/models/{stage.checkpoint.name}"
    # the spec a calibration for this repository is fitted with (optistop calibrate --spec) reads the same dirs
    rebased = render.rebase_checkpoints(spec, Path("/models"))
    assert rebased.tokenizer == Path("/models/Qwen2.5-7B-Instruct")
    assert [s.checkpoint for s in rebased.stages] == [Path("/models") / s.checkpoint.name for s in spec.stages]


def test_cast_outputs_uses_the_declared_dtypes():
    import numpy as np

    from optistop import tensors as T

    out = T.CASCADE.cast_outputs({T.TEXT_OUTPUT: [["héllo"]], T.STAGE_INDEX: [[2]], T.COST: [[5.5]],
                                  T.DEGRADED: [[1]], T.CONFIDENCES: [[0.25, 0.5]]})
    assert out[T.TEXT_OUTPUT].dtype == object and out[T.TEXT_OUTPUT][0, 0] == "héllo".encode()
    assert out[T.STAGE_INDEX].dtype == np.int32 and out[T.COST].dtype == np.float32
    assert out[T.DEGRADED].dtype == np.bool_ and out[T.CONFIDENCES].shape == (1, 2)
    with pytest.raises(StopIteration):
        T.CASCADE.cast_outputs({"no_such_output": [[1]]})
