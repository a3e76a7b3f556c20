"""The package's layers: no module imports from a layer above it (issue: package layout).

core (optistop/*.py) <- serving (inside Triton) <- engines (stage engines, inside Triton too); client,
offline <- server, render, predictor, tiny <- report, perf, reliability, pipeline, frontend <- cli. A request's path
client -> cascade model.py -> serving -> core never climbs back up. Imports are read with ast, so lazy
imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "optistop"
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "serving": {"core", "serving"},                     # imported inside Triton: the request path ends here
    "engines": {"core", "serving", "engines"},          # stage engines, also inside Triton
    "client": {"core", "client"},                       # a client of the served cascade (tritonclient)
    "server": {"core", "serving", "engines", "render", "client", "server"},   # tritonserver's process lifecycle
    "render": {"core", "serving", "engines", "tiny", "client", "render"},     # repositories; the GPU check
    "offline": {"core", "offline"},
    "predictor": {"core", "serving", "offline", "predictor"},  # export checks parity through the served runtime
    "tiny": {"core", "serving", "engines", "tiny"},
    "report": {"core", "offline", "report"},
    "pipeline": {"core", "serving", "engines", "offline", "predictor", "render", "client", "pipeline"},
    "perf": {"core", "serving", "engines", "server", "render", "client", "offline", "tiny", "report", "perf",
             "frontend"},
    "reliability": {"core", "serving", "server", "client", "tiny", "reliability"},   # soak, chaos
    "frontend": {"core", "serving", "client", "frontend"},
    "cli": {"core", "serving", "engines", "server", "render", "client", "offline", "predictor", "tiny", "report",
            "perf", "reliability", "pipeline", "frontend", "cli"},
}


def layer_of_module(dotted: str) -> str:
    parts = dotted.split(".")
    if parts[0] != "optistop":
        raise ValueError(dotted)
    if len(parts) == 1:
        return "core"
    return parts[1] if parts[1] in ALLOWED and parts[1] not in ("core", "cli") else (
        "cli" if parts[1] == "cli" else "core")


def layer_of_file(path: Path) -> str:
    rel = path.relative_to(PKG)
    if len(rel.parts) == 1:
        return "cli" if rel.stem == "cli" else "core"
    return rel.parts[0]


def imported(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optistop"):
            if node.module == "optistop":  # from optistop import x: x is a module or a core name
                out += [f"optistop.{a.name}" for a in node.names]
            else:
                out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("optistop")]
    return out


def test_every_subpackage_has_a_layer() -> None:
    subs = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs <= set(ALLOWED), f"subpackage(s) {subs - set(ALLOWED)} need a place in ALLOWED"


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_import_climbs_a_layer(path: Path) -> None:
    mine = layer_of_file(path)
    bad = [m for m in imported(path) if layer_of_module(m) not in ALLOWED[mine]]
    assert not bad, f"{path.relative_to(PKG)} ({mine}) imports from a layer above it: {bad}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from optistop.server.embedded import EmbeddedServer\n")
    assert layer_of_module(imported(src)[0]) == "server" and "server" not in ALLOWED["serving"]
