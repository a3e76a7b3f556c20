"""Process state through psutil: alive (a zombie is not), a server's backend stubs, a process's children,
the resident memory of a process tree, and clearing an orphaned server. Each test builds a real process
tree whose answer is known, and ends every process it started, by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from optistop.reliability.chaos import _children
from optistop.reliability.soak import process_tree_rss_mb
from optistop.server.embedded import EmbeddedServer, ServerConfig, _alive, _is_tritonserver, free_port
from optistop.server.liveness import STUB_BINARY, Stub, stub_processes

SLEEP = "import time; time.sleep(30)"


def _kill(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def _started(*pids: int) -> None:
    """Wait until each process's command line is readable: the parent's Popen returns when exec has begun,
    and the kernel sets the new argv a moment later (an empty /proc/PID/cmdline in between)."""
    for pid in pids:
        assert _wait_for(lambda pid=pid: bool(psutil.Process(pid).cmdline())), f"pid {pid} never started"


def test_alive_running_zombie_and_reaped() -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        assert _alive(p.pid)
        p.kill()  # not waited for: a zombie until reaped, and a zombie has exited
        assert _wait_for(lambda: psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE)
        assert not _alive(p.pid)
    finally:
        p.kill()
        p.wait()
    assert not _alive(p.pid)  # reaped: no such process


def test_is_tritonserver_reads_the_command_line() -> None:
    named = subprocess.Popen([sys.executable, "-c", SLEEP, "--model-repository=x", "/opt/tritonserver/bin/x"])
    other = subprocess.Popen(["sleep", "30"])
    try:
        _started(named.pid, other.pid)
        assert _is_tritonserver(named.pid)
        assert not _is_tritonserver(other.pid)
    finally:
        _kill(named.pid, other.pid)
        named.wait()
        other.wait()
    assert not _is_tritonserver(named.pid)  # gone


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Iterator[dict[str, int]]:
    """A server-like process with two live backend stubs (argv: stub, <repo>/<model>/1/model.py, region), a
    stub that exited and was never reaped (a zombie) and a child that is no stub."""
    tmp = tmp_path_factory.mktemp("tree")
    stub = tmp / STUB_BINARY
    stub.symlink_to(sys.executable)
    for model in ("stage_small", "cascade"):
        (tmp / "repo" / model / "1").mkdir(parents=True)
        (tmp / "repo" / model / "1" / "model.py").write_text(SLEEP + "\n")
    parent = ("import subprocess, sys, time\n"
              "stub, repo = sys.argv[1], sys.argv[2]\n"
              "a = subprocess.Popen([stub, repo + '/stage_small/1/model.py', 'optistop_t_small'])\n"
              "b = subprocess.Popen([stub, repo + '/cascade/1/model.py', 'optistop_t_cascade'])\n"
              "z = subprocess.Popen([stub, repo + '/stage_small/1/model.py', 'optistop_t_zombie'])\n"
              "z.kill()\n"
              "c = subprocess.Popen(['sleep', '30'])\n"
              "print(a.pid, b.pid, z.pid, c.pid, flush=True)\n"
              "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent, str(stub), str(tmp / "repo")], stdout=subprocess.PIPE,
                            text=True)
    small, cascade, zombie, sleeper = map(int, proc.stdout.readline().split())
    pids = {"server": proc.pid, "small": small, "cascade": cascade, "zombie": zombie, "sleeper": sleeper}
    try:
        assert _wait_for(lambda: psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE)
        _started(small, cascade, sleeper)
        yield pids
    finally:
        _kill(small, cascade, sleeper, proc.pid)
        proc.wait()


def test_stub_processes_lists_live_stubs_only(tree: dict[str, int]) -> None:
    assert stub_processes(tree["server"]) == {
        tree["small"]: Stub(tree["small"], "stage_small", "optistop_t_small"),
        tree["cascade"]: Stub(tree["cascade"], "cascade", "optistop_t_cascade"),
    }
    assert stub_processes(tree["small"]) == {}  # a stub has no children


def test_children_with_status_and_argv0(tree: dict[str, int]) -> None:
    kids = {pid: (status, argv0) for pid, status, argv0 in _children(tree["server"])}
    assert set(kids) == {tree["small"], tree["cascade"], tree["zombie"], tree["sleeper"]}
    # live ones (running, sleeping, or in disk sleep while an interpreter loads) by their argv[0]
    assert kids[tree["small"]][0] != psutil.STATUS_ZOMBIE and kids[tree["small"]][1].endswith("/" + STUB_BINARY)
    assert kids[tree["sleeper"]][0] != psutil.STATUS_ZOMBIE and kids[tree["sleeper"]][1] == "sleep"
    # a zombie has no command line left: the kernel's name for it (15 characters) stands in
    assert kids[tree["zombie"]] == (psutil.STATUS_ZOMBIE, STUB_BINARY[:15])


def test_processes_that_are_gone() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    assert stub_processes(p.pid) == {} and _children(p.pid) == [] and process_tree_rss_mb(p.pid) == 0.0


def test_tree_rss_counts_every_descendant() -> None:
    """parent -> middle -> holder of 64 MiB: the tree's resident memory includes the grandchild's."""
    holder = "x = b'1' * (64 << 20); print('held', flush=True); import time; time.sleep(30)"
    middle = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {holder!r}]); "
              "print(p.pid, flush=True); p.wait()")
    top = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {middle!r}]); "
           "p.wait()")
    proc = subprocess.Popen([sys.executable, "-c", top], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "held"
        alone = psutil.Process(grandchild).memory_info().rss / 2**20
        whole = process_tree_rss_mb(proc.pid)
        assert 64 <= alone < 64 + 64            # the bytes object is resident, plus an interpreter
        assert whole >= alone + 2 * 4           # and the two interpreters above it (several MiB each)
        assert process_tree_rss_mb(grandchild) == pytest.approx(alone, rel=0.05)
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            _kill(p.pid)
        _kill(proc.pid)
        proc.wait()


def test_clear_orphan_kills_a_left_tritonserver_and_its_pidfile(tmp_path: Path) -> None:
    """A pidfile whose launcher is gone and whose pid runs a tritonserver command line: killed (by process
    group) and the pidfile removed; a pidfile naming a process that is no tritonserver leaves it alone."""
    port = free_port()
    srv = EmbeddedServer(ServerConfig(http_port=port), workdir=tmp_path)
    srv.pidfile.parent.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = subprocess.Popen([sys.executable, "-c", SLEEP, "tritonserver"], start_new_session=True)
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        _started(orphan.pid, other.pid)
        srv.pidfile.write_text(json.dumps({"pid": orphan.pid, "owner": gone.pid}))
        srv._clear_orphan()
        assert orphan.wait(5) == -signal.SIGKILL and not srv.pidfile.exists()
        srv.pidfile.write_text(json.dumps({"pid": other.pid, "owner": gone.pid}))
        srv._clear_orphan()
        assert other.poll() is None and not srv.pidfile.exists()
    finally:
        _kill(orphan.pid, other.pid)
        orphan.wait()
        other.wait()
