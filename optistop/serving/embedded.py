"""Run a real ``tritonserver`` on this project's model repository, with no GPU and no container.

$ optistop serve                                   # 127.0.0.1, HTTP 8000, gRPC 8001, metrics 8002

PyPI's ``nvidia-pytriton`` ships a tritonserver 2.51 binary, the Python backend and one backend stub per
Python version. We run that binary directly on our own repository: copy the Python backend plus the stub
that matches this interpreter into a writable backend directory, put the wheel's bundled libraries on
``LD_LIBRARY_PATH`` and this environment's site-packages on ``PYTHONPATH`` (the stub embeds the system
libpython, which does not know about the virtual environment).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from optistop import ROOT

DEFAULT_REPOSITORY = ROOT / "model_repository"


class ServerError(RuntimeError):
    """The server could not be started; the message is one actionable line."""


@dataclass
class ServerConfig:
    repository: Path = DEFAULT_REPOSITORY
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    tritonserver: Path | None = None       # an installed server instead of pytriton's
    backend_directory: Path | None = None  # with --tritonserver: that install's backends
    log_verbose: int = 0
    shm_prefix: str | None = None         # Python-backend shared-memory region prefix (leak checks)
    exit_on_error: bool = True            # False: serve what loaded (readiness then per model)
    extra_args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def _pytriton_dir() -> Path:
    try:
        import pytriton  # noqa: F401  (only to locate the wheel's files)
    except ImportError:
        raise ServerError("nvidia-pytriton is not installed; run `make venv` (or pip install "
                          "'nvidia-pytriton==0.7.0'), or pass --tritonserver PATH") from None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def prepare_python_backend(dest: Path) -> Path:
    """A backend directory whose python/ holds pytriton's backend and the stub for this interpreter."""
    src = _pytriton_dir()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = src / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"pytriton has no Python-backend stub for Python {ver}; use Python 3.8-3.13")
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for f in [*(src / "backends" / "python").iterdir(), stub]:
        if f.is_file():
            _install(f, py / f.name)
    return dest


def _install(src: Path, dst: Path) -> None:
    """Copy unless identical; replace atomically, since a running server may be executing ``dst``."""
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libs = _pytriton_dir().parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in (*paths, env.get("PYTHONPATH", "")) if p))
    env.setdefault("OMP_NUM_THREADS", "1")   # torch in every stage process: one thread each
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")    # never reach for a hub at serving time
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for tests and benchmarks that start their own server)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ServerError(f"port {port} on {host} ({what}) is already in use; stop whatever holds it "
                              f"or choose another with --{what.lower()}-port") from None


def build_command(cfg: ServerConfig, backend_dir: Path) -> list[str]:
    binary = cfg.tritonserver or (_pytriton_dir() / "bin" / "tritonserver")
    if not Path(binary).exists():
        raise ServerError(f"tritonserver binary not found at {binary}; pass --tritonserver PATH")
    return [
        str(binary),
        f"--model-repository={cfg.repository}",
        f"--backend-directory={backend_dir}",
        "--model-control-mode=none",          # no load/unload API: the repository is fixed at start
        "--disable-auto-complete-config",     # every config.pbtxt declares its I/O, as in production
        "--strict-readiness=true",
        f"--exit-on-error={str(cfg.exit_on_error).lower()}",
        f"--http-address={cfg.host}", f"--http-port={cfg.http_port}",
        f"--grpc-address={cfg.host}", f"--grpc-port={cfg.grpc_port}",
        f"--metrics-address={cfg.host}", f"--metrics-port={cfg.metrics_port}",
        "--allow-gpu-metrics=false",
        f"--log-verbose={cfg.log_verbose}",
        *([f"--backend-config=python,shm-region-prefix-name={cfg.shm_prefix}"] if cfg.shm_prefix else []),
        *cfg.extra_args,
    ]


class EmbeddedServer:
    """Start, wait for readiness, stop. Also a context manager (used by the test fixtures)."""

    def __init__(self, cfg: ServerConfig, workdir: Path | None = None, log_path: Path | None = None) -> None:
        self.cfg = cfg
        self.workdir = workdir or Path(sys.prefix) / "share" / "optistop"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    def start(self) -> None:
        for port, what in ((self.cfg.http_port, "HTTP"), (self.cfg.grpc_port, "gRPC"),
                           (self.cfg.metrics_port, "metrics")):
            check_port_free(self.cfg.host, port, what)
        if not any(self.cfg.repository.glob("*/config.pbtxt")):  # a stage-only server has no cascade
            raise ServerError(f"{self.cfg.repository} is not a model repository (no */config.pbtxt)")
        backend_dir = self.cfg.backend_directory or prepare_python_backend(self.workdir / "backends")
        cmd = build_command(self.cfg, backend_dir)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=server_environment(), stdout=self._log,
                                     stderr=subprocess.STDOUT if self._log else None,
                                     start_new_session=True)

    def ready(self, model: str | None = None) -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        url = f"http://{self.cfg.http_url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 180.0, model: str | None = None) -> None:
        """Until the server (or, with ``model``, that one model) is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_tail()
                raise ServerError(f"tritonserver exited with code {self.proc.returncode} before it was "
                                  f"ready{': ' + tail if tail else ''}")
            if self.ready(model):
                return
            time.sleep(0.5)
        raise ServerError(f"tritonserver was not ready after {timeout:.0f}s")

    def log_tail(self, lines: int = 15) -> str:
        """Why it failed: the log's model-load failures if any, else its last lines."""
        if not self.log_path or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        failures = [ln[:400] for ln in text if "failed to load" in ln and "model_lifecycle" in ln]
        return "\n".join(failures or text[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its backend stub processes
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> EmbeddedServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
