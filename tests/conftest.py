"""Fixtures for memprof's integration tests: the interpreters on this machine,
a private daemon, and targets that are always cleaned up (killed by pid, never
left ptrace-stopped)."""
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from pythons import INTERPRETERS, SUPPORTED_IDS, UNSUPPORTED_IDS, _version_of, report_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.abspath(os.environ.get("MEMPROF_BUILD", os.path.join(ROOT, "build")))  # make test-asan: build/asan
MEMPROFD = os.path.join(BUILD, "memprofd")
MEMPROF = os.path.join(BUILD, "memprof")
WORKLOADS = os.path.join(ROOT, "tests", "workloads")
TARGETS = os.path.join(ROOT, "tests", "targets")

# Debian roots (scripts/mkroot.sh: sid for Python 3.13-3.15 and the container tests) are cached in $MEMPROF_CACHE,
# by default /var/cache/memprof (where CI keeps them; building one needs root anyway). A missing root is built
# there when the run starts (a few minutes, once, from Debian's mirror; mkroot's progress is printed); with
# MEMPROF_OFFLINE=1 nothing is downloaded: a root already in the cache (or in build/cache, mkroot.sh's own
# default) is used, and without one its tests are skipped, saying so.
CACHE = os.environ.get("MEMPROF_CACHE") or "/var/cache/memprof"
OFFLINE = os.environ.get("MEMPROF_OFFLINE", "") not in ("", "0")


_ROOTS = {}


def debian_root(name):
    """(tarball, None) of scripts/mkroot.sh NAME, built into CACHE if missing (unless offline), or (None, why not)."""
    if name not in _ROOTS:
        _ROOTS[name] = _debian_root(name)
    return _ROOTS[name]


def _debian_root(name):
    for d in (CACHE, os.path.join(ROOT, "build", "cache")):
        tarball = os.path.join(d, "%s.tar.gz" % name)
        if os.path.isfile(tarball) and os.path.getsize(tarball) > 0:
            return os.path.abspath(tarball), None
    if OFFLINE:
        return None, ("no Debian %s root in %s (MEMPROF_OFFLINE=1: not built; as root, without it, make test "
                      "builds one with scripts/mkroot.sh %s)" % (name, CACHE, name))
    if os.geteuid() != 0:
        return None, "no Debian %s root in %s: building one needs root (run make test as root)" % (name, CACHE)
    sys.stderr.write("memprof tests: building the Debian %s root into %s with scripts/mkroot.sh %s (a few minutes, "
                     "once; MEMPROF_OFFLINE=1 skips its tests instead)\n" % (name, CACHE, name))
    sys.stderr.flush()
    try:  # mkroot's progress goes to stderr, as it comes; its last line on stdout is the tarball
        r = subprocess.run(["sh", os.path.join(ROOT, "scripts", "mkroot.sh"), name], stdout=subprocess.PIPE,
                           text=True, timeout=1800, cwd=ROOT, env=dict(os.environ, MEMPROF_CACHE=CACHE))
    except subprocess.TimeoutExpired:
        return None, "scripts/mkroot.sh %s took more than 30 min" % name
    tarball = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or not os.path.isfile(tarball):
        return None, ("no Debian %s root: scripts/mkroot.sh %s failed (exit %d; its errors are above the test header)"
                      % (name, name, r.returncode))
    return os.path.abspath(tarball), None


# Debian sid's Pythons (3.13-3.15 here need sid's glibc) run inside a root built by scripts/mkroot.sh,
# extracted once to build/sid-root, through a wrapper script: in a mount namespace of its own (nothing is ever
# mounted on the host, so no `rm -rf build` can reach through a bind) the checkout, a build outside it, /tmp,
# /proc and /dev are bound in at the same paths, then `chroot ROOT /usr/bin/python3.X` in the same working
# directory. Every step execs: the pid the test sees is the interpreter's.
SID_MINORS = (13, 14, 15)
SID_ROOT = os.path.join(BUILD, "sid-root")
SID_BINDS = sorted({ROOT, BUILD if not BUILD.startswith(ROOT + "/") else ROOT, "/tmp", "/proc", "/dev"})
SID_NOTE = []  # why the sid interpreters are missing
SID_WRAPPER = """#!/bin/sh
exec unshare --mount --propagation private sh -c '
r=$0
for m in %(binds)s; do mount --bind "$m" "$r$m" || exit 127; done
exec chroot "$r" /usr/bin/env --chdir="$PWD" %(inside)s "$@"' %(root)s "$@"
"""


