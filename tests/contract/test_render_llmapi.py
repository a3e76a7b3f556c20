"""Profile llmapi: rendered configs of the PyTorch-backend GPU profile: the project's LLM-API stage
(optistop.engines.llmapi_stage) serving the stage contract, its model.yaml and launch.sh over it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from optistop import tensors as T
from optistop.render import repo as render
from optistop.spec import DEFAULT_SPEC, load_spec

ROOT = DEFAULT_SPEC.parent
LLMAPI = ROOT / "build" / "qwen2.5-llmapi.toml"
TRTLLM = ROOT / "build" / "qwen2.5-trtllm.toml"

# LLM() arguments model.yaml may hold (tensorrt_llm.LLM / TorchLlmArgs fields).
LLM_ARGS = {"model", "backend", "tensor_parallel_size", "pipeline_parallel_size", "max_batch_size",
            "max_seq_len", "max_num_tokens", "kv_cache_config"}


def rendered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out = tmp_path / "repo"
    assert render.main(["--profile", "llmapi", "--spec", str(LLMAPI), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists(), "--dry-run must not write"
    return dict(re.findall(r"^--- (\S+)\n(.*?)(?=^--- |\Z)", text, re.S | re.M))


def test_llmapi_configs_serve_the_stage_contract_on_their_gpus(tmp_path, capsys) -> None:
    text_format = pytest.importorskip("google.protobuf.text_format")
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    spec = load_spec(LLMAPI, check_paths=False)
    files = rendered(tmp_path, capsys)
    configs = {Path(p).parent.name: t for p, t in files.items() if p.endswith("config.pbtxt")}
    assert list(configs) == [s.triton_model for s in spec.stages]
    for stage in spec.stages:
        cfg = text_format.Parse(configs[stage.triton_model], pb2.ModelConfig())
        assert cfg.backend == "python" and cfg.max_batch_size == 64 and cfg.HasField("dynamic_batching")
        assert not cfg.model_transaction_policy.decoupled          # the BLS calls exec(decoupled=False)
        assert {t.name: pb2.DataType.Name(t.data_type) for t in cfg.input} == \
               {t.name: f"TYPE_{t.dtype}" for t in T.STAGE.inputs}
        assert {t.name: pb2.DataType.Name(t.data_type) for t in cfg.output} == \
               {t.name: f"TYPE_{t.dtype}" for t in T.STAGE.outputs}
        assert cfg.parameters["gpu_device_ids"].string_value == ",".join(map(str, stage.gpu_ids))
        code = files[str(Path(tmp_path / "repo" / stage.triton_model / "1" / "model.py").absolute())]
        assert "LlmapiHost" in code                                 # the project's model, not the stock one


def test_llmapi_model_yaml_holds_llm_arguments_only(tmp_path, capsys) -> None:
    spec = load_spec(LLMAPI, check_paths=False)
    files = rendered(tmp_path, capsys)
    yamls = {Path(p).parents[1].name: json.loads(t) for p, t in files.items() if p.endswith("model.yaml")}
    for stage in spec.stages:
        y = yamls[stage.triton_model]
        assert set(y) <= LLM_ARGS, set(y) - LLM_ARGS
        assert y["backend"] == "pytorch" and y["tensor_parallel_size"] == stage.tp_size
        assert y["model"].endswith(stage.stands_in_for)          # the HF checkpoint, not an engine
        assert y["max_seq_len"] >= spec.max_context_tokens


def test_both_gpu_profiles_describe_the_same_cascade() -> None:
    a, b = load_spec(TRTLLM, check_paths=False), load_spec(LLMAPI, check_paths=False)
    for x, y in zip(a.stages, b.stages, strict=True):
        assert (x.name, x.cost, x.tp_size, x.gpu_ids, x.checkpoint, x.timeout_for(1024)) == \
               (y.name, y.cost, y.tp_size, y.gpu_ids, y.checkpoint, y.timeout_for(1024))
    assert (a.max_context_tokens, a.stop_token_ids, a.max_tokens_cap) == \
           (b.max_context_tokens, b.stop_token_ids, b.max_tokens_cap)


def test_llmapi_profile_errors_are_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(LLMAPI.read_text().replace('backend = "pytorch"', 'backend = "tensorrt"'))
    assert render.main(["--profile", "llmapi", "--spec", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "llmapi.backend: must be 'pytorch'" in err
    assert render.main(["--profile", "llmapi", "--spec", str(LLMAPI), "--engines-dir", "e", "--out", "r"]) == 2
    assert "builds no engines" in capsys.readouterr().err


def test_launch_serves_an_llmapi_repository_without_mpirun_or_orchestrator_mode(tmp_path) -> None:
    import os
    import subprocess
    import sys

    repo = tmp_path / "repo"
    assert render.main(["--profile", "llmapi", "--spec", str(LLMAPI), "--out", str(repo)]) == 0
    env = {**os.environ, "PYTHON": sys.executable}
    launch = ["bash", str(ROOT / "build" / "launch.sh"), "--repo", str(repo)]
    res = subprocess.run([*launch, "--dry-run"], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0 and "TRTLLM_ORCHESTRATOR" not in res.stdout, res.stderr
    assert res.stdout.startswith("tritonserver ") and "mpirun" not in res.stdout   # the LLM API spawns its own
    assert re.findall(r"--cuda-memory-pool-byte-size=(\d+):0", res.stdout) == [str(g) for g in range(7)]
