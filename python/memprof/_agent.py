"""memprof's agent inside this interpreter, for the IPython extension.

Kept apart from the extension's module so that ``%reload_ext memprof`` finds
the agent already running (the library cannot be loaded twice).

Start: ``memprof inproc`` (a child of this process) asks memprofd, started if
needed, for a run and prints the agent library and its settings; the library is
loaded with ctypes under MEMPROF_RUN, as ``memprof run`` preloads it: its
constructor registers an audit hook, the next audit event installs the
allocation hooks and starts the agent thread, which says hello to memprofd with
the run's token. The run lasts while the helper's stdin stays open.
"""
import ctypes
import json
import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

state = {"started": False, "error": None, "helper": None, "lib": None, "mode": None, "memprof": None}


class MemprofError(Exception):
    """A one-line message for the user."""


def find_memprof():
    """The memprof program: $MEMPROF, then PATH, then next to this package
    (PREFIX/lib/python3/dist-packages/memprof -> PREFIX/bin), then a build tree."""
    env = os.environ.get("MEMPROF")
    if env:
        return env
    found = shutil.which("memprof")
    if found:
        return found
    for cand in (os.path.join(HERE, "..", "..", "..", "..", "bin", "memprof"),
                 os.path.join(HERE, "..", "..", "build", "memprof")):
        if os.access(cand, os.X_OK):
            return os.path.abspath(cand)
    raise MemprofError("the memprof program is not on PATH (install memprof, or set PATH or $MEMPROF)")


def check_agent(lib):
    """lib resolved, when only root or this user could have put it there (as `memprof run` checks the library
    memprofd names: the file and every directory up to / owned by root or us, writable by no one else, a
    directory with the sticky bit excepted); else MemprofError."""
    if not os.path.isabs(lib):
        raise MemprofError("the agent library %r is not an absolute path: refusing to load it" % lib)
    real = os.path.realpath(lib)
    at, is_dir = real, False
    while True:
        try:
            st = os.lstat(at)
        except OSError as e:
            raise MemprofError("agent library %s: %s" % (real, e))
        ok_type = stat.S_ISDIR(st.st_mode) if is_dir else stat.S_ISREG(st.st_mode)
        writable = st.st_mode & 0o022 and not (is_dir and st.st_mode & stat.S_ISVTX)
        if not ok_type or st.st_uid not in (0, os.geteuid()) or writable:
            raise MemprofError("agent library %s: %s is not a %s owned by root or you and writable by no one else "
                               "(owner uid %d, mode %03o): refusing to load it"
                               % (real, at, "directory" if is_dir else "regular file", st.st_uid, st.st_mode & 0o7777))
        if at == "/":
            return real
        at, is_dir = os.path.dirname(at), True


def run_cli(*args, timeout=60):
    """Run the memprof CLI: (exit code, stdout, stderr)."""
    exe = state["memprof"] or find_memprof()
    r = subprocess.run([exe] + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout, r.stderr


def session_mode():
    """'exact' or 'sampling': this process's session in memprofd (it may have been attached again from outside)."""
    try:
        rc, out, err = run_cli("status", "--json", timeout=30)
        for s in json.loads(out) if rc == 0 else []:
            if s["pid"] == os.getpid() and s["state"] == "attached":
                return s["mode"]
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return state["mode"]


def _session_state():
    """This process's session state in memprofd ('attached', ...) or None."""
    rc, out, err = run_cli("status", "--json", timeout=30)
    if rc != 0:
        raise MemprofError(err.strip().replace("memprof: ", "", 1) or "memprof status failed")
    for s in json.loads(out):
        if s["pid"] == os.getpid() and s["state"] in ("attaching", "attached"):
            return s["state"]
    return None


def start():
    """Load and start the agent in this process (once). Raises MemprofError."""
    if state["started"]:
        return
    if state["lib"] is not None:
        raise MemprofError("an earlier start stopped half-way (agent loaded, no session): restart the interpreter")
    if sys.version_info < (3, 8):
        raise MemprofError("Python %d.%d is not supported (memprof supports 3.8 to 3.15)" % sys.version_info[:2])
    state["memprof"] = find_memprof()
    args = [state["memprof"], "inproc"]
    rate = os.environ.get("MEMPROF_SAMPLE_RATE")
    if rate:
        args += ["--sample-rate", rate]
    errf = tempfile.TemporaryFile(mode="w+")  # not a pipe: a memprofd it starts must not hold it open
    helper = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf)
    line = b""
    deadline = time.time() + 30
    while not line.endswith(b"\n") and time.time() < deadline:
        r, _, _ = select.select([helper.stdout], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        chunk = os.read(helper.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    if not line.endswith(b"\n"):
        helper.stdin.close()
        try:
            helper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
        errf.seek(0)
        msg = errf.read().strip().splitlines()
        raise MemprofError(msg[-1].replace("memprof: ", "", 1) if msg else "memprof inproc gave no answer")
    errf.close()
    if _session_state() is not None:
        helper.stdin.close()
        helper.wait()
        raise MemprofError("this process (pid %d) is already attached by memprofd; detach first: memprofd detach --pid %d"
                           % (os.getpid(), os.getpid()))
    lib, settings = line.decode().rstrip("\n").split("\t", 1)
    lib = os.environ.get("MEMPROF_AGENT") or lib
    if not os.path.exists(lib):
        helper.stdin.close()
        helper.wait()
        raise MemprofError("agent library %s not found (set $MEMPROF_AGENT)" % lib)
    try:
        lib = check_agent(lib)
    except MemprofError:
        helper.stdin.close()
        helper.wait()
        raise
    os.environ["MEMPROF_RUN"] = settings
    try:
        dll = ctypes.CDLL(lib)
    except OSError as e:
        helper.stdin.close()
        helper.wait()
        raise MemprofError("cannot load the agent %s: %s" % (lib, e))
    finally:
        os.environ.pop("MEMPROF_RUN", None)  # the library took its settings (and unset it)
    sys.audit("memprof.start")  # the first audit event installs the hooks and starts the agent thread
    dll.memprof_heap_stats.argtypes = [ctypes.POINTER(ctypes.c_double)]
    dll.memprof_heap_stats.restype = ctypes.c_int
    dll.memprof_heap_peak_reset.argtypes = []
    dll.memprof_heap_peak_reset.restype = None
    state.update(lib=dll, helper=helper)
    if not heap()[4]:
        raise MemprofError("the agent did not install its allocation hooks (see the message above)")
    # the agent thread says hello to memprofd: wait for the session
    deadline = time.time() + 15
    while _session_state() != "attached":
        if time.time() > deadline:
            raise MemprofError("the agent did not reach memprofd within 15 s (see memprofd's log)")
        time.sleep(0.05)
    state["mode"] = "sampling" if rate else "exact"
    state["started"] = True


def heap():
    """(live, peak, allocated bytes, allocations, tracking on) of the tracked heap."""
    out = (ctypes.c_double * 4)()
    on = state["lib"].memprof_heap_stats(out)
    return out[0], out[1], out[2], out[3], bool(on)


def peak_reset():
    state["lib"].memprof_heap_peak_reset()
