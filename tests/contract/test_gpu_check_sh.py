"""build/gpu-check.sh without a GPU: its argument handling, its plan (--dry-run) for both GPU profiles,
an early one-line failure, and the one-stage profile it serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optistop.serving import render
from optistop.serving.gpu_check import one_stage_profile
from optistop.serving.render_llmapi import load_llmapi_settings
from optistop.spec import DEFAULT_SPEC, load_spec

ROOT = DEFAULT_SPEC.parent
GPU_CHECK = ROOT / "build" / "gpu-check.sh"
PROFILES = {"trtllm": ROOT / "build" / "qwen2.5-trtllm.toml", "llmapi": ROOT / "build" / "qwen2.5-llmapi.toml"}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(d) / "nvidia-smi").exists())
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "PATH": path, "PYTHON": sys.executable})


@pytest.mark.parametrize("kind", ["trtllm", "llmapi"])
def test_dry_run_plans_one_stage_build_serve_and_check(kind: str, tmp_path: Path) -> None:
    res = run("--profile", str(PROFILES[kind]), "--work-dir", str(tmp_path / "w"), "--port", "9100", "--dry-run")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if not ln.startswith("#")]
    cut, prepare, serve, check = lines
    assert "--cut" in cut and "one-stage.toml" in cut
    assert ("build/engines.sh" in prepare) == (kind == "trtllm")
    assert ("--profile llmapi" in prepare) == (kind == "llmapi")
    assert "build/launch.sh" in serve and "--http-port 9100" in serve and serve.endswith("&")
    assert f"--kind {kind}" in check and "127.0.0.1:9100" in check
    assert not (tmp_path / "w").exists(), "--dry-run must not create anything"


def test_bad_arguments_and_no_gpu_fail_in_one_line(tmp_path: Path) -> None:
    for args, needle in ((["--bogus"], "unknown option '--bogus'"), (["--port"], "--port needs a value"),
                         (["--port", "80x", "--dry-run"], "whole numbers"),
                         (["--profile", str(tmp_path / "no.toml")], "not found"),
                         (["--work-dir", str(tmp_path / "w")], "nvidia-smi not found")):
        res = run(*args)
        assert res.returncode != 0 and res.stderr.count("\n") == 1 and needle in res.stderr, (args, res.stderr)
    assert not (tmp_path / "w").exists()
    assert "--dry-run" in run("--help").stdout


@pytest.mark.parametrize("kind", ["trtllm", "llmapi"])
def test_the_one_stage_profile_keeps_the_first_stage_and_renders(kind: str, tmp_path: Path) -> None:
    src = PROFILES[kind]
    one = tmp_path / "one.toml"
    one.write_text(one_stage_profile(src.read_text(), src.parent))
    full, cut = load_spec(src, check_paths=False), load_spec(one, check_paths=False)
    assert cut.stages == full.stages[:1] and cut.stop_token_ids == full.stop_token_ids
    assert cut.tokenizer == full.tokenizer
    if kind == "trtllm":
        trt = render.load_trtllm_settings(one)
        assert set(trt.stages) == {"small"}
        assert trt.for_stage("small") == render.load_trtllm_settings(src).for_stage("small")
    else:
        assert load_llmapi_settings(one, cut) == load_llmapi_settings(src, full)
