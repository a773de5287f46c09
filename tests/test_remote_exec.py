"""PEP 768 attach (memprofd attach --method remote-exec, the default on 3.14+):
the interpreter loads the agent at a safe point of its main thread, nothing is
ptrace-stopped; the fallbacks to ptrace (remote debugging disabled, main thread
blocked in C) and the refusals when remote-exec is asked for explicitly."""
import glob
import os
import re
import time

import pytest

from conftest import agent_mapped, interpreter, proc_state, target_script, workload

REMOTE_EXEC_IDS = ["sid-3.14", "sid-3.15"]
ATTACHED = r"attached to pid %d: Python [\d.]+, target stopped ([\d.]+) ms, attach took \d+ ms"
LOADER = r"\(remote-exec: its main thread ran the loader for ([\d.]+) ms\)"
BLOCKED = ("import sys, time\nprint('ready', flush=True)\ntime.sleep(%d)\nprint('woke', flush=True)\n"
           "time.sleep(2)\nprint('done', flush=True)\ntime.sleep(120)\n")


def leftovers():
    """What a remote-exec attach may leave in /tmp (the target's /tmp here)."""
    return glob.glob("/tmp/.memprof-*")


def agents_mapped(pid):
    """Distinct agent files mapped in pid."""
    with open("/proc/%d/maps" % pid) as f:
        return {line.split(None, 5)[-1].strip() for line in f if "libmemprof_agent" in line}


@pytest.fixture
def no_leftovers():
    before = set(leftovers())
    yield
    left = set(leftovers()) - before
    if left:
        # another run's remote-exec attach on this machine has its file for milliseconds: a leftover is one that stays
        time.sleep(3)
        left &= set(leftovers())
    assert not left, "files left in /tmp: %s" % left


@pytest.mark.parametrize("pyid", REMOTE_EXEC_IDS)
def test_default_attach_is_remote_exec(pyid, daemon, targets, no_leftovers):
    """auto on 3.14+: no ptrace stop, the agent reports allocations, detach unloads it."""
    exe, version = interpreter(pyid)
    t = targets.start([exe, "-u", workload("service.py"), "4"])
    t.wait_for(r"^ready \d+")
    t.wait_for(r"^beat 1 ")
    r = daemon.attach(t.pid)
    m = re.search(ATTACHED % t.pid, r.stdout)
    assert m and float(m.group(1)) == 0.0, r.stdout
    assert re.search(LOADER, r.stdout), r.stdout
    assert r.stderr == "", r.stderr
    assert proc_state(t.pid)[1] == 0
    assert len(agents_mapped(t.pid)) == 1
    deadline = time.time() + 30
    while True:  # the agent tracks: samples arrive
        out = daemon.run("top", "--pid", t.pid).stdout
        if "service.py" in out:
            break
        assert time.time() < deadline, out
        time.sleep(0.3)
    daemon.detach(t.pid)
    assert not agent_mapped(t.pid)
    t.wait_for(r"^beat \d+ ")  # carries on


@pytest.mark.parametrize("pyid", REMOTE_EXEC_IDS)
@pytest.mark.parametrize("how", ["-X", "env"])
def test_disabled_remote_debug_falls_back_to_ptrace(pyid, how, daemon, targets, no_leftovers):
    exe, version = interpreter(pyid)
    argv = [exe] + (["-X", "disable-remote-debug"] if how == "-X" else []) + ["-u", target_script("idle.py")]
    env = dict(os.environ, PYTHON_DISABLE_REMOTE_DEBUG="1") if how == "env" else None
    t = targets.start(argv, env=env)
    t.wait_for(r"^ready")
    r = daemon.attach(t.pid)
    assert re.search(ATTACHED % t.pid, r.stdout) and not re.search(LOADER, r.stdout), r.stdout
    assert "remote debugging is disabled in it (-X disable-remote-debug or PYTHON_DISABLE_REMOTE_DEBUG)" in r.stderr
    assert "attached by ptrace" in r.stderr, r.stderr
    daemon.detach(t.pid)
    assert not agent_mapped(t.pid)
    t.wait_for(r"^tick")