def _sid_interpreters():
    if os.geteuid() != 0:
        SID_NOTE.append("the sid root needs root (chroot, mount namespaces): run make test as root")
        return {}
    if not os.path.exists(os.path.join(SID_ROOT, ".extracted")):
        tarball, why = debian_root("sid")
        if not tarball:
            SID_NOTE.append(why)
            return {}
        os.makedirs(SID_ROOT, exist_ok=True)
        if subprocess.call(["tar", "-xzf", tarball, "-C", SID_ROOT]) != 0:
            SID_NOTE.append("cannot extract %s" % tarball)
            return {}
        open(os.path.join(SID_ROOT, ".extracted"), "w").close()
    for m in SID_BINDS:
        os.makedirs(SID_ROOT + m, exist_ok=True)  # the mount points, empty on the host
    found = {}
    wrappers = os.path.join(BUILD, "sid-bin")
    os.makedirs(wrappers, exist_ok=True)
    for minor in SID_MINORS:
        inside = "/usr/bin/python3.%d" % minor
        if not os.access(SID_ROOT + inside, os.X_OK):
            continue
        exe = os.path.join(wrappers, "python3.%d" % minor)
        with open(exe, "w") as f:
            f.write(SID_WRAPPER % {"binds": " ".join(SID_BINDS), "inside": inside, "root": SID_ROOT})
        os.chmod(exe, 0o755)
        ver = _version_of(exe)
        if ver:
            found["sid-3.%d" % minor] = (exe, ver)
    return found


SID_IDS = ["sid-3.%d" % m for m in SID_MINORS]
SUPPORTED_IDS = SUPPORTED_IDS + SID_IDS


def pytest_configure(config):
    """Before collection, with the terminal not yet captured: the sid root (built now if missing, with progress)
    and its interpreters; the MEMPROF_REQUIRE setting checked."""
    _require_patterns()
    INTERPRETERS.update(_sid_interpreters())


# ---- Skips. A test skips only for what this machine lacks, and says what to install (pytest -rs lists the reasons
# in the summary), or with a reason starting "does not apply here" for a fact of the machine nobody installs (the
# kernel's settings, the architecture, a pid namespace). CI (.ci/run) and make check-fresh set MEMPROF_REQUIRE: every
# other skip is then a failure (they provision every interpreter, root and tool the suite uses), except those whose
# reason matches a "!PATTERN" (fnmatch) entry: MEMPROF_REQUIRE=all,!pyenv-* lets pyenv's interpreters be missing.
NOT_HERE = "does not apply here"


def _require_patterns():
    """(required?, [excused patterns]) from MEMPROF_REQUIRE: empty (nothing required) or all[,!PATTERN...]."""
    value = os.environ.get("MEMPROF_REQUIRE", "")
    items = [i.strip() for i in value.split(",") if i.strip()]
    if not items:
        return False, []
    if items[0] != "all" or not all(i.startswith("!") for i in items[1:]):
        raise pytest.UsageError("MEMPROF_REQUIRE=%s: expected all[,!PATTERN...]" % value)
    return True, [i[1:] for i in items[1:]]


def required(reason):
    """Whether a skip for REASON (or a missing thing of that name) must fail this run instead (MEMPROF_REQUIRE)."""
    on, excused = _require_patterns()
    return on and not reason.startswith(NOT_HERE) and not any(fnmatch.fnmatchcase(reason, p) for p in excused)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    _fail_required_skip(rep)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    rep = (yield).get_result()
    _fail_required_skip(rep)


def _fail_required_skip(rep):
    if not rep.skipped or hasattr(rep, "wasxfail") or not isinstance(rep.longrepr, tuple):
        return
    reason = rep.longrepr[2]
    reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    if required(reason):
        rep.outcome = "failed"
        rep.longrepr = ("MEMPROF_REQUIRE=%s: this run provisions everything the tests use, so this skip is a "
                        "failure: %s (%s:%s)" % (os.environ["MEMPROF_REQUIRE"], reason, rep.longrepr[0],
                                                 rep.longrepr[1]))


def lacking(name, install):
    """Skip: this machine lacks NAME (a tool, an interpreter, a library); INSTALL says how to get it."""
    pytest.skip("%s is not installed: %s" % (name, install))


