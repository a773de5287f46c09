"""Attach, status, detach and re-attach against real Python processes of every
interpreter on the machine; targets blocked in system calls; bad input;
socket privacy and agent authentication; the daemon dying under a target."""
import hashlib
import json
import os
import platform
import re
import signal
import socket
import struct
import shutil
import subprocess
import tempfile
import time

import pytest

from proctools import agent_gone, agent_threads
from pythons import kernel_thread
from test_agent_socket import as_attacker, attacker, shared_dir  # noqa: F401 (fixtures: a real other user)
from conftest import (INTERPRETERS, PB_SRC, default_python, MEMPROF, MEMPROFD, SUPPORTED_IDS, UNSUPPORTED_IDS, Target, agent_mapped, interpreter,
                      proc_state, target_script, workload, pb_field, pb_frame)


def status_of(daemon, pid, newer_than=0):
    """pid's newest session (with an id above newer_than: pids wrap in a long run, and an old session of
    the same pid must not pass for the one a test just made), or None."""
    r = daemon.run("status", "--json")
    assert r.returncode == 0, r.stderr
    for s in json.loads(r.stdout):
        if s["pid"] == pid and s["id"] > newer_than:
            return s
    return None


def newest_session_id(daemon):
    r = daemon.run("status", "--json")
    assert r.returncode == 0, r.stderr
    return max([s["id"] for s in json.loads(r.stdout)] or [0])


def assert_untouched(pid):
    state, tracer = proc_state(pid)
    assert tracer == 0, "pid %d is still traced by %d" % (pid, tracer)
    assert state not in ("t",), "pid %d left in tracing stop" % pid
    assert not agent_mapped(pid), "agent library mapped in pid %d" % pid


# ---------------------------------------------------------------- attach cycles

@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_attach_status_detach_reattach(pyid, daemon, targets):
    exe, version = interpreter(pyid)
    t = targets.start([exe, "-u", workload("service.py"), "4"])
    t.wait_for(r"^ready \d+")
    t.wait_for(r"^beat 1 ")

    r = daemon.attach(t.pid)
    assert re.search(r"attached to pid %d: Python %s, target stopped [\d.]+ ms, attach took \d+ ms" %
                     (t.pid, re.escape(version)), r.stdout), r.stdout
    s = status_of(daemon, t.pid)
    assert s and s["state"] == "attached" and s["python"] == version
    assert "service.py" in s["command"]
    table = daemon.run("status").stdout
    assert re.search(r"^\d+\s+%d\s+%s\s+attached" % (t.pid, re.escape(version)), table, re.M), table
    assert agent_mapped(t.pid)
    assert agent_threads(t.pid) == ["memprof-agent"], agent_threads(t.pid)

    r = daemon.detach(t.pid)
    assert "agent unloaded" in r.stdout, r.stdout
    assert status_of(daemon, t.pid)["state"] == "detached"
    assert_untouched(t.pid)
    assert agent_threads(t.pid) == []

    # 20 more cycles on the same target, then check it never noticed.
    for i in range(20):
        daemon.attach(t.pid)
        daemon.detach(t.pid)
    assert_untouched(t.pid)
    last = int(t.wait_for(r"^beat (\d+) ").group(1))
    nxt = int(t.wait_for(r"^beat (\d+) ").group(1))
    assert nxt == last + 1
    served = [int(x) for x in re.findall(r"served=(\d+)", t.output())]
    assert served[-1] > served[0], "workers stopped serving"
    assert "ERROR" not in t.output(), t.output()
    assert t.proc.poll() is None, "target died"


# ------------------------------------------------- targets blocked in syscalls

BLOCK_SECONDS = 60  # long enough for 30 targets to be blocked, attached, detached and attached again on a loaded machine
STDIN_DATA = hashlib.sha256(b"memprof").digest() * 4096  # 128 KiB, more than a pipe buffer


