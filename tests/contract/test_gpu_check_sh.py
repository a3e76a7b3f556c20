"""build/gpu-check.sh without a GPU: its argument handling, its plan (--dry-run) for both GPU profiles,
an early one-line failure, and the one-stage profile it serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optistop.render import repo as render
from optistop.render.gpu_check import one_stage_profile
from optistop.render.llmapi import load_llmapi_settings
from optistop.spec import DEFAULT_SPEC, load_spec

ROOT = DEFAULT_SPEC.parent
GPU_CHECK = ROOT / "build" / "gpu-check.sh"
PROFILES = {"trtllm": ROOT / "build" / "qwen2.5-trtllm.toml", "llmapi": ROOT / "build" / "qwen2.5-llmapi.toml"}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(d) / "nvidia-smi").exists())
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "PATH": path, "PYTHON": sys.executable})


def plan(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if not ln.startswith("#")]


@pytest.mark.parametrize("kind", ["trtllm", "llmapi"])
def test_dry_run_without_qwen_runs_the_whole_sequence_on_the_tiny_trt_family(kind: str, tmp_path: Path) -> None:
    w = tmp_path / "w"
    res = run("--profile", str(PROFILES[kind]), "--work-dir", str(w), "--port", "9100", "--dry-run",
              "--model-dir", str(tmp_path / "none"))
    assert res.returncode == 0, res.stderr
    assert "tiny-trt family" in res.stdout
    build, serve, selftest, prompts, collect, calibrate, serve2, policies = plan(res.stdout)
    tiny = str(ROOT / "build" / "tiny-trtllm.toml")
    assert ("build/engines.sh" in build) == (kind == "trtllm") and tiny in build
    assert ("--profile llmapi" in build) == (kind == "llmapi")
    assert "build/launch.sh" in serve and "--http-port 9100" in serve and serve.endswith("&")
    assert "--stages" in selftest and "127.0.0.1:9100" in selftest
    assert f"--prompts {w}/prompts.jsonl" in prompts
    assert "optistop.cli collect" in collect and "127.0.0.1:9101" in collect and "--grader" in collect
    assert f"optistop.cli calibrate {w}/collected.jsonl --spec {tiny} --out {w}/model_repository" in calibrate
    assert serve2.endswith("&") and "cascade.log" in serve2
    assert policies.endswith("--cascade fixed:0 optimal router")
    assert not w.exists(), "--dry-run must not create anything"


def test_dry_run_with_a_qwen_checkpoint_cuts_the_profile_to_its_first_stage(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpts" / "Qwen2.5-7B-Instruct"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    w = tmp_path / "w"
    res = run("--work-dir", str(w), "--model-dir", str(tmp_path / "ckpts"), "--dry-run")
    assert res.returncode == 0, res.stderr
    cut, build, *_ , calibrate, _, _ = plan(res.stdout)
    assert "--cut" in cut and f"--out {w}/one-stage.toml" in cut and f"--model-dir {tmp_path}/ckpts" in cut
    assert f"--profile {w}/one-stage.toml" in build and f"--spec {w}/one-stage.toml" in calibrate


def test_default_work_dir_is_on_the_engines_volume(tmp_path: Path) -> None:
    env_dir = tmp_path / "vol"
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(d) / "nvidia-smi").exists())
    res = subprocess.run(["bash", str(GPU_CHECK), "--dry-run"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": path, "PYTHON": sys.executable, "ENGINES_DIR": str(env_dir)})
    assert res.returncode == 0 and f"work dir {env_dir}/gpu-check" in res.stdout


def test_bad_arguments_and_no_gpu_fail_in_one_line(tmp_path: Path) -> None:
    for args, needle in ((["--bogus"], "unknown option '--bogus'"), (["--port"], "--port needs a value"),
                         (["--port", "80x", "--dry-run"], "whole numbers"),
                         (["--prompts", "many", "--dry-run"], "whole numbers"),
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
    assert cut.tokenizer == full.tokenizer and cut.chat_template is True
    moved = tmp_path / "moved.toml"
    moved.write_text(one_stage_profile(src.read_text(), src.parent, tmp_path / "ck"))
    assert load_spec(moved, check_paths=False).stages[0].checkpoint == tmp_path / "ck" / "Qwen2.5-7B-Instruct"
    if kind == "trtllm":
        trt = render.load_trtllm_settings(one)
        assert set(trt.stages) == {"small"}
        assert trt.for_stage("small") == render.load_trtllm_settings(src).for_stage("small")
    else:
        assert load_llmapi_settings(one, cut) == load_llmapi_settings(src, full)
