"""Targets in containers: Python 3.13 of a Debian sid root (a newer glibc than the
host's) started under `unshare --mount --pid --net` (and `--user --map-root-user`)
with chroot and a private /tmp, attached by its host pid. Top, lines, census,
back-references, detach leaving nothing behind, attach/detach cycles, the daemon
dying, another container posing as the agent, seccomp refusing memfd_create, a
root directory that is gone. The sid root comes from scripts/mkroot.sh (cached
under $MEMPROF_CACHE); without it these tests skip with the reason."""
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import ROOT, TARGETS, debian_root, default_python, pb_field, pb_frame, proc_state, target_script, workload
from test_attach import _agent_socket_name, agent_threads

PY = "python3.13"
WORK = "/memprof-test"  # where the test's scripts are, inside the root


def _need_root_tools():
    if os.geteuid() != 0:
        pytest.skip("container tests need root (unshare, chroot, mount)")
    for tool in ("unshare", "chroot"):
        if not shutil.which(tool):
            pytest.skip("container tests need %s" % tool)


@pytest.fixture(scope="session")
def sid_root():
    """The Debian sid root, extracted once into a temporary directory (removed at the end)."""
    _need_root_tools()
    tarball, why = debian_root("sid")
    if not tarball:
        pytest.skip(why)
    tmp = tempfile.mkdtemp(prefix="sid-root-")
    root = os.path.join(tmp, "root")
    os.mkdir(root)
    try:
        x = subprocess.run(["tar", "-xzf", os.path.abspath(os.path.join(ROOT, tarball)) if not os.path.isabs(tarball)
                            else tarball, "-C", root], capture_output=True, text=True, timeout=600)
        if x.returncode != 0:
            pytest.skip("cannot extract %s: %s" % (tarball, x.stderr.strip()[-200:]))
        if not os.access(os.path.join(root, "usr", "bin", PY), os.X_OK):
            pytest.skip("the sid root has no %s" % PY)
        work = os.path.join(root, WORK.lstrip("/"))
        os.makedirs(work)
        for path in (workload("service.py"), workload("backrefs.py"), target_script("idle.py"),
                     target_script("seccomp_memfd.py")):
            shutil.copy(path, work)
        yield root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Contained:
    """A Python in a container: the unshare process (killed, with the container, at teardown)
    and the Python's host pid."""

    def __init__(self, targets, root, script, *args, userns=False, net=True):
        ns = ["--user", "--map-root-user"] if userns else []
        ns += ["--mount", "--pid"] + (["--net"] if net else [])
        argv = (["unshare"] + ns + ["--fork", "--kill-child", "--mount-proc=%s/proc" % root, "sh", "-c",
                'mount -t tmpfs tmpfs "$0/tmp" && exec chroot "$0" "$@"', root, PY, "-u", "%s/%s" % (WORK, script)]
                + [str(a) for a in args])
        self.t = targets.start(argv)
        self.t.wait_for(r"^ready \d+")
        self.pid = self._python_pid()

    def _python_pid(self):
        with open("/proc/%d/task/%d/children" % (self.t.pid, self.t.pid)) as f:
            kids = [int(k) for k in f.read().split()]
        assert len(kids) == 1, kids
        with open("/proc/%d/cmdline" % kids[0]) as f:
            assert PY in f.read()
        return kids[0]


def fds(pid):
    return sorted(os.listdir("/proc/%d/fd" % pid), key=int)


def mapped_memprof(pid):
    with open("/proc/%d/maps" % pid) as f:
        return [l.strip() for l in f if "libmemprof_agent" in l or ".memprof-" in l]


def tmp_entries(pid):
    return sorted(os.listdir("/proc/%d/root/tmp" % pid))


def assert_clean(pid, fds_before, tmp_before):
    state, tracer = proc_state(pid)
    assert tracer == 0 and state != "t", "pid %d left traced (%s, tracer %d)" % (pid, state, tracer)
    assert mapped_memprof(pid) == [], mapped_memprof(pid)
    assert fds(pid) == fds_before, "descriptors before %s, after %s" % (fds_before, fds(pid))
    assert tmp_entries(pid) == tmp_before