def default_python():
    """A supported interpreter for tests that need just one: Debian's, else any supported."""
    for pyid in ["debian-3.11"] + SUPPORTED_IDS:
        if pyid in INTERPRETERS:
            return INTERPRETERS[pyid][0]
    pytest.skip("no supported Python is installed: apt-get install python3.11 (Debian 12), or pyenv install 3.12")


def interpreter(pyid):
    """The interpreter's (path, version), or a visible skip when this machine lacks it."""
    if pyid not in INTERPRETERS:
        if pyid in SID_IDS and SID_NOTE:
            pytest.skip("%s: %s" % (pyid, SID_NOTE[0]))
        pytest.skip("%s is not installed: %s" % (pyid, _install_hint(pyid)))
    return INTERPRETERS[pyid]


def _install_hint(pyid):
    if pyid.startswith("pyenv-"):
        return "pyenv install %s (pyenv's newest patch of each minor is used)" % pyid[len("pyenv-"):]
    if pyid == "debian-3.11":
        return "apt-get install python3.11 (Debian 12's python3)"
    return ("the sid root has no python3.%s (sid does not package it yet; rm %s/sid.tar.gz rebuilds the root)"
            % (pyid.rsplit(".", 1)[1], CACHE))


def pytest_report_header(config):
    lines = ["memprof interpreters found:"] + report_lines()
    for pyid in SID_IDS:
        path, ver = INTERPRETERS.get(pyid, (None, None))
        lines.append("  %-12s %s" % (pyid, "%s (%s)" % (path, ver) if path else
                                     "MISSING - its tests are skipped: %s" % (SID_NOTE[0] if SID_NOTE else "not in the root")))
    return lines


def proc_state(pid):
    """(state letter, tracer pid) or (None, 0) when the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            text = f.read()
    except OSError:
        return None, 0
    state = re.search(r"^State:\s+(\S)", text, re.M).group(1)
    tracer = int(re.search(r"^TracerPid:\s+(\d+)", text, re.M).group(1))
    return state, tracer


def agent_mapped(pid):
    try:
        with open("/proc/%d/maps" % pid) as f:
            return "libmemprof_agent" in f.read()
    except OSError:
        return False


class Target:
    """A started process, read line by line; always killed at teardown."""

    def __init__(self, argv, stdin=None, env=None):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, env=env)
        self.pid = self.proc.pid
        self.lines = []
        self._raw = b""  # read from stdout, not yet a line (readline)

    def readline(self, timeout=30):
        """The next line, read from the pipe itself into a buffer of our own (self._raw): select on the file
        object would miss lines that arrived in one burst and wait in its buffer."""
        import select
        fd = self.proc.stdout.fileno()
        deadline = time.time() + timeout
        while b"\n" not in self._raw:
            r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
            if not r:
                if time.time() >= deadline:
                    raise TimeoutError("no output from %s within %ss; so far: %r" % (self.argv, timeout,
                                                                                   self.lines[-5:]))
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if not self._raw:
                    return None
                self._raw += b"\n"  # the last line, unterminated
            self._raw += chunk
        line, self._raw = self._raw.split(b"\n", 1)
        self.lines.append(line.decode(errors="replace"))
        return self.lines[-1]

    def wait_for(self, pattern, timeout=30):
        deadline = time.time() + timeout
        while True:
            line = self.readline(max(0.1, deadline - time.time()))
            if line is None:
                raise AssertionError("%s exited before printing %r; output: %r" % (self.argv, pattern, self.lines[-10:]))
            m = re.search(pattern, line)
            if m:
                return m

    def output(self):
        return "\n".join(self.lines)

    def kill(self):
        state, _ = proc_state(self.pid)
        if state == "T":
            os.kill(self.pid, signal.SIGCONT)
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass


@pytest.fixture
def targets():
    """Start targets with targets.start(argv, ...); every one is killed afterwards."""
    started = []

    class Starter:
        def start(self, argv, **kw):
            t = Target(argv, **kw)
            started.append(t)
            return t

    yield Starter()
    for t in started:
        state, tracer = proc_state(t.pid)
        t.kill()
        assert state != "t" and tracer == 0 or state is None, "pid %d left ptrace-stopped (tracer %d)" % (t.pid, tracer)


class Daemon:
    def __init__(self, tmpdir, args=()):
        self.args = [str(a) for a in args]  # more options of memprofd serve (--watch RULE...)
        self.dir = tmpdir
        self.socket = os.path.join(tmpdir, "run", "memprofd.sock")
        self.log = os.path.join(tmpdir, "memprofd.log")
        self.env = dict(os.environ, MEMPROF_SOCKET=self.socket)
        self.proc = None

    def start(self):
        self.logf = open(self.log, "a")
        self.proc = subprocess.Popen([MEMPROFD, "serve", "--socket", self.socket] + self.args, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=self.env)
        # Ready when it accepts a connection: the socket file of a daemon killed before may still be there,
        # and a client that finds it dead would start a daemon of its own (left running after the test).
        deadline = time.time() + 10
        while not self._accepts():
            assert self.proc.poll() is None, "memprofd exited: %s" % open(self.log).read()
            assert time.time() < deadline, "memprofd did not listen on its socket"
            time.sleep(0.02)

    def _accepts(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def run(self, *args, timeout=60, tool=None, input=None):
        exe = tool or MEMPROF
        return subprocess.run([exe] + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                              env=self.env, input=input)

    def memprofd(self, *args, timeout=60):
        return self.run(*args, timeout=timeout, tool=MEMPROFD)

    def attach(self, pid, *extra):
        r = self.memprofd("attach", "--pid", pid, *extra)
        assert r.returncode == 0, "attach to %d failed (%d): %s%s\nlog: %s" % (
            pid, r.returncode, r.stdout, r.stderr, self.log_tail())
        return r

    def detach(self, pid):
        r = self.memprofd("detach", "--pid", pid)
        assert r.returncode == 0, "detach from %d failed: %s%s\nlog: %s" % (pid, r.stdout, r.stderr, self.log_tail())
        return r

    def log_tail(self, n=15):
        try:
            return "".join(open(self.log).readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self._accepts():  # ours, or one a client started on this socket: either way, stopped
            self.memprofd("stop", timeout=30)
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "logf", None):
            self.logf.close()


@pytest.fixture(scope="session")
def daemon():
    """One private memprofd for the whole run, on its own socket."""
    for exe in (MEMPROFD, MEMPROF):
        assert os.access(exe, os.X_OK), "%s is not built: run make" % exe
    tmp = tempfile.mkdtemp(prefix="memprof-test-")
    d = Daemon(tmp)
    d.start()
    yield d
    d.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def fresh_daemon(tmp_path):
    """A daemon of the test's own, for tests that stop or kill it."""
    d = Daemon(str(tmp_path))
    d.start()
    yield d
    d.stop()


