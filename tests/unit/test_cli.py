"""The ``optistop`` front door: --help lists every command with one line, grouped; an unknown command exits
2 naming the valid ones; ``optistop <command> --help`` works for each."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from optistop import cli


def run(*args: str) -> subprocess.CompletedProcess:
    """The real entry point in a fresh interpreter (what a user's shell runs)."""
    return subprocess.run([sys.executable, "-m", "optistop.cli", *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_once_with_a_line_in_its_group() -> None:
    out = run("--help")
    assert out.returncode == 0 and not out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("usage: optistop <command>")
    headers = [ln[:-1] for ln in lines if ln and not ln.startswith(" ") and ln.endswith(":")]
    assert headers == ["serve", "bring your own", "evaluate", "operate"]
    for c in cli.COMMANDS:
        (row,) = [ln for ln in lines if ln.split()[:1] == [c.name]]
        assert row.split(None, 1)[1] == c.help and len(c.help) <= 80, c.name
        group = max(i for i, ln in enumerate(lines) if ln.endswith(":") and i < lines.index(row))
        assert lines[group] == f"{c.group}:", c.name
    names = [c.name for c in cli.COMMANDS]
    assert len(set(names)) == len(names) and {c.group for c in cli.COMMANDS} == set(cli.GROUPS)
    assert {"serve", "serve-split", "openai", "spec", "repo", "collect", "label", "calibrate", "replay",
            "health", "plan"} <= set(names)   # the commands the README documents


def test_unknown_and_missing_command_exit_2_naming_the_valid_ones() -> None:
    bad = run("sevre")
    assert bad.returncode == 2 and not bad.stdout
    assert bad.stderr.count("\n") == 1 and "unknown command 'sevre'" in bad.stderr
    assert f"valid: {', '.join(c.name for c in cli.COMMANDS)}" in bad.stderr
    none = run()
    assert none.returncode == 2 and "usage: optistop <command>" in none.stderr


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_every_command_has_its_own_help(command: cli.Command, capsys: pytest.CaptureFixture[str]) -> None:
    module, _, func = command.target.partition(":")
    assert callable(getattr(importlib.import_module(module), func)), command.target
    with pytest.raises(SystemExit) as info:
        cli.main([command.name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: optistop {command.name} "), out[:80]


def test_serve_load_models_names_a_model_the_repository_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before anything starts: one line naming the model and the repository."""
    assert cli.main(["serve", "--load-models", "cascade,stage_huge", "--http-port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--load-models: stage_huge not in" in err and "model_repository" in err
