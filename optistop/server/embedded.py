"""Run a real ``tritonserver`` on this project's model repository, with no GPU and no container.

$ optistop serve                                   # 127.0.0.1, HTTP 8000, gRPC 8001, metrics 8002

PyPI's ``nvidia-pytriton`` ships a tritonserver 2.51 binary, the Python backend and one backend stub per
Python version. We run that binary directly on our own repository: copy the Python backend plus the stub
that matches this interpreter into a writable backend directory, put the wheel's bundled libraries on
``LD_LIBRARY_PATH`` and this environment's site-packages on ``PYTHONPATH`` (the stub embeds the system
libpython, which does not know about the virtual environment).

Process hygiene (issue 14): the server gets ``PR_SET_PDEATHSIG`` so it dies with the process that started
it, even on ``kill -9`` of that process; a pidfile per HTTP port lets the next start kill an orphan left
by an older launcher and remove its shared-memory regions; and SIGCHLD is ignored in the server, so the
kernel reaps backend stubs that die (tritonserver 2.51 never waits for a killed stub: it stays a zombie).
Stopping sends SIGTERM to tritonserver alone, which refuses new requests and lets in-flight ones finish
for ``exit_timeout_s``, then kills the whole process group.
"""

from __future__ import annotations

import ctypes
import filecmp
import json
import os
import secrets
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

import psutil

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
    model_control: bool = False           # explicit mode, so a supervisor can reload a dead model
    # Load only these models of the repository (explicit mode; the others stay unloaded): e.g. a test
    # that needs no streaming variant spares their backend processes. Empty: every model.
    load_models: tuple[str, ...] = ()
    control_token: str = field(default_factory=lambda: secrets.token_hex(16))
    exit_timeout_s: int = 30              # SIGTERM: how long in-flight requests may take to finish
    extra_args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def control_header(self) -> dict[str, str]:
        """The header the model-repository API demands (``model_control``); only the supervisor has it."""
        return {CONTROL_HEADER: self.control_token}


CONTROL_HEADER = "optistop-control"
PR_SET_PDEATHSIG = 1


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
        *(["--model-control-mode=explicit", *(f"--load-model={m}" for m in cfg.load_models or ["*"]),
           # the load/unload API answers only requests that carry the supervisor's random token
           f"--http-restricted-api=model-repository:{CONTROL_HEADER}={cfg.control_token}",
           f"--grpc-restricted-protocol=model-repository:{CONTROL_HEADER}={cfg.control_token}"]
          if cfg.model_control or cfg.load_models
          else ["--model-control-mode=none"]),  # none: the repository is fixed
        f"--exit-timeout-secs={cfg.exit_timeout_s}",
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


def _in_child() -> None:
    """Runs in the forked child before exec. Signal dispositions set to SIG_IGN survive exec."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # dead stubs are reaped by the kernel, no zombies
    # Die with the parent. The kernel ties this to the parent *thread*: start servers from a thread that
    # lives as long as the supervisor (the main thread in `optistop serve`).
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _alive(pid: int) -> bool:
    """``pid`` runs: it exists and is not a zombie (exited, waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True


def _is_tritonserver(pid: int) -> bool:
    try:
        return any("tritonserver" in a for a in psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone meanwhile, or not ours to kill
        return False


class EmbeddedServer:
    """Start, wait for readiness, stop. Also a context manager (used by the test fixtures)."""

    def __init__(self, cfg: ServerConfig, workdir: Path | None = None, log_path: Path | None = None) -> None:
        self.cfg = cfg
        self.workdir = workdir or Path(sys.prefix) / "share" / "optistop"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def pidfile(self) -> Path:
        return self.workdir / "run" / f"tritonserver-{self.cfg.host}-{self.cfg.http_port}.json"

    def _clear_orphan(self) -> None:
        """Kill a server left running by a launcher that died (an older one, without PDEATHSIG), and
        remove its shared-memory regions; refuse when its launcher is still alive."""
        try:
            old = json.loads(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        pid, owner = int(old.get("pid", 0)), int(old.get("owner", 0))
        if pid and _alive(pid) and _is_tritonserver(pid):
            if owner and _alive(owner) and owner != os.getpid():
                raise ServerError(f"port {self.cfg.http_port} is served by tritonserver pid {pid} of "
                                  f"optistop pid {owner}; stop that one first")
            os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        prefix = old.get("shm_prefix")
        if prefix:
            for region in Path("/dev/shm").glob(prefix + "*"):
                region.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)

    def start(self) -> None:
        if self.cfg.shm_prefix is None:  # our own prefix, so that regions a dead server left can be found
            self.cfg.shm_prefix = f"optistop_{os.getpid()}_{self.cfg.http_port}_"
        self._clear_orphan()
        for port, what in ((self.cfg.http_port, "HTTP"), (self.cfg.grpc_port, "gRPC"),
                           (self.cfg.metrics_port, "metrics")):
            check_port_free(self.cfg.host, port, what)
        if not any(self.cfg.repository.glob("*/config.pbtxt")):
            # a repository of stages alone is valid: it is what `optistop collect` calibrates from
            raise ServerError(f"{self.cfg.repository} is not a model repository (no <model>/config.pbtxt); "
                              f"build one with `optistop repo --spec SPEC --out DIR`")
        backend_dir = self.cfg.backend_directory or prepare_python_backend(self.workdir / "backends")
        cmd = build_command(self.cfg, backend_dir)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=server_environment(), stdout=self._log,
                                     stderr=subprocess.STDOUT if self._log else None,
                                     start_new_session=True, preexec_fn=_in_child)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(json.dumps({"pid": self.proc.pid, "owner": os.getpid(),
                                            "shm_prefix": self.cfg.shm_prefix}))

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

    def stop(self, timeout: float | None = None) -> int | None:
        """Drain and stop: SIGTERM to tritonserver alone (it refuses new requests, lets in-flight ones
        finish for ``exit_timeout_s`` and stops its stubs), then SIGKILL to whatever of the group is left."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.cfg.exit_timeout_s + 10 if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stubs of a server that did not exit cleanly
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.pidfile.unlink(missing_ok=True)
        if self.cfg.shm_prefix:   # every process of the group is gone: what they left in /dev/shm is garbage
            for region in Path("/dev/shm").glob(self.cfg.shm_prefix + "*"):
                region.unlink(missing_ok=True)
        if self._log:
            self._log.close()
            self._log = None
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
