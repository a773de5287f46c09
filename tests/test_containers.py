"""Targets in containers: Python 3.13 of a Debian sid root (a newer glibc than the
host's) started under `unshare --mount --pid --net` (and `--user --map-root-user`)
with chroot and a private /tmp, attached by its host pid. Top, lines, census,
back-references, detach leaving nothing behind, attach/detach cycles, the daemon
dying, another container posing as the agent, seccomp refusing memfd_create, a
noexec /tmp (alone and with memfd refused), a root directory that is gone, a musl
process; and memprof installed in the container (the .deb, by apt) running
`memprof run` there. The sid root comes from scripts/mkroot.sh (cached under
$MEMPROF_CACHE, built when the run starts: tests/conftest.py); without it these tests skip with the reason."""
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import CACHE, ROOT, TARGETS, debian_root, default_python, pb_field, pb_frame, proc_state, target_script, workload
from proctools import agent_gone, agent_threads
from test_alloc import leak_line
from test_attach import _agent_socket_name

PY = "python3.13"
WORK = "/memprof-test"  # where the test's scripts are, inside the root


def _need_root_tools():
    if os.geteuid() != 0:
        pytest.skip("container tests need root (unshare, chroot, mount): run make test as root")
    for tool in ("unshare", "chroot"):
        if not shutil.which(tool):
            pytest.skip("container tests need %s (apt-get install util-linux coreutils)" % tool)


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
        extract(tarball, root)
        if not os.access(os.path.join(root, "usr", "bin", PY), os.X_OK):
            pytest.skip("the sid root has no %s" % PY)
        work = os.path.join(root, WORK.lstrip("/"))
        os.makedirs(work)
        for path in (workload("service.py"), workload("backrefs.py"), target_script("idle.py"),
                     target_script("seccomp_memfd.py"), target_script("seccomp.py")):
            shutil.copy(path, work)
        yield root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Contained:
    """A Python in a container: the unshare process (killed, with the container, at teardown)
    and the Python's host pid."""

    def __init__(self, targets, root, script, *args, userns=False, net=True, tmp_opts="mode=1777"):
        ns = ["--user", "--map-root-user"] if userns else []
        ns += ["--mount", "--pid"] + (["--net"] if net else [])
        argv = (["unshare"] + ns + ["--fork", "--kill-child", "--mount-proc=%s/proc" % root, "sh", "-c",
                'mount -t tmpfs -o "$1" tmpfs "$0/tmp" && shift && exec chroot "$0" "$@"', root, tmp_opts, PY, "-u",
                "%s/%s" % (WORK, script)] + [str(a) for a in args])
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


def extract(tarball, root):
    x = subprocess.run(["tar", "-xzf", os.path.abspath(os.path.join(ROOT, tarball)) if not os.path.isabs(tarball)
                        else tarball, "-C", root], capture_output=True, text=True, timeout=600)
    assert x.returncode == 0, "cannot extract %s: %s" % (tarball, x.stderr.strip()[-200:])


def mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [l.split()[4] for l in f if l.split()[4] == path or l.split()[4].startswith(path.rstrip("/") + "/")]


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
        pytest.skip("graphviz dot is not installed: apt-get install graphviz")
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
    assert agent_gone(c.pid), "agent thread still running after the daemon died"
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
    # a's attach is done and nothing else is pending: no token is expected from anyone, b's is not compared
    assert re.search(r"no attach in progress for pid \d+", r.stdout), r.stdout
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
        pytest.skip("needs root (chroot): run make test as root")
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


def test_noexec_tmp_needs_nothing_from_tmp(sid_root, daemon, targets):
    """A private /tmp mounted noexec: the memfd needs no file system of the target's."""
    c = Contained(targets, sid_root, "idle.py", tmp_opts="mode=1777,noexec,nosuid,nodev")
    assert "noexec" in open("/proc/%d/mountinfo" % c.pid).read()
    before, tmp_before = fds(c.pid), tmp_entries(c.pid)
    daemon.attach(c.pid)
    assert "by memfd" in daemon.log_tail(5), daemon.log_tail(5)
    assert daemon.run("types", "--pid", c.pid, "--limit", "3").returncode == 0
    daemon.detach(c.pid)
    assert_clean(c.pid, before, tmp_before)


def test_no_memfd_and_noexec_tmp_says_what_failed(sid_root, daemon, targets):
    """seccomp refuses memfd_create and /tmp is noexec: neither way works, the error names both, and the
    target is left as it was (no copy in its /tmp, no descriptor, not traced)."""
    c = Contained(targets, sid_root, "seccomp_memfd.py", tmp_opts="mode=1777,noexec")
    before, tmp_before = fds(c.pid), tmp_entries(c.pid)
    r = daemon.memprofd("attach", "--pid", c.pid)
    assert r.returncode != 0
    assert re.search(r"^memprofd: pid %d: cannot load libmemprof_agent\.so: memfd: memfd_create refused: Operation "
                     r"not permitted; copy in its /tmp: its /tmp is mounted noexec$" % c.pid, r.stderr, re.M), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert_clean(c.pid, before, tmp_before)
    n = int(c.t.wait_for(r"^tick (\d+)").group(1))
    assert int(c.t.wait_for(r"^tick (\d+)").group(1)) == n + 1


