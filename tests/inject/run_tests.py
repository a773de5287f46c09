#!/usr/bin/env python3
"""run_tests.py -- exercises the ptrace injector against live Python processes.

Run as root after `make -C tests/inject`:  python3 tests/inject/run_tests.py [-k NAME]
Interpreters come from tests/pythons.py; checks wanting one this machine lacks say so and skip it.
Starts its own targets and kills only those (by pid); never leaves anything stopped.
"""
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "..", "..", "build", "inject")
DRV = os.path.abspath(os.path.join(BUILD, "injdrv"))
LIB = os.path.abspath(os.path.join(BUILD, "libinjtest.so"))
SYM = "memprof_agent_start"

sys.path.insert(0, os.path.dirname(HERE))
from pythons import INTERPRETERS, SUPPORTED_IDS, UNSUPPORTED_IDS, first_of, kernel_thread, report_lines  # noqa: E402

ALL_IDS = UNSUPPORTED_IDS + SUPPORTED_IDS

started = []
failures = []
missing = []   # interpreters a test wanted that this machine lacks (pytest reports them as a skip)
stops = []     # every stop_ms measured
retries = []   # (stop_ms, retries) of the busy tests


def check(cond, what):
    print(("  ok   " if cond else "  FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def pythons(*ids):
    """Paths of those of ids found on this machine; each one not found is noted in missing."""
    paths = []
    for pyid in ids:
        if pyid in INTERPRETERS:
            paths.append(INTERPRETERS[pyid][0])
        else:
            print("  skip %s: not found on this machine" % pyid, flush=True)
            missing.append(pyid)
    return paths


def main_python():
    """pyenv's 3.12 for checks that need one modern Python, else another supported one (None: noted missing)."""
    hit = first_of("pyenv-3.12", *SUPPORTED_IDS)
    if not hit:
        print("  skip: no supported Python found on this machine", flush=True)
        missing.append("pyenv-3.12")
        return None
    if hit[0] != "pyenv-3.12":
        print("  info pyenv-3.12 not found: using %s (%s)" % (hit[0], hit[1]), flush=True)
    return hit[1]


def result_file(pid):
    """Where the stand-in agent (testlib.c) appends one line per start in process pid."""
    return "/tmp/injtest-%d.txt" % pid


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    started.append(p)
    try:  # pids wrap (pid_max 32768): an earlier process's lines must not count as this one's
        os.unlink(result_file(p.pid))
    except FileNotFoundError:
        pass
    return p


def cleanup():
    for p in started:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.unlink(result_file(p.pid))
        except FileNotFoundError:
            pass


def state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def drv(*args, timeout=30):
    r = subprocess.run([DRV] + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout.strip().replace("\n", " | ")


def load(pid, arg="x"):
    rc, out = drv("load", pid, LIB, SYM, arg)
    m = re.search(r"handle=(0x[0-9a-f]+) start_rc=(-?\d+) stop_ms=([\d.]+) retries=(\d+)", out)
    if m and rc == 0:
        stops.append(float(m.group(3)))
        return int(m.group(1), 16), int(m.group(2)), float(m.group(3)), int(m.group(4)), out
    return None, None, None, None, out


def unload(pid, handle):
    rc, out = drv("unload", pid, hex(handle))
    m = re.search(r"stop_ms=([\d.]+)", out)
    if m and rc == 0:
        stops.append(float(m.group(1)))
    return rc, out


def lib_mapped(pid):
    with open("/proc/%d/maps" % pid) as f:
        return os.path.basename(LIB) in f.read()


def wait_blocked(pid, timeout=5.0):
    """Until the target sleeps in the kernel (it reached the blocking call)."""
    end = time.time() + timeout
    while time.time() < end and state(pid) != "S":
        time.sleep(0.05)
    time.sleep(0.3)


def read_result(p, timeout):
    out, _ = p.communicate(timeout=timeout)
    return out.decode() if isinstance(out, bytes) else out


# ---------------------------------------------------------------------------------------

def test_probe():
    print("probe: version read from every interpreter")
    for py in pythons(*ALL_IDS):
        p = spawn([py, "-c", "import time; time.sleep(60)"])
        time.sleep(0.4)
        want = subprocess.run([py, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                              capture_output=True, text=True).stdout.strip()
        rc, out = drv("probe", p.pid)
        check(rc == 0 and ("python %s " % want) in out, "%s -> %s" % (py, out))
        p.kill()
    print("probe: what is not a Python we can attach to")
    s = spawn(["sleep", "100"])
    time.sleep(0.2)
    rc, out = drv("probe", s.pid)
    check("not a Python process (no libpython or Python C API found)" in out, "sleep -> " + out)
    z = spawn(["sh", "-c", "sleep 0.1 & exec sleep 100"])
    time.sleep(0.5)
    zpid = int(subprocess.run(["ps", "-o", "pid=", "--ppid", str(z.pid)], capture_output=True,
                              text=True).stdout.split()[0])
    rc, out = drv("probe", zpid)
    check(out.endswith("is a zombie (it has exited)"), "zombie -> " + out)
    kpid = kernel_thread()
    if kpid is not None:  # none is visible inside a pid namespace of its own
        rc, out = drv("probe", kpid)
        check(out.endswith("pid %d: is a kernel thread" % kpid), "kernel thread -> " + out)
    rc, out = drv("probe", 4000000)
    check(out.endswith("no such process"), "no pid -> " + out)
    s.kill()
    z.kill()


def sleeper_code(call):
    return ("import time, sys\nt = time.time()\n%s\nsys.stdout.write('elapsed %%.3f\\n' %% (time.time() - t))\n"
            % call)


def test_sleep():
    print("time.sleep(30) keeps sleeping its full time after injections (all interpreters)")
    procs = []
    for py in pythons(*ALL_IDS):
        p = spawn([py, "-c", sleeper_code("time.sleep(30)")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append((py, p))
    for py, p in procs:
        wait_blocked(p.pid)
        h, rc, ms, _, out = load(p.pid, "sleep-test")
        check(h is not None and rc == 0, "%s: load -> %s" % (py, out))
        if h:
            urc, uout = unload(p.pid, h)
            check(urc == 0, "%s: unload -> %s" % (py, uout))
            h2, _, _, _, out2 = load(p.pid, "sleep-test-2")
            check(h2 is not None, "%s: load again -> %s" % (py, out2))
    for py, p in procs:
        out = read_result(p, 40)
        m = re.search(r"elapsed ([\d.]+)", out)
        check(m and float(m.group(1)) >= 29.99 and p.returncode == 0,
              "%s: slept %s, exit %s" % (py, m.group(1) if m else out.strip(), p.returncode))


RAW = r"""
import ctypes, ctypes.util, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class timespec(ctypes.Structure): _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
class timeval(ctypes.Structure): _fields_ = [("s", ctypes.c_long), ("us", ctypes.c_long)]
what = sys.argv[1]
t = time.time()
if what == "nanosleep":
    r = libc.nanosleep(ctypes.byref(timespec(10, 0)), None)
elif what == "select":
    r = libc.select(0, None, None, None, ctypes.byref(timeval(10, 0)))
elif what == "poll":
    r = libc.poll(None, 0, 10000)
elif what == "read":
    buf = ctypes.create_string_buffer(100)
    r = libc.read(0, buf, 100)
    r = (r, buf.raw[:max(r, 0)])
elif what == "epoll_wait":
    ep = libc.epoll_create1(0)
    r = libc.epoll_wait(ep, ctypes.create_string_buffer(12), 1, 10000)
e = ctypes.get_errno()
print("result %r errno %d elapsed %.3f" % (r, e, time.time() - t), flush=True)
"""


def test_raw_syscalls():
    print("raw libc calls (no Python EINTR retry) resume transparently")
    py = main_python()
    if not py:
        return
    # side by side (each waits 10 s), each loaded while the others wait; epoll_wait is documented to fail with
    # EINTR after any ptrace/job-control stop: its result is only shown
    calls = ("nanosleep", "select", "poll", "epoll_wait")
    procs = [spawn([py, "-c", RAW, what], stdout=subprocess.PIPE, text=True) for what in calls]
    for p in procs:
        wait_blocked(p.pid)
    for what, p in zip(calls, procs):
        h, rc, ms, _, out = load(p.pid, "raw-" + what)
        check(h is not None, "%s: load -> %s" % (what, out))
    for what, p in zip(calls, procs):
        res = read_result(p, 20)
        if what == "epoll_wait":
            print("  info epoll_wait (never restarted by the kernel, Python retries it): " + res.strip())
            continue
        m = re.search(r"elapsed ([\d.]+)", res)
        check(res.startswith("result 0 errno 0") and m and float(m.group(1)) >= 9.99, "%s: %s" % (what, res.strip()))


def test_stdin_pipe():
    print("sys.stdin.read() on a pipe reads exactly the data written after the injection")
    for py in pythons("pyenv-3.12", "debian-3.11", "pyenv-3.8"):
        p = spawn([py, "-c", "import sys; d = sys.stdin.read(); sys.stdout.write(repr(d))"],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        wait_blocked(p.pid)
        h, rc, ms, _, out = load(p.pid, "stdin-test")
        check(h is not None, "%s: load -> %s" % (py, out))
        p.stdin.write(b"hello\nworld\n")
        p.stdin.close()
        res = p.stdout.read().decode()
        p.wait(10)
        check(res == repr("hello\nworld\n") and p.returncode == 0, "%s: read %s" % (py, res))
    print("raw read(0) on a pipe")
    py = main_python()
    if not py:
        return
    p = spawn([py, "-c", RAW, "read"], stdin=subprocess.PIPE,
              stdout=subprocess.PIPE)
    wait_blocked(p.pid)
    load(p.pid, "raw-read")
    p.stdin.write(b"abc")
    p.stdin.close()
    res = p.stdout.read().decode()
    p.wait(10)
    check(res.startswith("result (3, b'abc') errno 0"), "raw read: " + res.strip())


def test_select():
    print("select.select([], [], [], 20) does not return early")
    procs = []
    for py in pythons("pyenv-3.12", "debian-3.11", "pyenv-3.9"):
        p = spawn([py, "-c", sleeper_code("import select; r = select.select([], [], [], 20)")],
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append((py, p))
    for py, p in procs:
        wait_blocked(p.pid)
        h, rc, ms, _, out = load(p.pid, "select-test")
        check(h is not None, "%s: load -> %s" % (py, out))
    for py, p in procs:
        out = read_result(p, 30)
        m = re.search(r"elapsed ([\d.]+)", out)
        check(m and float(m.group(1)) >= 19.99 and p.returncode == 0, "%s: %s" % (py, out.strip()))


BUSY = "while True: x = [object() for _ in range(100)]"
THREADS = """
import threading
def work():
    while True:
        x = [object() for _ in range(100)]
        d = {i: str(i) for i in range(50)}
for _ in range(3):
    threading.Thread(target=work, daemon=True).start()
work()
"""


def busy_loads(py, code, n, label):
    p = spawn([py, "-c", code])
    time.sleep(0.5)
    ok = 0
    for i in range(n):
        try:
            h, rc, ms, tries, out = load(p.pid, "%s-%d" % (label, i))
        except subprocess.TimeoutExpired:
            check(False, "%s: load %d timed out (deadlock?)" % (label, i))
            break
        if h is None:
            check(False, "%s: load %d -> %s" % (label, i, out))
            continue
        ok += 1
        retries.append((label, ms, tries))
        # Still running? A deadlocked target never uses CPU again; a starved one (a loaded machine gives it
        # less than a 10 ms tick in 0.1 s) does within seconds.
        t0, deadline = cpu_ticks(p.pid), time.time() + 10
        while cpu_ticks(p.pid) == t0 and time.time() < deadline:
            time.sleep(0.05)
        if cpu_ticks(p.pid) == t0:
            check(False, "%s: target stopped making progress after load %d (deadlock?)" % (label, i))
            break
    check(ok == n, "%s: %d/%d loads, target still %s" % (label, ok, n, state(p.pid)))
    with open(result_file(p.pid)) as f:
        lines = f.read().splitlines()
    check(len(lines) == n, "%s: start function ran %d times" % (label, len(lines)))
    return p


def test_busy():
    print("busy allocating loop: 20 loads in a row, never deadlocked")
    for py in pythons("pyenv-3.12", "debian-3.11", "pyenv-3.13", "pyenv-3.9"):
        p = busy_loads(py, BUSY, 20, "busy " + os.path.basename(py))
        p.kill()
    tr = [t for _, _, t in retries]
    if tr:
        print("  info retries per load: total %d over %d loads, max %d" % (sum(tr), len(tr), max(tr)))


def test_threads():
    print("4 busy threads: load, unload (library gone from maps), load again")
    for py in pythons("pyenv-3.12", "debian-3.11"):
        p = spawn([py, "-c", THREADS])
        time.sleep(0.5)
        for rnd in range(5):
            h, rc, ms, tries, out = load(p.pid, "threads-%d" % rnd)
            check(h is not None and lib_mapped(p.pid), "%s round %d: load -> %s" % (py, rnd, out))
            if h is None:
                break
            retries.append(("threads", ms, tries))
            urc, uout = unload(p.pid, h)
            check(urc == 0 and not lib_mapped(p.pid), "%s round %d: unload -> %s, mapped=%s"
                  % (py, rnd, uout, lib_mapped(p.pid)))
        check(state(p.pid) in "RS", "%s: still running (%s)" % (py, state(p.pid)))
        p.kill()


def test_stopped():
    print("a SIGSTOPped target is refused and left stopped")
    py = main_python()
    if not py:
        return
    p = spawn([py, "-c", "import time; time.sleep(60)"])
    time.sleep(0.4)
    os.kill(p.pid, signal.SIGSTOP)
    time.sleep(0.2)
    h, rc, ms, _, out = load(p.pid)
    check(h is None and "pid %d: is stopped (SIGSTOP/Ctrl-Z); resume it with kill -CONT %d and retry"
          % (p.pid, p.pid) in out, "load -> " + out)
    rc, out = drv("unload", p.pid, "0x1234")
    check("is stopped" in out, "unload -> " + out)
    time.sleep(0.2)
    check(state(p.pid) == "T", "still stopped: state %s" % state(p.pid))
    os.kill(p.pid, signal.SIGCONT)
    time.sleep(0.2)
    check(state(p.pid) == "S", "after SIGCONT: state %s" % state(p.pid))
    h, rc, ms, _, out = load(p.pid)
    check(h is not None, "load after SIGCONT -> " + out)
    p.kill()


def test_methods():
    print("each version reader on its own (Py_Version, Py_GetVersion buffer, code, .rodata)")
    for py in pythons(*ALL_IDS):
        p = spawn([py, "-c", "import time; time.sleep(60)"])
        time.sleep(0.4)
        out = subprocess.run([os.path.join(BUILD, "probemethods"), str(p.pid)], capture_output=True,
                             text=True).stdout.strip()
        m = re.search(r"probe=(\S+) hex=(\S+) buffer=(\S+) code=(\S+) rodata=(\S+)", out)
        ok = m and all(v in ("-", m.group(1)) for v in m.groups()[1:]) and m.group(4) == m.group(1)
        check(bool(ok), "%s: %s" % (os.path.basename(py), out))
        p.kill()
    # embed39: a C program embedding pyenv's 3.9 (built by the Makefile where that is found)
    emb = os.path.join(BUILD, "embed39")
    if not pythons("pyenv-3.9"):
        return
    if not os.path.exists(emb):
        print("  skip embed39: not built (no headers or libpython3.9.so beside pyenv-3.9?)", flush=True)
        missing.append("embed39 (pyenv-3.9 headers)")
    else:
        want = "python %s " % INTERPRETERS["pyenv-3.9"][1]
        p = spawn([emb, "noinit"])
        time.sleep(0.4)
        rc, out = drv("probe", p.pid)
        check(want in out, "libpython mapped, not initialised yet: " + out)
        p.kill()
        p = spawn([emb])
        time.sleep(0.6)
        rc, out = drv("probe", p.pid)
        check(want in out, "main thread exited (zombie leader): " + out)
        h, _, _, _, out = load(p.pid, "zombie-leader")
        check(h is not None, "zombie leader: load -> " + out)
        p.kill()


def test_misbehaving():
    print("agents and targets that misbehave: the target always survives, restored")
    py = main_python()
    if not py:
        return
    code = ("import signal, sys, time\ngot = []\nsignal.signal(signal.SIGUSR1, lambda s, f: got.append(s))\n"
            "t = time.time(); time.sleep(15)\nprint('elapsed %.2f usr1 %d' % (time.time() - t, len(got)))\n")
    p = spawn([py, "-c", code], stdout=subprocess.PIPE, text=True)
    wait_blocked(p.pid)
    h, _, _, _, out = load(p.pid, "crash")
    check(h is None and "crashed in the target (SEGV); the thread was put back" in out, "crash -> " + out)
    h, _, _, _, out = load(p.pid, "hang")
    check(h is None and "did not return within 5 s" in out, "hang -> " + out)
    h, rc, _, _, out = load(p.pid, "rc=7")
    check(h is not None and rc == 7, "start returns 7 -> " + out)
    rc, out = drv("load", p.pid, LIB, "no_such_symbol", "x")
    check(rc != 0 and "has no symbol no_such_symbol" in out, "missing symbol -> " + out)
    rc, out = drv("load", p.pid, "/nonexistent/lib.so", SYM, "x")
    check("cannot read the library /nonexistent/lib.so: No such file or directory" in out,
          "missing library -> " + out)
    rc, out = drv("unload", p.pid, "0x1000")  # glibc dereferences it: a caught crash
    check(rc != 0 and "dlclose crashed in the target (SEGV); the thread was put back" in out, "bad handle -> " + out)
    # a signal for the target while our call runs is delivered after we detach
    j = subprocess.Popen([DRV, "load", str(p.pid), LIB, SYM, "sleep"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGUSR1)
    out = j.communicate(10)[0].strip()
    check(out.startswith("ok"), "SIGUSR1 during the call -> " + out)
    # the injector being terminated mid-call finishes and restores first
    j = subprocess.Popen([DRV, "load", str(p.pid), LIB, SYM, "sleep"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    j.send_signal(signal.SIGTERM)
    j.wait(10)
    check(j.returncode == -signal.SIGTERM and state(p.pid) in "RS", "SIGTERM to the injector mid-call: rc %s, "
          "target %s" % (j.returncode, state(p.pid)))
    with open("/proc/%d/maps" % p.pid) as f:
        check(" rwxp " not in f.read(), "no scratch page left behind")
    res = read_result(p, 30)
    m = re.search(r"^elapsed ([\d.]+) usr1 1$", res.strip())  # slept its full time (later is load, not a fault)
    check(bool(m) and float(m.group(1)) >= 14.99, "target: " + res.strip())
    # SIGSTOP during the call: the target ends up stopped, as it asked
    p = spawn([py, "-c", sleeper_code("time.sleep(8)")], stdout=subprocess.PIPE, text=True)
    wait_blocked(p.pid)
    j = subprocess.Popen([DRV, "load", str(p.pid), LIB, SYM, "sleep"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGSTOP)
    out = j.communicate(10)[0].strip()
    time.sleep(0.2)
    check(out.startswith("ok") and state(p.pid) == "T", "SIGSTOP mid-call -> %s; state %s" % (out, state(p.pid)))
    os.kill(p.pid, signal.SIGCONT)
    res = read_result(p, 20)
    m = re.search(r"elapsed ([\d.]+)", res)
    check(m and float(m.group(1)) >= 7.99, "after SIGCONT: " + res.strip())
    # the job-control race: stopped between our state check and PTRACE_SEIZE
    p = spawn([py, "-c", "import time; time.sleep(60)"])
    time.sleep(0.4)
    os.kill(p.pid, signal.SIGSTOP)
    time.sleep(0.1)
    r = subprocess.run([os.path.join(BUILD, "groupstop"), str(p.pid)], capture_output=True, text=True)
    time.sleep(0.1)
    check(r.returncode == 0 and state(p.pid) == "T", "seized while stopped: %s; state %s"
          % (r.stdout.strip(), state(p.pid)))
    p.kill()


def test_seccomp():
    print("seccomp: W^X enforced (mmap RWX -> EACCES) works; SIGSYS is reported, target survives;")
    print("  memfd_create trapped (SIGSYS in the stub's own syscall): a copy in its /tmp instead")
    py = main_python()
    if not py:
        return
    # the four targets side by side (each sleeps 15 s), each loaded while the others sleep
    cases = [("eacces", "ok"), ("trap", "a seccomp filter forbids"),
             ("memfd-trap", "how=a copy in its /tmp (memfd: memfd_create stopped by a seccomp filter"),
             ("mmap-exec", None)]
    procs = [spawn([py, os.path.join(HERE, "seccomp_target.py"), mode], stdout=subprocess.PIPE, text=True)
             for mode, _ in cases]
    for p in procs:
        wait_blocked(p.pid)
    for (mode, want), p in zip(cases, procs):
        if want:
            rc, out = drv("load", p.pid, LIB, SYM, "seccomp-" + mode)
            check(want in out, "%s: %s" % (mode, out))
            continue
        print("  no mmap with PROT_EXEC at all: both ways fail, and what dlopen left mapped is unmapped")
        with open("/proc/%d/maps" % p.pid) as f:
            maps_before = len(f.readlines())
        fds_before = sorted(os.listdir("/proc/%d/fd" % p.pid))
        rc, out = drv("load", p.pid, LIB, SYM, "seccomp-mmap-exec")
        check(rc != 0 and re.search(r"cannot load libinjtest\.so: memfd: dlopen: .*; copy in its /tmp: dlopen: ", out)
              is not None, "mmap-exec: %s" % out)
        with open("/proc/%d/maps" % p.pid) as f:
            maps = f.readlines()
        check(not [l for l in maps if "libinjtest" in l or ".memprof-" in l] and len(maps) == maps_before,
              "mmap-exec: nothing of the library left mapped (%d mappings before, %d after)" % (maps_before, len(maps)))
        check(sorted(os.listdir("/proc/%d/fd" % p.pid)) == fds_before, "mmap-exec: no descriptor left")
    for (mode, _), p in zip(cases, procs):
        res = read_result(p, 30)
        m = re.match(r"alive, slept ([\d.]+)", res)  # its full 15 s (more on a loaded machine is fine)
        check(bool(m) and float(m.group(1)) >= 14.99, "%s: target %s" % (mode, res.strip()))


def test_musl():
    print("musl: a process on musl's C library is refused before it is stopped")
    if not shutil.which("musl-gcc"):
        print("  skip: musl-gcc not found (apt-get install musl-tools)", flush=True)
        missing.append("musl-gcc")
        return
    exe = os.path.join(BUILD, "musl_sleeper")
    subprocess.check_call(["musl-gcc", "-O0", "-o", exe, os.path.join(HERE, "..", "targets", "fake_python.c")])
    p = spawn([exe], stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    fds = sorted(os.listdir("/proc/%d/fd" % p.pid))
    rc, out = drv("load", p.pid, LIB, SYM, "musl")
    check(rc != 0 and "unsupported libc (musl)" in out and "stop_ms=0.000" in out, "musl: %s" % out)
    check(not lib_mapped(p.pid) and sorted(os.listdir("/proc/%d/fd" % p.pid)) == fds and state(p.pid) in "SR",
          "musl: untouched (state %s)" % state(p.pid))


TESTS = [test_probe, test_musl, test_methods, test_stopped, test_misbehaving, test_seccomp, test_raw_syscalls, test_stdin_pipe, test_busy, test_threads, test_select,
         test_sleep]


def main():
    only = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else None
    print("interpreters:\n" + "\n".join(report_lines()))
    try:
        for t in TESTS:
            if not only or only in t.__name__:
                t()
    finally:
        cleanup()
    if stops:
        s = sorted(stops)
        print("stop_ms over %d operations: median %.3f  p90 %.3f  max %.3f  min %.3f"
              % (len(s), statistics.median(s), s[int(len(s) * 0.9)], s[-1], s[0]))
    for label in sorted(set(l for l, _, _ in retries)):
        ms = sorted(m for l, m, _ in retries if l == label)
        tr = [t for l, _, t in retries if l == label]
        print("  %-24s stop_ms median %.3f max %.3f; retries %d total, max %d per load"
              % (label, statistics.median(ms), ms[-1], sum(tr), max(tr)))
    if missing:
        print("not found here, their checks skipped: " + ", ".join(sorted(set(missing))))
    print("FAILED: %d" % len(failures) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
