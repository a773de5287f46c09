"""Fixtures for memprof's integration tests: the interpreters on this machine,
a private daemon, and targets that are always cleaned up (killed by pid, never
left ptrace-stopped)."""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
MEMPROFD = os.path.join(BUILD, "memprofd")
MEMPROF = os.path.join(BUILD, "memprof")
SHARED = os.environ.get("MEMPROF_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
WORKLOADS = os.path.join(SHARED, "bench", "workloads")
TARGETS = os.path.join(ROOT, "tests", "targets")

SUPPORTED = [(3, m) for m in range(8, 14)]
UNSUPPORTED = [(2, 7), (3, 6), (3, 7)]


def _pyenv_root():
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    exe = shutil.which("pyenv")
    if exe:
        try:
            root = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=10).stdout.strip() or root
        except (OSError, subprocess.SubprocessError):
            pass
    return root


def _version_of(path):
    try:
        out = subprocess.run([path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def find_interpreters():
    """{id: (path, 'X.Y.Z')} for pyenv's newest patch of each minor, plus Debian's python3.11."""
    found = {}
    for d in sorted(glob.glob(os.path.join(_pyenv_root(), "versions", "*"))):
        m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", os.path.basename(d))
        if not m:
            continue
        major, minor = int(m.group(1)), int(m.group(2))
        exe = os.path.join(d, "bin", "python%d.%d" % (major, minor))
        if os.access(exe, os.X_OK):
            ver = _version_of(exe)
            if ver:
                found["pyenv-%d.%d" % (major, minor)] = (exe, ver)
    if os.access("/usr/bin/python3.11", os.X_OK):
        ver = _version_of("/usr/bin/python3.11")
        if ver:
            found["debian-3.11"] = ("/usr/bin/python3.11", ver)
    return found


# Debian sid's Pythons (3.13-3.15 here need sid's glibc): run inside a root
# built by scripts/mkroot.sh, extracted once to build/sid-root, as
# `chroot ROOT /usr/bin/python3.X` through a wrapper script (exec keeps the pid;
# the working directory is kept).
# /work, /tmp, /proc and /dev are bind-mounted in for the session so paths mean
# the same inside; unmounted at exit.
SID_MINORS = (13, 14, 15)
SID_ROOT = os.path.join(BUILD, "sid-root")
SID_TARBALLS = [os.environ.get("MEMPROF_SID_TARBALL", ""), "/var/cache/memprof/sid.tar.gz",
                os.path.join(BUILD, "cache", "sid.tar.gz")]
SID_BINDS = ["/work", "/tmp", "/proc", "/dev"]
SID_NOTE = []  # why the sid interpreters are missing


def _sid_mounted():
    """The bind mounts under SID_ROOT (from mountinfo: a bind of the same file
    system is no mount point to os.path.ismount)."""
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    return [m for m in SID_BINDS if SID_ROOT + m in points]


def sid_unmount():
    for m in reversed(_sid_mounted()):
        subprocess.call(["umount", "-l", SID_ROOT + m])


def _sid_interpreters():
    tarball = next((t for t in SID_TARBALLS if t and os.path.exists(t)), None)
    if os.geteuid() != 0:
        SID_NOTE.append("the sid root needs root (chroot, bind mounts)")
        return {}
    if not os.path.exists(os.path.join(SID_ROOT, ".extracted")):
        if not tarball:
            SID_NOTE.append("no sid root (MEMPROF_CACHE=/var/cache/memprof sh scripts/mkroot.sh sid builds one)")
            return {}
        os.makedirs(SID_ROOT, exist_ok=True)
        if subprocess.call(["tar", "-xzf", tarball, "-C", SID_ROOT]) != 0:
            SID_NOTE.append("cannot extract %s" % tarball)
            return {}
        open(os.path.join(SID_ROOT, ".extracted"), "w").close()
    import atexit
    atexit.register(sid_unmount)
    for m in SID_BINDS:
        if m not in _sid_mounted() and os.path.isdir(m):
            os.makedirs(SID_ROOT + m, exist_ok=True)
            subprocess.check_call(["mount", "--bind", m, SID_ROOT + m])
    found = {}
    wrappers = os.path.join(BUILD, "sid-bin")
    os.makedirs(wrappers, exist_ok=True)
    for minor in SID_MINORS:
        inside = "/usr/bin/python3.%d" % minor
        if not os.access(SID_ROOT + inside, os.X_OK):
            continue
        exe = os.path.join(wrappers, "python3.%d" % minor)
        with open(exe, "w") as f:
            # the same working directory inside (chroot starts in /)
            f.write('#!/bin/sh\nexec chroot %s /usr/bin/env --chdir="$PWD" %s "$@"\n' % (SID_ROOT, inside))
        os.chmod(exe, 0o755)
        ver = _version_of(exe)
        if ver:
            found["sid-3.%d" % minor] = (exe, ver)
    return found


INTERPRETERS = find_interpreters()
INTERPRETERS.update(_sid_interpreters())
SID_IDS = ["sid-3.%d" % m for m in SID_MINORS]
SUPPORTED_IDS = ["pyenv-%d.%d" % v for v in SUPPORTED] + ["debian-3.11"] + SID_IDS
UNSUPPORTED_IDS = ["pyenv-%d.%d" % v for v in UNSUPPORTED]


def default_python():
    """A supported interpreter for tests that need just one: Debian's, else any supported."""
    for pyid in ["debian-3.11"] + SUPPORTED_IDS:
        if pyid in INTERPRETERS:
            return INTERPRETERS[pyid][0]
    pytest.skip("no supported Python on this machine")


def interpreter(pyid):
    """The interpreter's (path, version), or a visible skip when this machine lacks it."""
    if pyid not in INTERPRETERS:
        if pyid in SID_IDS and SID_NOTE:
            pytest.skip("%s: %s" % (pyid, SID_NOTE[0]))
        pytest.skip("%s is not installed on this machine" % pyid)
    return INTERPRETERS[pyid]


def pytest_unconfigure(config):
    sid_unmount()


def pytest_report_header(config):
    lines = ["memprof interpreters found:"]
    for pyid in SUPPORTED_IDS + UNSUPPORTED_IDS:
        path, ver = INTERPRETERS.get(pyid, (None, None))
        lines.append("  %-12s %s" % (pyid, "%s (%s)" % (path, ver) if path else "MISSING - its tests are skipped"))
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

    def readline(self, timeout=30):
        import select
        deadline = time.time() + timeout
        while time.time() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.time()))
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    return None
                self.lines.append(line.rstrip("\n"))
                return self.lines[-1]
        raise TimeoutError("no output from %s within %ss; so far: %r" % (self.argv, timeout, self.lines[-5:]))

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
    def __init__(self, tmpdir):
        self.dir = tmpdir
        self.socket = os.path.join(tmpdir, "run", "memprofd.sock")
        self.log = os.path.join(tmpdir, "memprofd.log")
        self.env = dict(os.environ, MEMPROF_SOCKET=self.socket)
        self.proc = None

    def start(self):
        self.logf = open(self.log, "a")
        self.proc = subprocess.Popen([MEMPROFD, "serve", "--socket", self.socket], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 10
        while not os.path.exists(self.socket):
            assert self.proc.poll() is None, "memprofd exited: %s" % open(self.log).read()
            assert time.time() < deadline, "memprofd did not create its socket"
            time.sleep(0.02)

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
        if self.proc and self.proc.poll() is None:
            self.memprofd("stop", timeout=30)
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
    if d.proc and d.proc.poll() is None:
        d.stop()


def workload(name):
    path = os.path.join(WORKLOADS, name)
    if not os.path.exists(path):
        pytest.skip("workload %s not found (shared/ missing beside the checkout?)" % path)
    return path


def target_script(name):
    return os.path.join(TARGETS, name)