def leak_line():
    with open(workload("service.py")) as f:
        for n, text in enumerate(f, 1):
            if "# LEAK_LINE" in text:
                return n
    raise AssertionError("no LEAK_LINE in service.py")


@pytest.mark.parametrize("userns", [False, True], ids=["netns", "userns"])
def test_service_in_container(sid_root, daemon, targets, userns):
    c = Contained(targets, sid_root, "service.py", 4, userns=userns)
    with open("/proc/%d/status" % c.pid) as f:
        assert re.search(r"^NSpid:\s+%d\s+1$" % c.pid, f.read(), re.M)
    before, tmp_before = fds(c.pid), tmp_entries(c.pid)
    r = daemon.attach(c.pid)
    assert "attached to pid %d: Python 3.13" % c.pid in r.stdout
    assert "by memfd" in daemon.log_tail(5), daemon.log_tail(5)

    st = [s for s in json.loads(daemon.run("status", "--json").stdout) if s["pid"] == c.pid][-1]
    assert st["state"] == "attached" and st["ns_pid"] == 1 and st["container"], st
    assert re.search(r"^\d+\s+%d\s+3\.13\.\d+\s+attached .*\[pid 1 in \S+\] python3\.13" % c.pid,
                     daemon.run("status").stdout, re.M)
    ps = [p for p in json.loads(daemon.run("ps", "--json").stdout) if p["pid"] == c.pid]
    assert ps and ps[0]["ns_pid"] == 1 and ps[0]["attached"], ps

    want = leak_line()
    deadline = time.time() + 15
    while True:
        r = daemon.run("top", "--pid", c.pid, "--once", "--json", "--by", "line", "--limit", "3")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)["rows"]
        if (rows and rows[0]["file"] == WORK + "/service.py" and rows[0]["line"] == want) or time.time() > deadline:
            break
        time.sleep(1)
    assert rows[0]["file"] == WORK + "/service.py" and rows[0]["line"] == want, rows
    text = daemon.run("top", "--pid", c.pid, "--once", "--by", "line").stdout
    assert re.search(r"^pid %d  \[pid 1 in \S+\] python3\.13 " % c.pid, text, re.M), text

    # the source exists only in the container: read through /proc/PID/root
    assert not os.path.exists(WORK + "/service.py")
    lines = daemon.run("lines", "--pid", c.pid, "--function", "handle")
    assert lines.returncode == 0, lines.stderr
    assert re.search(r"^\s+%d\s+[\d.]+ MiB\s+[\d.]+ MiB\s+\d+\s+.*# LEAK_LINE" % want, lines.stdout, re.M), lines.stdout

    daemon.detach(c.pid)
    assert_clean(c.pid, before, tmp_before)
    assert "ERROR" not in c.t.output() and c.t.proc.poll() is None


