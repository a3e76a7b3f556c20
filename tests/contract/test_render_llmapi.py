"""Profile llmapi: rendered configs of the PyTorch-backend GPU profile, checked against what the
tensorrtllm_backend `llmapi` model declares and reads (NVIDIA/TensorRT-LLM
triton_backend/all_models/llmapi/tensorrt_llm/{config.pbtxt, 1/model.py, 1/helpers.py, 1/model.yaml},
read at config.pbtxt c8c6df0, model.py b35ac1b, helpers.py fab2f90)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from optistop import tensors as T
from optistop.serving import render
from optistop.spec import DEFAULT_SPEC, load_spec

ROOT = DEFAULT_SPEC.parent
LLMAPI = ROOT / "build" / "qwen2.5-llmapi.toml"
TRTLLM = ROOT / "build" / "qwen2.5-trtllm.toml"

# Upstream config.pbtxt: every tensor the llmapi model declares, with its Triton dtype.
UPSTREAM_INPUTS = {
    "text_input": "TYPE_STRING", "streaming": "TYPE_BOOL", "sampling_param_best_of": "TYPE_INT32",
    "sampling_param_temperature": "TYPE_FP32", "sampling_param_top_k": "TYPE_INT32",
    "sampling_param_top_p": "TYPE_FP32", "sampling_param_frequency_penalty": "TYPE_FP32",
    "sampling_param_presence_penalty": "TYPE_FP32", "sampling_param_max_tokens": "TYPE_INT32",
    "sampling_param_stop": "TYPE_STRING", "sampling_param_seed": "TYPE_UINT64",
    "sampling_param_exclude_input_from_output": "TYPE_BOOL", "sampling_param_return_perf_metrics": "TYPE_BOOL",
    "return_finish_reason": "TYPE_BOOL", "return_stop_reason": "TYPE_BOOL",
    "return_cumulative_logprob": "TYPE_BOOL", "stop": "TYPE_BOOL",
}
UPSTREAM_OUTPUTS = {"text_output": "TYPE_STRING", "finish_reason": "TYPE_STRING", "stop_reason": "TYPE_STRING",
                    "cumulative_logprob": "TYPE_FP32"}   # (+ perf metrics, sent only when asked for)
# model.py: triton_config["decoupled"], ["max_batch_size"] (auto_complete_config, initialize) and
# ["cancellation_check_period_ms"] (optional); every other top-level key goes to LLM(**kwargs).
TRITON_CONFIG_KEYS = {"decoupled", "max_batch_size", "cancellation_check_period_ms"}
LLM_ARGS = {"model", "backend", "tensor_parallel_size", "pipeline_parallel_size", "max_batch_size",
            "max_seq_len", "max_num_tokens", "kv_cache_config"}


def rendered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out = tmp_path / "repo"
    assert render.main(["--profile", "llmapi", "--spec", str(LLMAPI), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists(), "--dry-run must not write"
    return dict(re.findall(r"^--- (\S+)\n(.*?)(?=^--- |\Z)", text, re.S | re.M))


def test_llmapi_configs_use_only_what_the_llmapi_model_declares(tmp_path, capsys) -> None:
    text_format = pytest.importorskip("google.protobuf.text_format")
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    spec = load_spec(LLMAPI, check_paths=False)
    files = rendered(tmp_path, capsys)
    configs = {Path(p).parent.name: t for p, t in files.items() if p.endswith("config.pbtxt")}
    assert list(configs) == [s.triton_model for s in spec.stages]
    for stage in spec.stages:
        cfg = text_format.Parse(configs[stage.triton_model], pb2.ModelConfig())
        assert cfg.backend == "python" and cfg.max_batch_size == 0
        assert not cfg.model_transaction_policy.decoupled
        for t in cfg.input:
            assert UPSTREAM_INPUTS.get(t.name) == pb2.DataType.Name(t.data_type), t.name
        for t in cfg.output:
            assert UPSTREAM_OUTPUTS.get(t.name) == pb2.DataType.Name(t.data_type), t.name
        assert cfg.parameters["gpu_device_ids"].string_value == ",".join(map(str, stage.gpu_ids))
    # the one stage-contract -> llmapi map names only tensors that exist on both sides
    for ours, theirs in T.LLMAPI_FROM_STAGE.items():
        assert ours in {t.name for t in T.STAGE.inputs + T.STAGE.outputs}
        assert theirs in {t.name for t in T.LLMAPI_STAGE.inputs + T.LLMAPI_STAGE.outputs}


def test_llmapi_model_yaml_keys_are_the_ones_the_model_reads(tmp_path, capsys) -> None:
    spec = load_spec(LLMAPI, check_paths=False)
    files = rendered(tmp_path, capsys)
    yamls = {Path(p).parents[1].name: json.loads(t) for p, t in files.items() if p.endswith("model.yaml")}
    for stage in spec.stages:
        y = yamls[stage.triton_model]
        assert set(y) - {"triton_config"} <= LLM_ARGS, set(y) - LLM_ARGS
        assert set(y["triton_config"]) <= TRITON_CONFIG_KEYS
        # launch disables auto-complete, so config.pbtxt and triton_config must agree by construction
        assert y["triton_config"]["max_batch_size"] == 0 and y["triton_config"]["decoupled"] is False
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


def test_launch_serves_an_llmapi_repository_without_orchestrator_mode(tmp_path) -> None:
    import os
    import subprocess
    import sys

    repo = tmp_path / "repo"
    assert render.main(["--profile", "llmapi", "--spec", str(LLMAPI), "--out", str(repo)]) == 0
    env = {**os.environ, "PYTHON": sys.executable, "LLMAPI_MODEL_DIR": str(tmp_path / "none")}
    launch = ["bash", str(ROOT / "build" / "launch.sh"), "--repo", str(repo)]
    res = subprocess.run([*launch, "--dry-run"], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0 and "TRTLLM_ORCHESTRATOR" not in res.stdout, res.stderr
    assert re.findall(r"--cuda-memory-pool-byte-size=(\d+):0", res.stdout) == [str(g) for g in range(7)]
    res = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode != 0 and "no llmapi model code" in res.stderr and res.stderr.count("\n") == 1