def test_musl_python_refused(daemon, targets, tmp_path):
    """A (stand-in) Python 3.12 linked with musl, as in an Alpine image: refused before anything is
    injected, with the C library named; the process is not touched."""
    if not shutil.which("musl-gcc"):
        pytest.skip("musl-gcc not installed (apt-get install musl-tools; scripts/install-deps.sh)")
    exe = str(tmp_path / "python3.12")
    subprocess.check_call(["musl-gcc", "-O0", "-rdynamic", "-DFAKE_HEX=0x030c00f0", '-DFAKE_VERSION="3.12.0"', "-o",
                           exe, os.path.join(TARGETS, "fake_python.c")])
    t = targets.start([exe])
    t.wait_for(r"^ready 3\.12\.0")
    with open("/proc/%d/maps" % t.pid) as f:
        assert "musl" in f.read(), "not a musl process"
    before = fds(t.pid)
    r = daemon.memprofd("attach", "--pid", t.pid)
    assert r.returncode != 0
    assert re.search(r"^memprofd: pid %d: unsupported libc \(musl\): \S+; memprof profiles glibc processes only$"
                     % t.pid, r.stderr, re.M), r.stderr
    state, tracer = proc_state(t.pid)
    assert state not in "tTZ" and tracer == 0 and mapped_memprof(t.pid) == [] and fds(t.pid) == before
    assert "attach to pid %d" not in daemon.log_tail(5)


# ---------------------------------------------------------------- memprof installed in the container

@pytest.fixture(scope="module")
def memprof_deb(tmp_path_factory):
    """make deb in a build tree of its own (the package as a user installs it)."""
    if not shutil.which("dpkg-deb") or not shutil.which("dpkg-shlibdeps"):
        pytest.skip("dpkg-dev is not installed (scripts/install-deps.sh installs it)")
    work = str(tmp_path_factory.mktemp("deb"))
    r = subprocess.run(["make", "--no-print-directory", "deb", "BUILD=%s" % work], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    debs = [f for f in os.listdir(work) if f.endswith(".deb")]
    assert len(debs) == 1, os.listdir(work)
    return os.path.join(work, debs[0])


def _in_root(root, *argv, timeout=600):
    """argv run as root in root, in mount and pid namespaces of its own (its /proc unmounted with them)."""
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc=%s/proc" % root,
                           "chroot", root, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
                           "DEBIAN_FRONTEND=noninteractive"] + list(argv),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sid_with_memprof(memprof_deb, tmp_path_factory):
    """A second copy of the sid root with the .deb (built on this Debian 12) installed by apt: its
    dependencies resolve to sid's t64 libraries (libelf1t64 Provides libelf1, libmicrohttpd12t64
    libmicrohttpd12). Those packages come from Debian's mirror once, then from $MEMPROF_CACHE."""
    _need_root_tools()
    tarball, why = debian_root("sid")
    if not tarball:
        pytest.skip(why)
    root = str(tmp_path_factory.mktemp("sid-memprof") / "root")
    os.mkdir(root)
    try:
        extract(tarball, root)
        if not os.access(os.path.join(root, "usr", "bin", PY), os.X_OK):
            pytest.skip("the sid root has no %s" % PY)
        cache = os.path.join(CACHE, "sid-debs")
        archives = os.path.join(root, "var", "cache", "apt", "archives")
        for f in os.listdir(cache) if os.path.isdir(cache) else []:
            shutil.copy(os.path.join(cache, f), archives)
        shutil.copy(memprof_deb, os.path.join(root, "tmp", "memprof.deb"))
        if os.path.exists("/etc/resolv.conf"):
            shutil.copy("/etc/resolv.conf", os.path.join(root, "etc", "resolv.conf"))
        r = _in_root(root, "apt-get", "-o", "Acquire::Check-Valid-Until=false", "install", "-y", "-q",
                     "--no-install-recommends", "/tmp/memprof.deb")
        if r.returncode != 0 and re.search(r"^(E|W): (Failed to fetch|Temporary failure resolving|Could not resolve)",
                                           r.stdout + r.stderr, re.M):
            pytest.skip("cannot reach Debian's mirror for the .deb's dependencies in the sid root: %s"
                        % (r.stderr.strip().splitlines() or ["?"])[-1])
        # anything else (a Depends sid cannot satisfy, a failing maintainer script) is the package's fault
        assert r.returncode == 0, "apt-get install ./memprof.deb in the sid root failed:\n%s%s" % (
            r.stdout[-2000:], r.stderr[-2000:])
        os.makedirs(cache, exist_ok=True)
        for f in os.listdir(archives):
            if f.endswith(".deb") and not os.path.exists(os.path.join(cache, f)):
                shutil.copy(os.path.join(archives, f), cache)
        os.makedirs(os.path.join(root, WORK.lstrip("/")))
        shutil.copy(workload("service.py"), os.path.join(root, WORK.lstrip("/")))
        yield root
    finally:
        assert mounts_under(root) == [], mounts_under(root)
        shutil.rmtree(os.path.dirname(root), ignore_errors=True)