@pytest.mark.parametrize("pyid", REMOTE_EXEC_IDS)
def test_forced_remote_exec_with_remote_debug_disabled_names_the_flag(pyid, daemon, targets, no_leftovers):
    exe, version = interpreter(pyid)
    t = targets.start([exe, "-X", "disable-remote-debug", "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    r = daemon.memprofd("attach", "--pid", t.pid, "--method", "remote-exec")
    assert r.returncode != 0 and r.stdout == "", (r.stdout, r.stderr)
    assert re.fullmatch(r"memprofd: pid %d: cannot attach by remote-exec: remote debugging is disabled in it "
                        r"\(-X disable-remote-debug or PYTHON_DISABLE_REMOTE_DEBUG\)\n" % t.pid, r.stderr), r.stderr
    assert not agent_mapped(t.pid) and proc_state(t.pid)[1] == 0
    t.wait_for(r"^tick")


@pytest.mark.parametrize("pyid", REMOTE_EXEC_IDS)
def test_blocked_main_thread_falls_back_to_ptrace(pyid, daemon, targets, no_leftovers):
    """The main thread sleeps in C for 8 s: after 2 s the request is withdrawn and
    ptrace loads the agent; when the thread wakes, the script does not run (one agent)."""
    exe, version = interpreter(pyid)
    t = targets.start([exe, "-u", "-c", BLOCKED % 8])
    t.wait_for(r"^ready")
    r = daemon.attach(t.pid)
    assert re.search(ATTACHED % t.pid, r.stdout) and not re.search(LOADER, r.stdout), r.stdout
    assert "did not reach a safe point within 2 s" in r.stderr and "attached by ptrace" in r.stderr, r.stderr
    t.wait_for(r"^woke", timeout=30)
    t.wait_for(r"^done", timeout=30)
    assert len(agents_mapped(t.pid)) == 1
    daemon.detach(t.pid)
    assert not agent_mapped(t.pid)


@pytest.mark.parametrize("pyid", REMOTE_EXEC_IDS)
def test_forced_remote_exec_on_blocked_main_thread_is_withdrawn(pyid, daemon, targets, no_leftovers):
    exe, version = interpreter(pyid)
    t = targets.start([exe, "-u", "-c", BLOCKED % 6])
    t.wait_for(r"^ready")
    r = daemon.memprofd("attach", "--pid", t.pid, "--method", "remote-exec")
    assert r.returncode != 0, r.stdout
    assert "its main thread did not reach a safe point within 2 s" in r.stderr, r.stderr
    assert "--method ptrace" in r.stderr, r.stderr
    t.wait_for(r"^woke", timeout=30)
    t.wait_for(r"^done", timeout=30)  # after the next safe points: the withdrawn script never ran
    assert not agent_mapped(t.pid)
    assert "not attached" in daemon.run("top", "--pid", t.pid).stderr


@pytest.mark.parametrize("pyid", REMOTE_EXEC_IDS)
def test_method_ptrace_forces_the_old_path(pyid, daemon, targets, no_leftovers):
    exe, version = interpreter(pyid)
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    r = daemon.attach(t.pid, "--method", "ptrace")
    m = re.search(ATTACHED % t.pid, r.stdout)
    assert m and float(m.group(1)) > 0 and not re.search(LOADER, r.stdout), r.stdout
    assert r.stderr == "", r.stderr
    daemon.detach(t.pid)
    t.wait_for(r"^tick")


@pytest.mark.parametrize("pyid", ["sid-3.13", "pyenv-3.13", "debian-3.11"])
def test_remote_exec_before_3_14_is_refused(pyid, daemon, targets):
    exe, version = interpreter(pyid)
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    r = daemon.memprofd("attach", "--pid", t.pid, "--method", "remote-exec")
    minor = ".".join(version.split(".")[:2])
    assert r.returncode != 0 and ("Python %s has no remote debugging (PEP 768 is 3.14+)" % minor) in r.stderr, \
        r.stderr
    assert not agent_mapped(t.pid)
    r = daemon.attach(t.pid)  # auto: ptrace, without a note on versions that have no remote-exec
    assert r.stderr == "", r.stderr
    daemon.detach(t.pid)


def test_unknown_method_is_refused(daemon):
    r = daemon.memprofd("attach", "--pid", os.getpid(), "--method", "gdb")
    assert r.returncode == 2 and "--method needs one of auto, ptrace, remote-exec, got 'gdb'" in r.stderr, r.stderr


@pytest.mark.parametrize("pyid", ["sid-3.14"])
def test_audit_hook_refusing_the_script_is_reported(pyid, daemon, targets, no_leftovers):
    """The interpreter takes the request but its audit hook refuses to run the
    script: after the attach timeout, one line saying so; nothing loaded or left."""
    exe, version = interpreter(pyid)
    code = ("import sys, time\n"
            "def hook(event, args):\n"
            "    if event == 'cpython.remote_debugger_script':\n"
            "        raise RuntimeError('no remote scripts here')\n"
            "sys.addaudithook(hook)\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    time.sleep(0.05)\n")
    t = targets.start([exe, "-u", "-c", code])
    t.wait_for(r"^ready")
    r = daemon.memprofd("attach", "--pid", t.pid, timeout=90)
    assert r.returncode != 0, r.stdout
    assert "its interpreter took the remote-exec request but no agent connected" in r.stderr, r.stderr
    assert not agent_mapped(t.pid) and proc_state(t.pid)[0] in ("S", "R")