def test_census_and_backrefs_png(sid_root, daemon, targets, tmp_path):
    if not shutil.which("dot"):
        pytest.skip("graphviz dot not installed")
    c = Contained(targets, sid_root, "backrefs.py")
    x = re.search(r"x=(0x[0-9a-f]+)", c.t.lines[-1]).group(1)
    daemon.attach(c.pid)
    out = daemon.run("types", "--pid", c.pid, "--limit", "50")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^list\s+\d+\s+", out.stdout, re.M) and "GIL held" in out.stdout, out.stdout
    png = str(tmp_path / "x.png")
    r = daemon.run("backrefs", "--pid", c.pid, "--addr", x, "-o", png)
    assert r.returncode == 0, r.stderr
    data = open(png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    daemon.detach(c.pid)
    assert mapped_memprof(c.pid) == []


def test_twenty_attach_detach_cycles(sid_root, daemon, targets):
    c = Contained(targets, sid_root, "idle.py", userns=True)
    before, tmp_before = fds(c.pid), tmp_entries(c.pid)
    for i in range(20):
        daemon.attach(c.pid)
        assert len(agent_threads(c.pid)) == 1
        daemon.detach(c.pid)
        assert mapped_memprof(c.pid) == [], "cycle %d: %s" % (i, mapped_memprof(c.pid))
    assert_clean(c.pid, before, tmp_before)
    n = int(c.t.wait_for(r"^tick (\d+)").group(1))
    assert int(c.t.wait_for(r"^tick (\d+)").group(1)) == n + 1


def test_daemon_killed_target_unharmed(sid_root, fresh_daemon, targets):
    c = Contained(targets, sid_root, "service.py", 2)
    c.t.wait_for(r"^beat 1 ")
    fresh_daemon.attach(c.pid)
    fresh_daemon.proc.kill()
    fresh_daemon.proc.wait()
    deadline = time.time() + 5
    while agent_threads(c.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert agent_threads(c.pid) == [], "agent thread still running after the daemon died"
    b1 = int(c.t.wait_for(r"^beat (\d+)").group(1))
    assert int(c.t.wait_for(r"^beat (\d+)").group(1)) == b1 + 1
    # a new daemon finds the library still loaded and starts it again; detach unloads it
    fresh_daemon.start()
    fresh_daemon.attach(c.pid)
    assert "by already loaded" in fresh_daemon.log_tail(5)
    fresh_daemon.detach(c.pid)
    assert mapped_memprof(c.pid) == []
    assert "ERROR" not in c.t.output() and c.t.proc.poll() is None


def test_other_container_cannot_pose_as_agent(sid_root, daemon, targets):
    a = Contained(targets, sid_root, "idle.py")
    daemon.attach(a.pid)
    # b shares the daemon's network namespace (it can reach the agent socket), not its pids
    b = Contained(targets, sid_root, "idle.py", net=False)
    name = _agent_socket_name(daemon)
    info = pb_field(1, 0, a.pid)  # AgentInfo.pid: a's
    hello = pb_field(1, 0, 1) + pb_field(2, 0, 1) + pb_field(3, 2, b"0" * 32) + pb_field(4, 2, info)
    code = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(5)\n"
            "s.connect('\\0' + sys.argv[1])\ns.sendall(bytes.fromhex(sys.argv[2]))\nr = b''\n"
            "while True:\n    c = s.recv(4096)\n    if not c: break\n    r += c\nprint(r)\n")
    r = subprocess.run(["nsenter", "-t", str(b.pid), "-m", "-p", "-r", "-w", PY, "-c", code, name,
                        pb_frame(pb_field(1, 2, hello)).hex()], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "no attach in progress" in r.stdout or "bad token" in r.stdout, r.stdout
    assert re.search(r"refused agent connection from pid \d+", daemon.log_tail(10))
    # a's session is untouched and still answers
    st = [s for s in json.loads(daemon.run("status", "--json").stdout) if s["pid"] == a.pid][-1]
    assert st["state"] == "attached"
    assert daemon.run("types", "--pid", a.pid, "--limit", "3").returncode == 0
    daemon.detach(a.pid)


def test_seccomp_refusing_memfd_falls_back_to_tmp_copy(sid_root, daemon, targets):
    c = Contained(targets, sid_root, "seccomp_memfd.py")
    before, tmp_before = fds(c.pid), tmp_entries(c.pid)
    daemon.attach(c.pid)
    log = daemon.log_tail(5)
    assert "by a copy in its /tmp (memfd: memfd_create refused: Operation not permitted)" in log, log
    assert tmp_entries(c.pid) == tmp_before, "the copy stayed in its /tmp"
    assert daemon.run("types", "--pid", c.pid, "--limit", "3").returncode == 0
    daemon.detach(c.pid)
    assert_clean(c.pid, before, tmp_before)


def test_root_gone_is_refused_clearly(daemon, targets, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot)")
    empty = tmp_path / "empty-root"
    empty.mkdir()
    t = targets.start([default_python(), "-u", target_script("chroot_idle.py"), str(empty)])
    t.wait_for(r"^ready")
    empty.rmdir()
    r = daemon.memprofd("attach", "--pid", t.pid)
    assert r.returncode != 0
    assert "pid %d: its root directory %s (deleted) is gone; its files cannot be read" % (t.pid, empty) in r.stderr, \
        r.stderr
    assert mapped_memprof(t.pid) == [] and proc_state(t.pid)[1] == 0