def status_json(daemon):
    """`memprof status --json` of daemon: its sessions, oldest first."""
    r = daemon.run("status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def workload(name):
    """One of the project's workloads (tests/workloads): part of the checkout, so never a skip."""
    path = os.path.join(WORKLOADS, name)
    if not os.path.exists(path):
        raise FileNotFoundError("workload %s is missing from the checkout" % path)
    return path


def target_script(name):
    return os.path.join(TARGETS, name)


# ---- hand-made wire messages, for tests that speak to the daemon below the client library

def pb_frame(payload):
    """One frame: 4-byte little-endian length, then the encoded Envelope."""
    return struct.pack("<I", len(payload)) + payload


# The two protobuf encoders as source: run here, and prepended to the scripts tests run as another user or inside a
# target (they cannot import this file), so every hand-made message is encoded by the same lines.
PB_SRC = """
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7f, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def field(num, wire, data):
    # one protobuf field: wire 0 = varint, 2 = length-delimited bytes
    return varint(num << 3 | wire) + (varint(data) if wire == 0 else varint(len(data)) + data)
def agent_hello(token, pid):
    # an agent's hello frame: Envelope{Hello{protocol 1, role agent, token, AgentInfo{pid}}}, length first
    env = field(1, 2, field(1, 0, 1) + field(2, 0, 1) + field(3, 2, token) + field(4, 2, field(1, 0, pid)))
    return len(env).to_bytes(4, "little") + env
def read_to_close(sock):
    # everything the peer sends until it closes the connection
    r = b""
    while True:
        b = sock.recv(4096)
        if not b:
            return r
        r += b
"""
_pb = {}
exec(PB_SRC, _pb)
pb_varint, pb_field = _pb["varint"], _pb["field"]
