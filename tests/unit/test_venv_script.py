"""scripts/venv.py (`make venv`): pip's configuration becomes uv's flags, so uv installs from the same
sources; a pip setting it cannot translate sends `make venv` back to pip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _venv_script():
    spec = importlib.util.spec_from_file_location("venv_script", ROOT / "scripts" / "venv.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# what `pip config list` printed on this machine (user file, /etc files, PIP_* variables), plus an install entry
PIP_CONFIG = """:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.disable-pip-version-check='1'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
install.index-url='https://mirror.example/simple'
freeze.exclude='pip'
"""


def test_pip_config_becomes_uv_flags_and_environment() -> None:
    venv = _venv_script()
    settings = venv.parse_pip_config(PIP_CONFIG)
    assert settings["find-links"] == ["/opt/wheels"]          # env and file give the same value: once
    assert settings["extra-index-url"] == ["file:///opt/pypi/simple", "file:///opt/pypi-more/simple"]
    assert "exclude" not in settings                          # another command's section
    flags, env = venv.uv_options(settings)
    pairs = list(zip(flags[::2], flags[1::2], strict=True))
    assert pairs == [("--index-strategy", "unsafe-best-match"), ("--find-links", "/opt/wheels"),
                     ("--constraint", "/etc/xdg/pip/constraints.txt"),
                     ("--extra-index-url", "file:///opt/pypi/simple"),
                     ("--extra-index-url", "file:///opt/pypi-more/simple"),
                     ("--index-url", "https://mirror.example/simple")]
    assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt" and env["UV_HTTP_TIMEOUT"] == "180"


def test_a_pip_setting_uv_would_not_honour_is_named() -> None:
    venv = _venv_script()
    assert venv.uv_options(venv.parse_pip_config("global.no-binary=':all:'\n")) == "no-binary"
    assert venv.uv_options(venv.parse_pip_config("global.client-cert='/x.pem'\n")) == "client-cert"
