"""`make venv`: the virtual environment from requirements.lock, then the project itself (editable, no deps).

uv installs the ~115 pinned wheels in seconds where pip takes about a minute (README "Tests"). uv does not
read pip's configuration, so the package sources pip is configured with here (`pip config list`:
find-links, index URLs, constraints, certificate; /etc/pip.conf, the user's pip.conf, PIP_* variables)
are handed to it explicitly, and it picks among all indexes as pip does (`--index-strategy
unsafe-best-match`): the same versions install (`pip freeze` of both environments is identical). pip is
the fallback: when uv cannot be installed, pip's configuration holds a setting not translated here, or uv
fails. Standard library only: it runs before the environment exists.

    python3 scripts/venv.py [--venv .venv] [--pip]      # --pip: skip uv
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

UV_VERSION = "0.13.8"
ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# pip settings uv gets as flags (one per value; a value may hold several, space separated)
AS_FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
            "constraint": "--constraint", "trusted-host": "--allow-insecure-host"}
# pip settings without a bearing on which files are installed
HARMLESS = {"disable-pip-version-check", "no-input", "progress-bar", "quiet", "verbose", "retries",
            "no-color", "root-user-action", "break-system-packages"}


def run(cmd: list[str], env: dict[str, str] | None = None) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def pip_settings(python: Path) -> dict[str, list[str]] | None:
    """pip's configuration as ``key -> values`` (every file and PIP_* variable pip reads, for the global
    and install commands), or None when pip cannot say."""
    res = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True)
    return parse_pip_config(res.stdout) if res.returncode == 0 else None


def parse_pip_config(text: str) -> dict[str, list[str]]:
    """``pip config list`` output (``section.key='value'`` lines) as ``key -> values``, in order, once each."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in ("global", "install", ":env:"):
            continue
        for v in str(ast.literal_eval(value)).split():
            settings.setdefault(key, [])
            if v not in settings[key]:
                settings[key].append(v)
    return settings


def uv_options(settings: dict[str, list[str]]) -> tuple[list[str], dict[str, str]] | str:
    """uv's flags and environment for pip's ``settings``, or the name of a setting uv would not honour."""
    flags, env = ["--index-strategy", "unsafe-best-match"], dict(os.environ)
    for key, values in settings.items():
        if key in AS_FLAGS:
            flags += [x for v in values for x in (AS_FLAGS[key], v)]
        elif key == "cert":
            env["SSL_CERT_FILE"] = values[-1]
        elif key in ("timeout", "default-timeout"):
            env["UV_HTTP_TIMEOUT"] = values[-1]
        elif key not in HARMLESS:
            return key
    return flags, env


def with_uv(venv: Path) -> bool:
    python = venv / "bin" / "python"
    uv = venv / ".tools" / "bin" / "uv"   # beside the environment, not in it: `make lock` freezes site-packages
    if not uv.exists() and run([str(python), "-m", "pip", "install", "-q", "--target", str(uv.parent.parent),
                                f"uv=={UV_VERSION}"]) != 0:
        print(f"venv: uv {UV_VERSION} could not be installed; using pip", file=sys.stderr)
        return False
    settings = pip_settings(python)
    options = uv_options(settings) if settings is not None else "(pip config list failed)"
    if isinstance(options, str):
        print(f"venv: pip setting {options} has no uv equivalent here; using pip", file=sys.stderr)
        return False
    flags, env = options
    base = [str(uv), "pip", "install", "-q", "--python", str(python), *flags]
    if run([*base, "-r", str(LOCK)], env) != 0:
        print("venv: uv failed; using pip", file=sys.stderr)
        return False
    return run([*base, "--no-deps", "--no-build-isolation", "-e", str(ROOT)], env) == 0


def with_pip(venv: Path) -> int:
    python = str(venv / "bin" / "python")
    for cmd in (["--upgrade", "pip"], ["-r", str(LOCK)], ["--no-deps", "--no-build-isolation", "-e", str(ROOT)]):
        if run([python, "-m", "pip", "install", "-q", *cmd]) != 0:
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--pip", action="store_true", help="install with pip only")
    args = ap.parse_args(argv)
    if not (args.venv / "bin" / "python").exists() and run([sys.executable, "-m", "venv", str(args.venv)]) != 0:
        return 1
    if not args.pip and with_uv(args.venv):
        return 0
    return with_pip(args.venv)


if __name__ == "__main__":
    sys.exit(main())