@pytest.fixture(scope="module")
def blocked(daemon):
    """For every interpreter at once: targets in time.sleep, stdin.read() and
    select; attach, detach and attach again while they are blocked; then feed
    stdin. The tests below check each result."""
    started = {}
    for pyid in SUPPORTED_IDS:
        if pyid not in INTERPRETERS:
            continue
        exe = INTERPRETERS[pyid][0]
        for mode in ("sleep", "stdin", "select"):
            t = Target([exe, "-u", target_script("blocked.py"), mode, str(BLOCK_SECONDS)],
                       stdin=subprocess.PIPE if mode == "stdin" else subprocess.DEVNULL)
            started[(pyid, mode)] = t
    try:
        for (pyid, mode), t in started.items():
            t.wait_for(r"^ready \d+")
            wait_blocked(t.pid, mode)
        events = {}
        for key, t in started.items():
            out = []
            for step in ("attach", "detach", "attach"):
                r = daemon.memprofd(step, "--pid", t.pid)
                out.append((step, r.returncode, r.stdout + r.stderr))
            events[key] = out
        for (pyid, mode), t in started.items():
            if mode == "stdin":
                t.proc.stdin.write(STDIN_DATA.decode("latin-1"))
                t.proc.stdin.close()
        yield started, events
    finally:
        for t in started.values():
            t.kill()


# x86_64 system call numbers each mode of blocked.py waits in: time.sleep (clock_nanosleep; select, pselect6 before
# 3.11 on some builds), sys.stdin.read (read), select.select (select, pselect6)
BLOCKING_CALLS = {"sleep": {230, 35, 23, 270}, "stdin": {0}, "select": {23, 270, 7, 271}}


def wait_blocked(pid, mode, timeout=30):
    """Until pid's main thread sleeps in the system call its mode blocks in (/proc/PID/syscall)."""
    deadline = time.time() + timeout
    while True:
        with open("/proc/%d/syscall" % pid) as f:
            call = f.read().split()[0]
        state, _ = proc_state(pid)
        if state == "S" and (platform.machine() != "x86_64" or call.isdigit() and int(call) in BLOCKING_CALLS[mode]):
            return
        assert time.time() < deadline, "pid %d (%s) is not blocked in its call: state %s, syscall %s" % (
            pid, mode, state, call)
        time.sleep(0.02)


def _blocked_result(blocked, pyid, mode):
    interpreter(pyid)
    started, events = blocked
    t = started[(pyid, mode)]
    for step, rc, text in events[(pyid, mode)]:
        assert rc == 0, "%s during %s failed: %s" % (step, mode, text)
    line = t.readline(timeout=BLOCK_SECONDS + 30)
    assert line is not None, "target exited without a result: %r" % t.lines
    assert not line.startswith("ERROR"), line
    return line


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_sleep_keeps_full_duration(pyid, blocked):
    line = _blocked_result(blocked, pyid, "sleep")
    elapsed = float(re.match(r"slept ([\d.]+)", line).group(1))
    assert elapsed >= BLOCK_SECONDS - 0.01, "time.sleep(%d) returned after %.3f s" % (BLOCK_SECONDS, elapsed)


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_stdin_read_gets_exact_data(pyid, blocked):
    line = _blocked_result(blocked, pyid, "stdin")
    n, digest = re.match(r"read (\d+) (\w+)", line).groups()
    assert int(n) == len(STDIN_DATA.decode("latin-1").encode("utf-8"))
    assert digest == hashlib.sha256(STDIN_DATA.decode("latin-1").encode("utf-8")).hexdigest()


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_select_waits_its_timeout(pyid, blocked):
    line = _blocked_result(blocked, pyid, "select")
    ready, elapsed = re.match(r"select (\d+) ([\d.]+)", line).groups()
    assert int(ready) == 0
    assert float(elapsed) >= BLOCK_SECONDS - 0.01