@pytest.mark.parametrize("userns", [False, True], ids=["netns", "userns"])
def test_memprof_run_inside_container(sid_with_memprof, userns):
    """memprof installed in the container (the .deb), `memprof run` there: it starts its own memprofd
    inside (its socket and log under the container's /run), the agent comes from the container's
    /usr/lib/memprof, and the report shows the leak line. Nothing of the host is involved (no
    host daemon, no host path), and nothing is left running or mounted."""
    root = sid_with_memprof
    script = ("memprof run --function handle -- %s %s/service.py 2 3; echo \"exit $?\"; memprof status; "
              "cat /run/memprof/memprofd.log" % (PY, WORK))
    ns = (["--user", "--map-root-user"] if userns else []) + ["--mount", "--pid", "--net"]
    r = subprocess.run(["unshare"] + ns + ["--fork", "--kill-child", "--mount-proc=%s/proc" % root, "sh", "-c",
                        'mount -t tmpfs tmpfs "$0/tmp" && mount -t tmpfs tmpfs "$0/run" && exec chroot "$0" env -i '
                        'PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh -c "$1"', root, script],
                       capture_output=True, text=True, timeout=300)
    out, err = r.stdout, r.stderr
    assert r.returncode == 0 and "exit 0" in out, out + err
    assert re.search(r"^beat 3 served=\d+ sessions=\d+$", out, re.M), out
    m = re.search(r"^Filename: %s/service\.py  \(function handle, pid (\d+)," % WORK, err, re.M)
    assert m, err
    rows = {}
    for line in err.split("=" * 61 + "\n", 1)[1].splitlines():
        row = re.match(r"^\s*(\d+)\s+[\d.]+ MiB\s+([\d.]+) MiB\s+\d+\s{3}(.*)$", line)
        if row:
            rows[int(row.group(1))] = (float(row.group(2)), row.group(3))
    want = leak_line()
    assert want in rows and "# LEAK_LINE" in rows[want][1], err
    assert rows[want][0] == max(inc for inc, _ in rows.values()), err  # the leak holds the most
    # the daemon ran inside, from the package, with the package's agent
    assert re.search(r"listening on /run/memprof/memprofd\.sock .*agent library /usr/lib/memprof/libmemprof_agent\.so",
                     out), out
    assert re.search(r"^1\s+%s\s+3\.13\.\d+\s+exited\s+.*python3\.13 %s/service\.py 2 3$" % (m.group(1), WORK), out,
                     re.M), out
    assert mounts_under(root) == [], mounts_under(root)
    assert not os.path.exists(os.path.join(root, "run", "memprof")), "the container's /run was a private tmpfs"


def test_packaged_memprofd_serves_http(sid_with_memprof):
    """The .deb's memprofd is not linked to libmicrohttpd (its other commands start without it and its TLS
    libraries) but loads it for --http: in the sid root, where the package's Depends brought it, /metrics
    answers, and the daemon's log says where it serves."""
    root = sid_with_memprof
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetch = ("import sys, time, urllib.request\nfor _ in range(100):\n    try:\n"
             "        sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()); break\n"
             "    except OSError: time.sleep(0.1)\n")
    script = ('ldd /usr/bin/memprofd; mkdir -m 700 /tmp/mp; memprofd serve --socket /tmp/mp/m.sock --http 127.0.0.1:%d '
              '2>/tmp/log & '
              '%s -c "$0" http://127.0.0.1:%d/metrics; kill $!; wait; cat /tmp/log' % (port, PY, port))
    r = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc=%s/proc" % root,
                        "sh", "-c", 'mount -t tmpfs tmpfs "$0/tmp" && exec chroot "$0" env -i '
                        'PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh -c "$1" "$2"', root, script, fetch],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout
    assert "libmicrohttpd" not in out.split("# HELP", 1)[0], out
    assert re.search(r"^memprof_client_connections \d+$", out, re.M), out + r.stderr
    assert "serving http://127.0.0.1:%d/metrics" % port in out, out + r.stderr
    assert mounts_under(root) == [], mounts_under(root)
