"""Shared fixtures and the test tiers. Tests run with one torch thread: the machine has two shared cores.

Tiers are folders; each test gets its folder's marker, so one tier runs alone with ``-m <tier>``
(``make test-unit`` ...): unit (package code, no server), contract (config.pbtxt / tensors / sidecar /
model.py against fake pb_utils / shell scripts), parity (ONNX vs torch), e2e (a real tritonserver).

Servers (every start costs ~20-40 s of the two cores: reuse one before starting another)
-------------------------------------------------------------------------------------
``server``        session: the project's model_repository as committed, fault-free; loads CORE_MODELS only
                  (no ``*_stream`` variants). For any check of normal serving (answers, metrics, bad input).
``fault_server``  session: ONE repository shaped for every fault test. Its plain models are the OpenAI front
                  end's world (``cascade`` + ``*_stream``; stage_medium and stage_medium_stream answer with
                  errors, stage_large_stream waits 50 ms per token); beside them, variant models, each a
                  cascade of its own with its own spec (FAULT_CASCADES: failing stages, a slow stage with a
                  1 s timeout, a NaN predictor, a stage that cannot load). A new fault: add a variant model
                  in ``_fault_repository`` (``variant_model`` / ``variant_cascade``), not a new server.
``start_server(repo, log, load_models=...)``  an EmbeddedServer (not started) on free loopback ports, loading
                  only ``load_models``: for a repository of its own shape (chat family, split layout).
Fault injection goes through ``inject_fault`` alone, so changing how faults are injected is one edit here.

pytest-xdist (``make test``: 3 workers, ``--dist loadgroup``): every test using ``server`` runs in one worker,
every test using ``fault_server`` in one, the tests of a module with a module-scoped fixture together (see
``xdist_groups``), so each server is started once; the rest go to whichever worker is free. A test must not
depend on another test outside its group having run, nor on running alone on the machine.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from optistop.render import pbtxt

TIERS = ("unit", "contract", "parity", "e2e")

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "tiny"
CORE_MODELS = ("cascade", "quality_predictor", "stage_small", "stage_medium", "stage_large")
TOKEN_DELAY_S = 0.05   # fault_server: stage_large_stream's pause per token
# fault_server's variant cascades: name -> what it is made of (see _fault_repository)
FAULT_CASCADES = ("cascade_failing", "cascade_slow", "cascade_nan", "cascade_broken")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of the tier folders {TIERS}")
        item.add_marker(getattr(pytest.mark, tier))
    if getattr(config.option, "loadgroup", False):   # pytest-xdist's --dist loadgroup, in a worker
        groups = xdist_groups(items)
        for item in items:
            if groups[item]:
                set_xdist_group(item, groups[item])
        # xdist hands work out in collection order (`--no-loadscope-reorder`): the long units first, so none
        # starts last on an otherwise idle machine; the sort is stable (a group's tests keep their order)
        sizes = Counter(groups.values())
        items.sort(key=lambda item: _xdist_rank(item, groups[item], sizes[groups[item]]))


# Fixtures that start a server, shared by tests of many files: under pytest-xdist (`make test` runs
# `-n 3 --dist loadgroup`) every test using one runs in the same worker, so each server starts once.
SHARED_FIXTURES = ("server", "fault_server")


def xdist_groups(items: list[pytest.Item]) -> dict[pytest.Item, str | None]:
    """Each test's xdist group: the session server(s) it uses; else, when it uses a module-scoped fixture (a
    module's own server or an expensive fit), the group of the module's tests that use one too and a session
    server (so the module fixture is built in that worker only), else its module; else none: the test goes
    to whichever worker is free."""
    shared: dict[pytest.Item, str | None] = {}
    module_scoped: dict[pytest.Item, bool] = {}
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        shared[item] = "+".join(f for f in SHARED_FIXTURES if f in names) or None
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs if info is not None else {}
        module_scoped[item] = any(d.scope == "module" for name in names for d in defs.get(name, ()))
    module_group: dict[str, str] = {}
    for item in items:
        if module_scoped[item] and shared[item]:
            module_group.setdefault(str(item.fspath), shared[item])
    groups: dict[pytest.Item, str | None] = {}
    for item in items:
        if shared[item] or not module_scoped[item]:
            groups[item] = shared[item]
        else:
            groups[item] = module_group.get(str(item.fspath), Path(str(item.fspath)).stem)
    return groups


def set_xdist_group(item: pytest.Item, group: str) -> None:
    """What ``@pytest.mark.xdist_group(group)`` does: xdist's controller groups tests by the node id's
    ``@group`` suffix. xdist 3.8 writes the suffix into ``item._nodeid``, which pytest 9 no longer reads
    (node ids are ``item._id``), so its marker is a no-op here; the suffix is set the way pytest 9 keeps it."""
    from _pytest.nodeid import NodeId

    if not item.nodeid.endswith(f"@{group}"):
        item._id = NodeId.parse(f"{item.nodeid}@{group}")
    if not item.nodeid.endswith(f"@{group}"):   # a pytest keeping node ids elsewhere: fail, not start servers per test
        raise pytest.UsageError(f"cannot set the xdist group of {item.nodeid} on this pytest; run with XDIST=")


def _xdist_rank(item: pytest.Item, group: str | None, size: int) -> tuple[int, int]:
    """e2e groups (a server per group; the larger, the longer: the shared servers' first) before e2e tests
    alone (each starts its own) before the other tiers' groups (module fixtures) before the rest."""
    e2e = item.get_closest_marker("e2e") is not None
    return (0 if e2e else 2) + (group is None), -size if group else 0


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the locked environment
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    if not (TINY / "large" / "model.safetensors").exists():
        pytest.fail(f"tiny family missing under {TINY}; run `make models-train models-eval`")
    return TINY


def _need_predictor() -> None:
    if not (ROOT / "model_repository" / "quality_predictor" / "1" / "model.onnx").exists():
        pytest.fail("model_repository/quality_predictor/1/model.onnx missing; run `make predictor`")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (the OS may hand the same free port out twice in a row)."""
    from optistop.server.embedded import free_port

    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def start_server(repo: Path, log: Path, load_models: tuple[str, ...] = CORE_MODELS, **cfg: object):
    """An EmbeddedServer (not started: use ``with``) on free loopback ports serving ``load_models`` of
    ``repo`` (explicit model control; empty: every model). Stopping waits 5 s for the models to unload,
    not the production 30 (unloading a dozen models on two busy cores takes longer; the group is killed
    and its /dev/shm regions removed after); the drain itself is tested on `optistop serve`."""
    from optistop.server.embedded import EmbeddedServer, ServerConfig

    http, grpc, metrics = free_ports(3)
    config = ServerConfig(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                          load_models=tuple(load_models), **{"exit_timeout_s": 5, **cfg})
    return EmbeddedServer(config, log_path=log)


# session servers at the end of the run: nothing is in flight, so tritonserver gets 2 s to exit on SIGTERM
# before its process group is killed (and its /dev/shm regions removed), not the 15 s a drain may take:
# unloading 18 models on two busy cores took 11 s of every run's tail (the drain is tested on `optistop serve`)
TEARDOWN_WAIT_S = 2.0


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path):
    """A real tritonserver on a temporary copy of the project's model_repository and cascade.toml
    (copy_repository), on free loopback ports: no test's requests are audited unless the test asks (the
    request's ``audit`` input), and a test that writes the served policy.json (``server.cfg.repository``)
    leaves the tracked files alone."""
    _need_predictor()
    repo = copy_repository(tmp_path_factory.mktemp("served"))
    log = tmp_path_factory.mktemp("triton") / "server.log"
    srv = start_server(repo, log)
    with srv:
        yield srv
        srv.stop(timeout=TEARDOWN_WAIT_S)   # then __exit__'s stop has nothing left to wait for
    # the whole log is kept in the tmp dir for post-mortems; print its path when a test fails
    print(f"tritonserver log: {log}")


# --- building variant repositories -----------------------------------------------------------------

def served_spec_text() -> str:
    """cascade.toml as the test servers serve it: ``audit_rate = 0`` (a test's requests are audited only
    when it sends ``audit``) and the audit log beside the copied spec, never in the checkout."""
    spec = (ROOT / "cascade.toml").read_text(encoding="utf-8")
    if "\n[cascade]\n" not in "\n" + spec:
        pytest.fail("cascade.toml has no [cascade] table to set the test servers' audit_rate in")
    return spec.replace("[cascade]\n", '[cascade]\naudit_rate = 0.0\naudit_log = "audit.jsonl"\n', 1)


def copy_repository(tmp: Path) -> Path:
    """A copy of model_repository at ``tmp/model_repository`` with cascade.toml (served_spec_text) and models/
    beside it, so the relative paths in the configs and the spec resolve as in the checkout."""
    (tmp / "models").symlink_to(ROOT / "models")
    (tmp / "cascade.toml").write_text(served_spec_text(), encoding="utf-8")
    repo = tmp / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("__pycache__", "audit.jsonl*"))
    return repo


def add_parameter(repo: Path, model: str, key: str, value: str) -> None:
    pbtxt.edit(repo / model / "config.pbtxt", parameters={key: value})


def inject_fault(repo: Path, model: str, **params: object) -> None:
    """Make ``model`` the test-only paced stage (tests/repos/paced_stage.py: the production engine wrapped,
    never part of model_repository/): ``fault`` = ``empty`` | ``error`` | ``hang_on_token:<id>``,
    ``prefill_ms`` (per batch), ``token_ms`` (per token)."""
    from tests.repos.paced_stage import install

    install(repo / model, **params)


def variant_model(repo: Path, src: str, name: str) -> Path:
    """A copy of model ``src`` named ``name`` (directory and config name); model.py links are followed."""
    shutil.copytree(repo / src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    pbtxt.edit(repo / name / "config.pbtxt", name=name)
    return repo / name


def scripted_predictor(repo: Path, name: str, constant: str) -> None:
    """A quality predictor answering ``constant`` (``nan`` allowed) for every row; keeps the real one's
    sidecar and policy, which the cascade checks at load."""
    variant_model(repo, "quality_predictor", name)
    shutil.copy(ROOT / "tests" / "repos" / "scripted_predictor.py", repo / name / "1" / "model.py")
    add_parameter(repo, name, "constant", constant)


def variant_cascade(repo: Path, name: str, stages: dict[str, str] | None = None,
                    timeouts: dict[str, float] | None = None, predictor: str | None = None) -> None:
    """A cascade model ``name`` whose spec (``<name>.toml`` beside the repository) swaps stage models
    (``stages``: original triton_model -> variant), sets stage timeouts (by variant name) or a predictor
    model, which it then calls through BLS instead of scoring in its own process."""
    spec = served_spec_text()
    for old, new in (stages or {}).items():
        spec = spec.replace(f'triton_model = "{old}"\n', f'triton_model = "{new}"\n')
    for model, seconds in (timeouts or {}).items():
        spec = spec.replace(f'triton_model = "{model}"\n', f'triton_model = "{model}"\ntimeout_s = {seconds}\n')
    if predictor:
        spec = spec.replace('predictor_model = "quality_predictor"', f'predictor_model = "{predictor}"')
    (repo.parent / f"{name}.toml").write_text(spec)
    model_dir = variant_model(repo, "cascade", name)
    params = {"cascade_spec": f"../../{name}.toml"} | ({"predictor_in_process": "false"} if predictor else {})
    pbtxt.edit(model_dir / "config.pbtxt", parameters=params, require=params)


def _fault_repository(tmp: Path) -> tuple[Path, tuple[str, ...]]:
    repo = copy_repository(tmp)
    # the OpenAI front end's world: the plain names
    inject_fault(repo, "stage_large_stream", token_ms=int(TOKEN_DELAY_S * 1e3))
    inject_fault(repo, "stage_medium", fault="error")
    inject_fault(repo, "stage_medium_stream", fault="error")
    # variants for tests/e2e/test_faults_e2e.py
    variant_model(repo, "stage_small", "stage_small_empty")
    inject_fault(repo, "stage_small_empty", fault="empty")
    variant_model(repo, "stage_large", "stage_large_slow")
    inject_fault(repo, "stage_large_slow", prefill_ms=3000)
    cfg = variant_model(repo, "stage_large", "stage_large_broken") / "config.pbtxt"
    pbtxt.edit(cfg, parameters={"checkpoint_dir": "../../models/tiny/missing"}, require=["checkpoint_dir"])
    shutil.rmtree(repo / "stage_medium_ok", ignore_errors=True)
    shutil.copytree(ROOT / "model_repository" / "stage_medium", repo / "stage_medium_ok")   # without the fault
    pbtxt.edit(repo / "stage_medium_ok" / "config.pbtxt", name="stage_medium_ok")
    scripted_predictor(repo, "quality_predictor_low", "0.05")
    scripted_predictor(repo, "quality_predictor_nan", "nan")
    # stage_small answers nothing, stage_medium errors
    variant_cascade(repo, "cascade_failing", stages={"stage_small": "stage_small_empty"})
    # stage_large takes 3 s against a 1 s timeout; the predictor is never confident (0.05)
    variant_cascade(repo, "cascade_slow", stages={"stage_medium": "stage_medium_ok", "stage_large": "stage_large_slow"},
                    timeouts={"stage_large_slow": 1.0}, predictor="quality_predictor_low")
    variant_cascade(repo, "cascade_nan", stages={"stage_medium": "stage_medium_ok"}, predictor="quality_predictor_nan")
    # stage_large_broken cannot load (its checkpoint is missing)
    variant_cascade(repo, "cascade_broken", stages={"stage_medium": "stage_medium_ok",
                                                    "stage_large": "stage_large_broken"})
    models = tuple(sorted(p.parent.name for p in repo.glob("*/config.pbtxt")))
    assert set(FAULT_CASCADES) <= set(models)
    return repo, models


@pytest.fixture(scope="session")
def fault_server(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator:
    """One server for every fault test and the OpenAI front end (see the module docstring). A model that
    fails to load (stage_large_broken) does not stop the others: readiness is checked per model."""
    _need_predictor()
    tmp = tmp_path_factory.mktemp("faults")
    repo, models = _fault_repository(tmp)
    srv = start_server(repo, tmp / "server.log", load_models=models, exit_on_error=False)
    srv.start()
    try:
        for m in models:
            if m != "stage_large_broken":
                srv.wait_ready(timeout=300, model=m)   # 18 models load together
        yield srv
    finally:
        srv.stop(timeout=TEARDOWN_WAIT_S)
        print(f"fault server log: {tmp / 'server.log'}")