@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_attach_while_main_thread_holds_gil_in_c(pyid, daemon, targets):
    """The injector passes over a thread running code (it may hold the GIL) for one at a blocking syscall
    (daemon/inject.c, with_thread): here the main thread is mostly inside a C call holding the GIL and the
    other thread waits for the GIL or sleeps. The attach still works, every result stays right, the other
    thread keeps ticking, and the detach leaves the process as it was."""
    exe, _ = interpreter(pyid)
    t = targets.start([exe, "-u", target_script("gil_ticker.py"), "0.3"])
    t.wait_for(r"^ready %d" % t.pid)
    t.wait_for(r"^sum 2 ")
    daemon.attach(t.pid, "--method", "ptrace")
    rounds = int(t.wait_for(r"^sum (\d+) ").group(1))
    for _ in range(3):
        t.wait_for(r"^sum ")
    daemon.detach(t.pid)
    t.wait_for(r"^sum %d " % (rounds + 5))
    seen = [tuple(map(int, l.split()[1:])) for l in t.lines if l.startswith("sum ")]
    for k, (i, n, v, _) in enumerate(seen):
        assert (i, v) == (k + 1, n * (n - 1) // 2), "pid %d: round %d summed %d to %d" % (t.pid, i, n, v)
    ticks = [s[3] for s in seen]
    assert ticks == sorted(ticks) and ticks[-1] > ticks[rounds - 1] > ticks[1], ticks
    assert_untouched(t.pid)

# ------------------------------------------------------------------- bad input

# The exit-status table (common/exitcodes.h): the category comes from the daemon's ErrorReply.Code, never the text.
EXIT_FAIL, EXIT_NO_PROCESS, EXIT_PERMISSION, EXIT_NOT_ATTACHED, EXIT_UNSUPPORTED = 1, 4, 5, 6, 7


def expect_refused(daemon, pid, pattern, status):
    r = daemon.memprofd("attach", "--pid", pid)
    assert r.returncode == status, "attach to %s: exit %d, not %d: %s" % (pid, r.returncode, status, r.stdout + r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, "expected a one-line error, got %r" % err
    assert re.search(pattern, err), err
    return err


def unused_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_no_such_process(daemon):
    expect_refused(daemon, unused_pid(), r"pid \d+: no such process", EXIT_NO_PROCESS)


def test_not_a_pid(daemon):
    r = daemon.memprofd("attach", "--pid", "abc")
    assert r.returncode == 2 and "--pid needs a process id, got 'abc'" in r.stderr


def test_non_python_process(daemon, targets):
    t = targets.start(["sleep", "100"])
    time.sleep(0.2)
    expect_refused(daemon, t.pid, r"pid %d: not a Python process" % t.pid, EXIT_UNSUPPORTED)
    assert_untouched(t.pid)


def test_zombie(daemon, targets):
    exe = default_python()
    t = targets.start([exe, "-u", target_script("zombie_parent.py")])
    child = int(t.wait_for(r"zombie (\d+)").group(1))
    assert proc_state(child)[0] == "Z"
    expect_refused(daemon, child, r"pid %d: is a zombie" % child, EXIT_NO_PROCESS)


def test_daemon_itself(daemon):
    expect_refused(daemon, daemon.proc.pid, r"is memprofd itself", EXIT_UNSUPPORTED)


def test_kernel_thread(daemon):
    pid = kernel_thread()
    if pid is None:
        pytest.skip("does not apply here: no kernel thread is visible in this pid namespace")
    expect_refused(daemon, pid, r"pid %d: is a kernel thread" % pid, EXIT_UNSUPPORTED)


@pytest.mark.parametrize("pyid", UNSUPPORTED_IDS)
def test_unsupported_python(pyid, daemon, targets):
    exe, version = interpreter(pyid)
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    major_minor = ".".join(version.split(".")[:2])
    expect_refused(daemon, t.pid, r"pid %d: unsupported Python %s" % (t.pid, re.escape(major_minor)),
                   EXIT_UNSUPPORTED)
    assert_untouched(t.pid)
    t.wait_for(r"^tick")


def test_unknown_future_python(daemon, targets, tmp_path):
    """A version past the table (3.16) is refused by its number, never guessed at:
    a stand-in program (tests/targets/fake_python.c) that exports what the probe
    reads from a real interpreter (Py_Version, Py_GetVersion) as python3.16."""
    exe = str(tmp_path / "python3.16")
    subprocess.check_call(["cc", "-O0", "-rdynamic", "-o", exe, os.path.join(os.path.dirname(__file__), "targets",
                                                                           "fake_python.c")])
    t = targets.start([exe])
    t.wait_for(r"^ready 3.16.0a1")
    expect_refused(daemon, t.pid, r"pid %d: unsupported Python 3.16 \(memprof supports 3.8 to 3.15\)" % t.pid,
                   EXIT_UNSUPPORTED)
    assert_untouched(t.pid)
    procs = {p["pid"]: p for p in json.loads(daemon.run("ps", "--json").stdout)}
    assert procs[t.pid]["python"] == "3.16.0a1" and not procs[t.pid]["supported"]
    assert re.search(r"^%d\s+\S+\s+3\.16\.0a1!" % t.pid, daemon.run("ps").stdout, re.M)


def test_stopped_target_is_left_stopped(daemon, targets):
    exe = default_python()
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    os.kill(t.pid, signal.SIGSTOP)
    deadline = time.time() + 5
    while proc_state(t.pid)[0] != "T" and time.time() < deadline:
        time.sleep(0.01)
    expect_refused(daemon, t.pid, r"pid %d: is stopped" % t.pid, EXIT_FAIL)
    assert proc_state(t.pid) == ("T", 0), "stopped target's state changed: %r" % (proc_state(t.pid),)
    assert not agent_mapped(t.pid)
    os.kill(t.pid, signal.SIGCONT)
    t.wait_for(r"^tick")  # carries on after SIGCONT


def test_second_attach_reports_existing_session(daemon, targets):
    exe = default_python()
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    daemon.attach(t.pid)
    try:
        r = daemon.memprofd("attach", "--pid", t.pid)
        assert r.returncode == 3  # the exit-status table: already attached
        assert re.search(r"pid %d is already attached \(Python [\d.]+" % t.pid, r.stderr), r.stderr
    finally:
        daemon.detach(t.pid)


def test_detach_not_attached(daemon, targets):
    exe = default_python()
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    r = daemon.memprofd("detach", "--pid", t.pid)
    assert r.returncode == EXIT_NOT_ATTACHED and re.search(r"pid %d: not attached" % t.pid, r.stderr), r.stderr


def as_nobody(argv, env):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv,
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def nobody_env():
    """Environment for running memprof as nobody: its own socket, and copies of the programs in a directory
    nobody can reach (a checkout under /root is not)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a second user's daemon: run make test as root")
    d = tempfile.mkdtemp(prefix="memprof-nobody-")  # /tmp itself: nobody must reach it
    os.chmod(d, 0o755)
    bindir = os.path.join(d, "bin")
    os.mkdir(bindir)
    for name in ("memprofd", "memprof", "libmemprof_agent.so"):
        shutil.copy(os.path.join(os.path.dirname(MEMPROFD), name), bindir)
    home = os.path.join(d, "home")
    os.mkdir(home)
    os.chown(home, 65534, 65534)
    env = dict(os.environ, MEMPROF_SOCKET=os.path.join(home, "run", "memprofd.sock"), HOME=home,
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    yield env
    as_nobody(["memprofd", "stop"], env)
    shutil.rmtree(d, ignore_errors=True)


def test_permission_denied_for_other_users_process(daemon, targets, nobody_env):
    t = targets.start(["/usr/bin/python3", "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    r = as_nobody(["memprofd", "attach", "--pid", str(t.pid)], nobody_env)
    assert r.returncode == EXIT_PERMISSION, r.stderr
    assert re.search(r"pid %d: permission denied" % t.pid, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert_untouched(t.pid)


def test_permission_denied_as_root_says_not_dumpable(targets, tmp_path):
    """Root told "try as root" is told nothing: a process that is not dumpable (as pid 1 often is), seen by a
    memprofd without CAP_SYS_PTRACE, is refused with the reason: the capability, and how a container gets it."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to run a memprofd without CAP_SYS_PTRACE")
    t = targets.start([default_python(), "-u", "-c",
                       "import ctypes, os, time\n"
                       "assert ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE 0\n"
                       "print('ready %d' % os.getpid(), flush=True)\n"
                       "time.sleep(120)\n"])
    t.wait_for(r"^ready")
    sock = str(tmp_path / "run" / "memprofd.sock")
    log = open(tmp_path / "memprofd.log", "w")
    d = subprocess.Popen(["setpriv", "--bounding-set", "-sys_ptrace", MEMPROFD, "serve", "--socket", sock],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while not os.path.exists(sock) and time.time() < deadline and d.poll() is None:
            time.sleep(0.05)
        r = subprocess.run([MEMPROFD, "attach", "--pid", str(t.pid), "--socket", sock], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == EXIT_PERMISSION and r.stderr.count("\n") == 1, r
        assert ("pid %d: permission denied: this memprofd lacks CAP_SYS_PTRACE, which a process of another uid or one "
                "not dumpable needs" % t.pid) in r.stderr, r.stderr
        assert "try as root" not in r.stderr, r.stderr
        assert_untouched(t.pid)
    finally:
        subprocess.run([MEMPROFD, "stop", "--socket", sock], capture_output=True, timeout=30)
        if d.poll() is None:
            d.kill()
        d.wait(timeout=30)
        log.close()


# ------------------------------------------------------------------ security

def test_socket_is_private(daemon, nobody_env):
    st_dir = os.stat(os.path.dirname(daemon.socket))
    st_sock = os.stat(daemon.socket)
    assert st_dir.st_mode & 0o777 == 0o700
    assert st_sock.st_mode & 0o777 == 0o600
    env = dict(nobody_env, MEMPROF_SOCKET=daemon.socket)
    r = as_nobody(["memprof", "status"], env)
    assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr


def _agent_socket_name(daemon):
    m = re.search(r"agents on @(\S+)\)", open(daemon.log).read())
    assert m, "daemon log does not name the agent socket"
    return m.group(1)








def test_agent_with_bad_token_is_refused(daemon):
    name = _agent_socket_name(daemon)
    hello = pb_field(1, 0, 1) + pb_field(2, 0, 1) + pb_field(3, 2, b"0" * 32)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect("\0" + name)
    s.sendall(pb_frame(pb_field(1, 2, hello)))
    reply = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break  # the daemon closed the connection
        reply += chunk
    s.close()
    # nothing is pending: no token is expected, so there is none to compare
    assert b"no attach in progress for pid %d" % os.getpid() in reply, reply


SYS_PY = "/usr/bin/python3"  # readable by the attacker user
AGENT_HELLO = PB_SRC + """
import os, socket, struct, sys
name, token = sys.argv[1], sys.argv[2].encode()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect("\\0" + name)
s.sendall(agent_hello(token, os.getpid()))
print(read_to_close(s))
"""


GIL_HELD = PB_SRC + """
import ctypes, os, socket, struct, sys, time
print("ready %d" % os.getpid(), flush=True)
sys.stdin.readline()
s = socket.socket(socket.AF_UNIX)  # connected by this process: the daemon sees its pid
s.connect("\\0" + sys.argv[1])
pid = os.getpid()
if os.fork() == 0:  # a child holding that connection sends a hello with a wrong token when told
    sys.stdin.readline()
    s.sendall(agent_hello(b"0" * 32, pid))
    print("own hello got %r" % read_to_close(s), flush=True)
    os._exit(0)
ctypes.PyDLL(None).sleep(5)  # a C call that keeps the GIL: the injected agent cannot say hello before it returns
print("woke", flush=True)
time.sleep(120)
"""


def test_agent_token_checked_while_an_attach_waits(daemon, targets, attacker):
    """While an injected agent waits for the GIL (its attach pending), a hello with a wrong token gets
    "bad token" -- from another user, and from the target's own pid (compared with its session's token) --
    and the attach then completes with the real agent."""
    name = _agent_socket_name(daemon)
    t = targets.start([SYS_PY, "-u", "-c", GIL_HELD, name], stdin=subprocess.PIPE)
    t.wait_for(r"^ready")
    t.proc.stdin.write("go\n")
    t.proc.stdin.flush()
    time.sleep(0.3)  # into the sleep (if not yet, the attach is merely quicker and the checks below say so)
    attach = subprocess.Popen([MEMPROFD, "attach", "--pid", str(t.pid)], env=daemon.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 10
        while not [s for s in json.loads(daemon.run("status", "--json").stdout)
                   if s["pid"] == t.pid and s["state"] == "attaching"]:
            assert time.time() < deadline and attach.poll() is None, daemon.log_tail()
            time.sleep(0.05)
        out = as_attacker(attacker, AGENT_HELLO, name, "0" * 32)
        assert "bad token from pid" in out, out
        t.proc.stdin.write("hello\n")
        t.proc.stdin.flush()
        own = t.wait_for(r"^own hello got (.*)").group(1)
        assert "bad token from pid %d" % t.pid in own, own
        assert attach.poll() is None  # both were refused while the attach was still waiting
        o, e = attach.communicate(timeout=60)
    finally:
        if attach.poll() is None:
            attach.kill()
            attach.wait()
    assert attach.returncode == 0, (o, e, daemon.log_tail())
    assert "attached to pid %d" % t.pid in o
    t.wait_for(r"^woke")
    daemon.detach(t.pid)


def test_agent_token_checked_while_a_run_waits(daemon, targets, attacker, shared_dir):
    """While `memprof run` waits for its program's hello, a wrong token gets "bad token" (the comparison is
    reached), the right one from a process that is not the run's descendant is refused -- from another
    user and from the run's own user -- and the program itself still becomes the run's session."""
    go = os.path.join(shared_dir, "go")
    # the shell (no Python: its agent stays quiet) waits at most 60 s for go, holding the run's token
    t = targets.start([MEMPROF, "run", "--", "sh", "-c", "i=0; while [ ! -e %s ] && [ $i -lt 1200 ]; do sleep 0.05; "
                       "i=$((i+1)); done; exec %s -u %s" % (go, SYS_PY, target_script("idle.py"))], env=daemon.env)
    deadline = time.time() + 10
    while True:
        kids = open("/proc/%d/task/%d/children" % (t.pid, t.pid)).read().split()
        env = open("/proc/%s/environ" % kids[0], "rb").read().split(b"\0") if kids else []
        run = [e for e in env if e.startswith(b"MEMPROF_RUN=")]
        if run:
            break
        assert time.time() < deadline, t.output()
        time.sleep(0.05)
    try:
        _run_token_checks(daemon, t, attacker, run[0], go)
    finally:
        try:
            os.kill(int(kids[0]), signal.SIGKILL)  # the shell, or the Python it became
        except ProcessLookupError:
            pass


def _run_token_checks(daemon, t, attacker, run, go):
    m = re.search(rb"sock=@(\S+) token=(\S+)", run)
    name, token = m.group(1).decode(), m.group(2).decode()
    wrong = "%032x" % (int(token, 16) ^ 1)
    out = as_attacker(attacker, AGENT_HELLO, name, wrong)
    assert "bad token from pid" in out, out
    out = as_attacker(attacker, AGENT_HELLO, name, token)
    assert "not started by the memprof run that owns this token" in out, out
    r = subprocess.run([SYS_PY, "-c", AGENT_HELLO, name, token], capture_output=True, text=True, timeout=30)
    assert "not started by the memprof run that owns this token" in r.stdout, (r.stdout, r.stderr)  # root, a sibling
    open(go, "w").close()
    pid = int(t.wait_for(r"^ready (\d+)").group(1))
    deadline = time.time() + 20
    while not [s for s in json.loads(daemon.run("status", "--json").stdout)
               if s["pid"] == pid and s["state"] == "attached"]:
        assert time.time() < deadline, daemon.log_tail()
        time.sleep(0.1)


def test_garbage_on_client_socket_gets_error_and_daemon_survives(daemon):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(daemon.socket)
    s.sendall(struct.pack("<I", 0x7fffffff) + b"junk")
    reply = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    except socket.timeout:
        pass
    s.close()
    assert b"limit" in reply, reply
    assert daemon.run("status").returncode == 0


# ---------------------------------------------------------- robustness

def test_daemon_killed_target_carries_on(fresh_daemon, targets):
    exe = INTERPRETERS.get("pyenv-3.12", (default_python(),))[0]
    t = targets.start([exe, "-u", workload("service.py"), "2"])
    t.wait_for(r"^beat 1 ")
    fresh_daemon.attach(t.pid)
    fresh_daemon.proc.kill()
    fresh_daemon.proc.wait()
    assert agent_gone(t.pid), "agent thread still running after the daemon died"
    b1 = int(t.wait_for(r"^beat (\d+)").group(1))
    b2 = int(t.wait_for(r"^beat (\d+)").group(1))
    assert b2 == b1 + 1 and "ERROR" not in t.output()
    # A new daemon attaches again (the library is still loaded: its start runs again).
    fresh_daemon.start()
    fresh_daemon.attach(t.pid)
    fresh_daemon.detach(t.pid)
    t.wait_for(r"^beat")
    assert "ERROR" not in t.output() and t.proc.poll() is None


def test_target_exit_keeps_session(daemon, targets):
    exe = default_python()
    t = targets.start([exe, "-u", workload("service.py"), "2", "2"])
    t.wait_for(r"^ready")
    daemon.attach(t.pid)
    assert t.proc.wait(timeout=30) == 0
    deadline = time.time() + 5
    while status_of(daemon, t.pid)["state"] != "exited" and time.time() < deadline:
        time.sleep(0.05)
    assert status_of(daemon, t.pid)["state"] == "exited"


def test_stop_detaches_everything(fresh_daemon, targets):
    exe = default_python()
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    fresh_daemon.attach(t.pid)
    r = fresh_daemon.memprofd("stop")
    assert r.returncode == 0, r.stderr
    fresh_daemon.proc.wait(timeout=10)
    assert not os.path.exists(fresh_daemon.socket)
    assert_untouched(t.pid)
    t.wait_for(r"^tick")


def test_attach_starts_daemon_when_none_runs(tmp_path, targets):
    env = dict(os.environ, MEMPROF_SOCKET=str(tmp_path / "run" / "memprofd.sock"))
    exe = default_python()
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    try:
        r = subprocess.run([MEMPROFD, "attach", "--pid", str(t.pid)], capture_output=True, text=True, timeout=60,
                           env=env)
        assert r.returncode == 0, r.stderr
        assert "attached to pid" in r.stdout
    finally:
        subprocess.run([MEMPROFD, "stop"], capture_output=True, timeout=30, env=env)
    assert_untouched(t.pid)


# ------------------------------------------------------------------- CLI

@pytest.mark.parametrize("argv", [
    [MEMPROFD, "--help"], [MEMPROFD, "serve", "--help"], [MEMPROFD, "attach", "--help"],
    [MEMPROFD, "detach", "--help"], [MEMPROFD, "stop", "--help"],
])
def test_memprofd_help(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout.startswith("usage: memprofd")


def test_memprof_help_lists_commands_and_each_has_help():
    memprof = os.path.join(os.path.dirname(MEMPROFD), "memprof")
    r = subprocess.run([memprof, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    cmds = re.findall(r"^  (\w+)\s", r.stdout, re.M)
    assert "status" in cmds and "ps" in cmds
    for c in cmds:
        h = subprocess.run([memprof, c, "--help"], capture_output=True, text=True, timeout=10)
        assert h.returncode == 0 and h.stdout.startswith("usage: memprof %s" % c), (c, h.stdout, h.stderr)


def test_ps_lists_python_processes(daemon, targets):
    found = {}
    for pyid in ("debian-3.11", "pyenv-3.13", "pyenv-3.7", "sid-3.14", "sid-3.15"):
        if pyid in INTERPRETERS:
            t = targets.start([INTERPRETERS[pyid][0], "-u", target_script("idle.py")])
            t.wait_for(r"^ready")
            found[t.pid] = INTERPRETERS[pyid][1]
    s = targets.start(["sleep", "100"])
    r = daemon.run("ps", "--json")
    assert r.returncode == 0, r.stderr
    procs = {p["pid"]: p for p in json.loads(r.stdout)}
    for pid, version in found.items():
        assert pid in procs and procs[pid]["python"] == version
        assert procs[pid]["rss"] > 1 << 20
        assert procs[pid]["supported"] == (version.startswith("3.") and 8 <= int(version.split(".")[1]) <= 15)
    assert s.pid not in procs
    table = daemon.run("ps").stdout
    assert table.startswith("PID") and str(next(iter(found))) in table
    for pid, version in found.items():  # '!' marks an unsupported version
        mark = "" if procs[pid]["supported"] else "!"
        assert re.search(r"^%d\s+\S+\s+%s%s\s" % (pid, re.escape(version), re.escape(mark)), table, re.M), table


def test_multiline_command_is_one_row(daemon, targets):
    """A target started as python -c "<program of several lines>": its command
    line is one row of `memprof ps` and `memprof status`, newlines, tabs and
    other control characters escaped; --json keeps it as it is."""
    prog = "import os, time\nprint('ready %d' % os.getpid(), flush=True)\nwhile True:\n\ttime.sleep(0.2)  # \x01\x7f\r\n"
    exe = default_python()
    t = targets.start([exe, "-c", prog])
    t.wait_for(r"^ready \d+")
    shown = "%s -c %s" % (exe, prog.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
                           .replace("\x01", "\\x01").replace("\x7f", "\\x7f"))
    raw = "%s -c %s" % (exe, prog)

    def one_row(args, first):
        r = daemon.run(*args)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(first), r.stdout
        # every line is the header, a row starting with a number, or ps's footnote
        assert all(re.match(r"^(\d+ |\(! = |memprofd )", l) for l in lines[1:]), r.stdout  # status ends with the versions
        mine = [l for l in lines if re.match(r"^(\d+\s+)?%d\s" % t.pid, l)]
        assert len(mine) == 1 and mine[0].endswith(shown), (shown, r.stdout)
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", r.stdout), repr(r.stdout)

    one_row(["ps"], "PID")
    procs = {p["pid"]: p for p in json.loads(daemon.run("ps", "--json").stdout)}
    assert procs[t.pid]["command"] == raw
    daemon.attach(t.pid)
    try:
        one_row(["status"], "ID")
        assert status_of(daemon, t.pid)["command"] == raw
    finally:
        daemon.detach(t.pid)


def test_interrupted_attach_leaves_target_clean(daemon, targets):
    """SIGINT/SIGTERM to `memprofd attach` at any moment: the target keeps
    running, is never left stopped, and ends up either attached (the command had
    finished) or with nothing of memprof in it."""
    exe = default_python()
    t = targets.start([exe, "-u", workload("service.py"), "2"])
    t.wait_for(r"^beat 1 ")
    for i, delay in enumerate([0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08] * 2):
        cmd = subprocess.Popen([MEMPROFD, "attach", "--pid", str(t.pid)], env=daemon.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        cmd.send_signal(signal.SIGINT if i % 2 == 0 else signal.SIGTERM)
        cmd.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline:
            s = status_of(daemon, t.pid)
            if s is None or s["state"] not in ("attaching", "detaching"):
                break
            time.sleep(0.02)
        state, tracer = proc_state(t.pid)
        assert tracer == 0 and state != "t", "target left stopped after an interrupted attach"
        if s and s["state"] == "attached":
            daemon.detach(t.pid)
        deadline = time.time() + 5
        while agent_mapped(t.pid) and time.time() < deadline:
            time.sleep(0.02)
        assert not agent_mapped(t.pid), "agent left loaded after an interrupted attach (delay %s)" % delay
    b1 = int(t.wait_for(r"^beat (\d+)").group(1))
    b2 = int(t.wait_for(r"^beat (\d+)").group(1))
    assert b2 == b1 + 1 and "ERROR" not in t.output() and t.proc.poll() is None
    # the race this is about: at least one interrupt landed while the attach was under way (the daemon logs the
    # attach its client abandoned)
    with open(daemon.log) as f:
        cancelled = f.read().count("pid %d: attach cancelled by its client" % t.pid)
    assert cancelled >= 1, "no interrupt landed mid-attach: " + daemon.log_tail()


def test_protocol_mismatch_is_refused_clearly(daemon):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(daemon.socket)
    s.sendall(pb_frame(pb_field(1, 2, pb_field(1, 0, 99))))  # Hello{protocol=99, role=CLIENT}
    reply = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    s.close()
    assert b"protocol mismatch" in reply, reply


def test_attach_whose_client_vanishes_is_undone(daemon, targets):
    """A client that asks for an attach and disconnects at once: the daemon
    finishes the injection, then detaches and unloads instead of keeping a
    session nobody asked for."""
    exe = default_python()
    t = targets.start([exe, "-u", target_script("idle.py")])
    t.wait_for(r"^ready")
    before = newest_session_id(daemon)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon.socket)
    s.settimeout(5)
    s.sendall(pb_frame(pb_field(1, 2, pb_field(1, 0, 1))))          # Hello{protocol=1}
    assert s.recv(4096)                                       # HelloReply
    # the request and the hang-up reach the daemon together (it is stopped meanwhile): "at once" even on a
    # loaded machine, where this process could otherwise be descheduled until the attach is done
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        s.sendall(pb_frame(pb_field(3, 2, pb_field(1, 0, t.pid))))  # AttachRequest{pid}
        s.close()
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    deadline = time.time() + 15
    st = None
    while time.time() < deadline:
        st = status_of(daemon, t.pid, before)
        if st and st["state"] == "detached":
            break
        time.sleep(0.05)
    assert st and st["state"] == "detached", st
    assert "attach cancelled by its client" in daemon.log_tail(40)
    assert_untouched(t.pid)
    t.wait_for(r"^tick")
