"""memprof rss: an eBPF view of where RSS comes from, with nothing loaded into the target. A workload that maps
and touches 300 MB in touch() (tests/workloads/rss_touch.py), on each CPython 3.11+ here (sid's in its root):
the faulted-in bytes land on touch()'s line, the RSS timeline agrees with VmRSS, the target is left as it was;
a target in its own pid namespace; older Pythons get native stacks; a target that exits mid-view; the errors
(not root, no such pid, no BTF, tracefs not mountable); beside a memprofd session on the same process, the agent's
tracked heap (tests/workloads/tracked_heap.py), and nothing of it without one. memprof rss --check: the kernel's
verifier takes the programs for every kind of target (a refusal fails here, it is not skipped). After every test, no
program of memprof rss stays loaded. Root, BTF and a memprof built with rss are needed:
otherwise every test is skipped, saying which is missing."""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import MEMPROF, Daemon, default_python, interpreter, workload

MB = 300
# 64 MB runs record 1 fault in 8 (2,048 samples): estimates within a few % (300 MB runs: the default 1 in 128, 600 samples)
SMALL = ["--sample", "8"]
PY311_IDS = ["debian-3.11", "pyenv-3.11", "pyenv-3.12", "pyenv-3.13",
             "sid-3.13", "sid-3.14", "sid-3.15"]


def _why_not():
    if os.geteuid() != 0:
        return "memprof rss needs root (CAP_BPF and CAP_PERFMON)"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "does not apply here: this kernel has no BTF (/sys/kernel/btf/vmlinux)"
    r = subprocess.run([MEMPROF, "rss", "--pid", str(os.getpid()), "--once", "--interval", "0.1"],
                       capture_output=True, text=True, timeout=60)
    if "built without" in r.stderr:
        return r.stderr.strip()
    return None


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


def touch_line():
    with open(workload("rss_touch.py")) as f:
        for n, text in enumerate(f, 1):
            if "the line every page is faulted in by" in text:
                return n
    raise AssertionError("rss_touch.py lost its marked line")


class View:
    """memprof rss --json on pid: its JSON lines read as they come."""

    def __init__(self, pid, *extra):
        self.p = subprocess.Popen([MEMPROF, "rss", "--pid", str(pid), "--json", "--interval", "0.3"] + list(extra),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.frames = []

    def next(self):
        line = self.p.stdout.readline()
        assert line, "memprof rss ended early: %s" % self.p.stderr.read()
        self.frames.append(json.loads(line))
        return self.frames[-1]

    def finish(self):
        """SIGINT, then the rest of its output: the last frame is the final one."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        return self.rest()

    def rest(self):
        """Every line until it ends (readline: the stream buffers ahead), its exit checked; the final frame."""
        for line in self.p.stdout:
            if line.strip():
                self.frames.append(json.loads(line))
        err = self.p.stderr.read()
        assert self.p.wait(timeout=60) == 0, err
        assert self.frames and self.frames[-1]["final"], self.frames[-1:]
        return self.frames[-1]

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate()


def vmrss(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def maps(pid):
    with open("/proc/%d/maps" % pid) as f:
        return f.read().splitlines()


def start_touch(targets, py, mb=MB, *mode):
    t = targets.start([py, workload("rss_touch.py"), str(mb)] + (["1"] + list(mode) if mode else []),
                      stdin=subprocess.PIPE)
    t.wait_for("^ready")
    return t

def watch_touch(t, opts, pid=None):
    """memprof rss over the target's touch (it waits for "go"): the final JSON object."""
    v = View(pid or t.pid, *opts)
    try:
        v.next()
        t.proc.stdin.write("go\n")
        t.proc.stdin.flush()
        t.wait_for("^touched")
        return v.finish()
    finally:
        v.kill()



@pytest.mark.parametrize("pyid", PY311_IDS)
def test_faults_land_on_the_python_line(targets, pyid):
    py, ver = interpreter(pyid)
    t = start_touch(targets, py)
    before = maps(t.pid)
    v = View(t.pid)
    try:
        v.next()  # attached: the programs run from here
        t.proc.stdin.write("go\n")
        t.proc.stdin.flush()
        t.wait_for("^touched")
        mine, at = vmrss(t.pid), time.time()  # the target idles now: the view's next point has the same RSS
        while v.next()["time"] <= at:
            pass
        point = v.frames[-1]["timeline"][-1]
        final = v.finish()
    finally:
        v.kill()
    assert final["python"] == ver and final["python_lines"], final["python_lines_unavailable"]
    line = touch_line()
    on_line = sum(r["faulted_bytes"] for r in final["rows"]
                  if r["file"].endswith("rss_touch.py") and r["line"] == line and r["function"] == "touch")
    total = final["total"]["faulted_bytes"]
    assert on_line >= 0.9 * total, (on_line, total, final["rows"][:4])
    assert on_line >= 0.9 * MB * 2**20, (on_line, final["rows"][:4])
    mapped = sum(r["mapped_bytes"] for r in final["rows"] if r["function"] == "touch")
    assert mapped >= MB * 2**20, final["rows"][:4]
    # the timeline's point after the touch against VmRSS read here while the target idles
    assert abs(point["rss_bytes"] - mine) <= 0.02 * mine, (point, mine)
    # every page fault counted, each once (the per-thread events, not the samples): 4 KiB pages of MB
    assert MB * 256 <= final["total"]["faults"] <= 1.3 * MB * 256, final["total"]
    assert final["rss"]["shmem_bytes"] >= MB * 2**20, final["rss"]
    # nothing of memprof in the target, which runs on as before
    after = maps(t.pid)
    assert not [m for m in after if "libmemprof" in m or "/.memprof-" in m], after  # the checkout's path may say memprof
    # its files stay mapped as they were (the heap and anonymous mappings may grow or shrink with its own malloc)
    files = lambda ms: {m for m in ms if len(m.split()) >= 6 and m.split()[5].startswith("/")}
    assert files(before) <= files(after), files(before) - files(after)
    t.proc.stdin.close()
    assert t.proc.wait(timeout=30) == 0, t.output()


def anon_huge(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        return int(re.search(r"^AnonHugePages:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def test_transparent_huge_pages_weighed_whole(targets):
    """A fault that maps a 2 MiB transparent huge page (numpy asks for them for big arrays) counts 2 MiB, not 4 KiB:
    a private mapping with MADV_HUGEPAGE, touched in touch(), lands there whole."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read()
    except OSError:
        pytest.skip("does not apply here: this kernel has no transparent huge pages")
    if "[never]" in mode:
        pytest.skip("does not apply here: transparent huge pages are off "
                    "(/sys/kernel/mm/transparent_hugepage/enabled: never)")
    py, _ = interpreter("debian-3.11")
    mb = 200
    t = start_touch(targets, py, mb, "huge")
    final = watch_touch(t, SMALL)  # 100 huge faults: about 12 recorded (the default would record one or two)
    huge = anon_huge(t.pid)
    if huge < 0.5 * mb * 2**20:
        pytest.skip("does not apply here: the kernel granted only %d MiB of huge pages (memory fragmented)"
                    % (huge >> 20))
    on_line = sum(r["faulted_bytes"] for r in final["rows"]
                  if r["file"].endswith("rss_touch.py") and r["line"] == touch_line())
    # 4 KiB pages are sampled (1 in 8); the huge pages smaps saw mapped go to the rows whose recorded faults
    # landed in one: what the target has resident, within 10%
    assert 0.9 * mb * 2**20 <= on_line <= 1.1 * mb * 2**20, (on_line >> 20, huge >> 20, final["rows"][:4])
    assert final["total"]["faults"] < mb * 2**20 / 4096 / 4, final["total"]  # faults were of huge pages


def test_rss_stat_catches_a_peak_between_refreshes(targets):
    """--rss-stat follows kmem:rss_stat: 200 MB touched and unmapped between two refreshes 3 s apart never shows
    in VmRSS at a refresh, but the refresh after it has the peak; without --rss-stat there is no peak field."""
    py, _ = interpreter("debian-3.11")
    mb = 200
    t = start_touch(targets, py, mb, "spike")
    final = watch_touch(t, ["--rss-stat", "--interval", "3"])
    points = final["timeline"]
    assert all(p["peak_bytes"] >= p["rss_bytes"] for p in points), points
    above = max(p["peak_bytes"] - p["rss_bytes"] for p in points)
    assert above >= 0.9 * mb * 2**20, points
    assert final["rss"]["peak_bytes"] >= mb * 2**20, final["rss"]
    t = start_touch(targets, py, 16, "spike")
    final = watch_touch(t, SMALL)
    assert "peak_bytes" not in final["rss"] and "peak_bytes" not in final["timeline"][-1], final["rss"]


@pytest.mark.parametrize("pyid", ["debian-3.11", "pyenv-3.12", "pyenv-3.13"])
def test_faults_of_a_second_thread(targets, pyid):
    """The faulting thread's own frames, not the main thread's (waiting in join())."""
    py, ver = interpreter(pyid)
    t = targets.start([py, workload("rss_touch.py"), "64", "1", "thread"], stdin=subprocess.PIPE)
    t.wait_for("^ready")
    final = watch_touch(t, SMALL)
    top = final["rows"][0]
    assert (top["function"], top["line"]) == ("touch", touch_line()) and top["faulted_bytes"] >= 56 * 2**20, top


def test_target_in_its_own_pid_namespace(targets):
    """Its threads know themselves by their ids in that namespace: the Python line is found all the same."""
    py, ver = interpreter("debian-3.11")
    u = targets.start(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", py, workload("rss_touch.py"),
                       "64"], stdin=subprocess.PIPE)
    u.wait_for("^ready")
    with open("/proc/%d/task/%d/children" % (u.pid, u.pid)) as f:
        pid = int(f.read().split()[0])
    final = watch_touch(u, SMALL, pid=pid)
    top = final["rows"][0]
    assert (top["function"], top["line"]) == ("touch", touch_line()) and top["faulted_bytes"] >= 60 * 2**20, top


def test_older_python_gets_native_frames(targets):
    py, ver = interpreter("pyenv-3.10")
    t = start_touch(targets, py, 64)
    final = watch_touch(t, SMALL)
    assert not final["python_lines"] and "3.11+" in final["python_lines_unavailable"], final
    top = final["rows"][0]
    assert top["file"] == "" and top["line"] == -1 and top["native"] and top["faulted_bytes"] >= 32 * 2**20, top


def test_target_exits_mid_view(targets):
    py, ver = interpreter("debian-3.11")
    t = start_touch(targets, py, 64)
    v = View(t.pid, *SMALL)
    try:
        v.next()
        t.proc.stdin.write("go\n")
        t.proc.stdin.flush()
        t.wait_for("^touched")
        at = time.time()
        while v.next()["time"] <= at:  # a refresh after the touch
            pass
        t.proc.kill()  # gone at once (an exit through Python's finalization would unmap first)
        final = v.rest()
    finally:
        v.kill()
    assert final["exited"], final
    assert final["rss"]["vmrss_bytes"] >= 64 * 2**20, final["rss"]  # the last figures read, kept
    assert final["total"]["faulted_bytes"] >= 60 * 2**20, final["total"]


def memprof_programs():
    """memprof rss's BPF programs loaded now, by id (bpftool prog show: names cut at 15 characters)."""
    ours = {"on_fault", "on_mmap_enter", "on_mmap_exit", "on_munmap_enter", "on_munmap_exit", "on_mremap_enter",
            "on_mremap_exit", "on_brk_enter", "on_brk_exit", "on_rss_stat", "on_exec"}
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return {p["id"]: p["name"] for p in json.loads(r.stdout) if p.get("name") in ours}


def holders():
    """{program id: pids with a file descriptor on it}: BPF program and link descriptors name theirs in fdinfo."""
    held = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink("/proc/%s/fd/%s" % (pid, fd)).startswith("anon_inode:bpf"):
                    continue
                with open("/proc/%s/fdinfo/%s" % (pid, fd)) as f:
                    m = re.search(r"^prog_id:\s*(\d+)", f.read(), re.M)
            except OSError:
                continue
            if m:
                held.setdefault(int(m.group(1)), set()).add(int(pid))
    return held


def descendants():
    """This test process and every process it started, directly or not."""
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % pid) as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    mine, grew = {os.getpid()}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in mine} - mine
        grew = bool(more)
        mine |= more
    return mine


# In the initial pid namespace /proc shows every process; in another (check-fresh's root) a program no process
# there holds may be another user's, held from outside
SEES_ALL = os.stat("/proc/self/ns/pid").st_ino == 0xEFFFFFFC


def left_behind(before):
    """memprof rss programs loaded since `before` (ids) that are still loaded: held by a process of this test, or
    by none (kept by the kernel: a page fault event a target's thread inherited). Another user's memprof rss
    running meanwhile (held by processes outside this test) is not counted."""
    now = {i: n for i, n in memprof_programs().items() if i not in before}
    if not now:
        return {}
    held, mine = holders(), descendants()
    return {i: (n, sorted(held.get(i, ()))) for i, n in now.items()
            if held.get(i, set()) & mine or (SEES_ALL and not held.get(i))}


@pytest.fixture(autouse=True)
def no_program_left():
    """Every test here: when it and its targets have ended, no memprof rss program it loaded stays loaded (a view
    that was not stopped, an event that keeps one). Programs are freed after an RCU grace period: waited for."""
    before = set(memprof_programs())
    yield before
    deadline = time.time() + 10
    while left_behind(before) and time.time() < deadline:
        time.sleep(0.1)
    left = left_behind(before)
    assert not left, "memprof rss programs left loaded (id: name, holding pids): %r" % left


def test_check_loads_for_every_kind_of_target():
    """memprof rss --check loads the programs (attached to nothing) for a process without Python frames and each
    CPython 3.11+ memprof knows, in and out of a pid namespace: the verifier takes every one (its combined stack of
    a program and its bpf_loop callbacks under 512 bytes). A refusal is a failure here, not a skip."""
    r = subprocess.run([MEMPROF, "rss", "--check"], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    last = max(int(m) for m in re.findall(r"^CPython 3\.(\d+)", r.stdout, re.M))
    assert last >= 15, lines  # the newest memprof supports, at least
    kinds = ["no Python frames"] + ["CPython 3.%d" % m for m in range(11, last + 1)]
    expected = [k + ns for k in kinds for ns in ("", ", memprof in a pid namespace")]
    assert [l.rsplit(None, 1)[0] for l in lines] == expected, lines
    assert all(l.endswith(" loads") for l in lines), lines


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_nothing_left_when_the_view_ends(targets, no_program_left, how):
    """Ended by Ctrl-C or killed, memprof rss leaves no program loaded and no event on the target's threads
    (they are its file descriptors): the target's faults run as before and it exits normally."""
    py, _ = interpreter("debian-3.11")
    t = start_touch(targets, py, 16, "thread")
    v = View(t.pid, "--rss-stat", *SMALL)
    try:
        v.next()
        loaded = left_behind(no_program_left)
        assert {n for n, pids in loaded.values() if v.p.pid in pids} >= {"on_fault", "on_mmap_exit", "on_rss_stat"}, \
            ("memprof rss's programs not loaded while it runs", loaded)
        v.p.send_signal(how)
        v.p.wait(timeout=30)
    finally:
        v.kill()
    deadline = time.time() + 10  # programs are freed after an RCU grace period
    while left_behind(no_program_left) and time.time() < deadline:
        time.sleep(0.1)
    assert not left_behind(no_program_left), left_behind(no_program_left)
    t.proc.stdin.write("go\n")
    t.proc.stdin.flush()
    t.wait_for("^touched")
    t.proc.stdin.close()
    assert t.proc.wait(timeout=30) == 0, t.output()


def test_errors(targets):
    dead = subprocess.Popen(["true"])
    dead.wait()
    r = subprocess.run([MEMPROF, "rss", "--pid", str(dead.pid)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and r.stderr.strip() == "memprof: pid %d: no such process" % dead.pid, r.stderr
    t = targets.start(["sleep", "60"])
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        MEMPROF, "rss", "--pid", str(t.pid)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and r.stderr.strip() == "memprof: rss: needs CAP_BPF and CAP_PERFMON: run as root", \
        r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([MEMPROF, "rss", "--pid", str(t.pid), "--by", "nothing"], capture_output=True, text=True)
    assert r.returncode != 0 and "--by" in r.stderr
    for argv, message in (([], "--pid PID is required"), (["--check", "--pid", str(t.pid)], "--check takes no --pid")):
        r = subprocess.run([MEMPROF, "rss"] + argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stderr == "memprof rss: %s (try memprof rss --help)\n" % message, r


def hidden(setup, pid):
    """memprof rss in a mount namespace of its own where setup (shell) hid part of /sys; gone with it."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                           setup + '; exec "$0" rss --pid "$1" --once', MEMPROF, str(pid)],
                          capture_output=True, text=True, timeout=60)


def test_errors_no_btf_no_tracefs(targets):
    t = targets.start(["sleep", "60"])
    r = hidden("mount -t tmpfs none /sys/kernel/btf", t.pid)
    assert r.returncode == 1 and r.stderr.strip() == ("memprof: rss: this kernel has no BTF (/sys/kernel/btf/vmlinux): "
                                                      "it needs CONFIG_DEBUG_INFO_BTF=y"), r.stderr
    # a /sys/kernel with the kernel's BTF but no tracing directory to mount tracefs on
    r = hidden('d=$(mktemp -d); mount --bind /sys/kernel/btf "$d"; mount -t tmpfs none /sys/kernel; '
               'mkdir /sys/kernel/btf; mount --move "$d" /sys/kernel/btf; rmdir "$d"', t.pid)
    assert r.returncode == 1 and r.stderr.startswith("memprof: rss: tracefs not mountable at /sys/kernel/tracing"), \
        r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_save_for_plot_and_export(targets, tmp_path):
    """memprof rss --save FILE, then memprof export --rss FILE (collapsed, pprof) and memprof plot --rss FILE:
    the same writers as a session's, fed the faulted-in bytes and the RSS timeline."""
    import shutil
    import tempfile
    import xml.etree.ElementTree as ET
    py, ver = interpreter("debian-3.11")
    t = start_touch(targets, py)
    saved = str(tmp_path / "touch.rss")
    v = View(t.pid, "--save", saved)
    try:
        v.next()
        t.proc.stdin.write("go\n")
        t.proc.stdin.flush()
        t.wait_for("^touched")
        at = time.time()
        while v.next()["time"] <= at:
            pass
        final = v.finish()
    finally:
        v.kill()
    t.proc.stdin.close()
    assert t.proc.wait(timeout=30) == 0, t.output()
    assert os.path.getsize(saved) > 0
    line = touch_line()
    total = final["total"]["faulted_bytes"]

    folded = str(tmp_path / "touch.folded")
    r = subprocess.run([MEMPROF, "export", "--rss", saved, "--format", "collapsed", "-o", folded],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "faulted in" in r.stdout and "1 in about 128 recorded" in r.stdout, r.stdout
    with open(folded) as f:
        rows = [l.rsplit(" ", 1) for l in f.read().splitlines()]
    top_stack, top_bytes = rows[0][0], int(rows[0][1])
    assert top_stack.split(";")[-1].endswith("rss_touch.py:touch:%d" % line), rows[:3]
    assert top_bytes >= 0.9 * sum(int(b) for _, b in rows), rows[:3]
    assert sum(int(b) for _, b in rows) == total, (rows[:3], total)

    svg = str(tmp_path / "touch.svg")
    r = subprocess.run([MEMPROF, "plot", "--rss", saved, "-o", svg], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    root = ET.parse(svg).getroot()
    rss = [e for e in root.iter("{http://www.w3.org/2000/svg}polyline") if e.get("id") == "rss"]
    assert rss and len(rss[0].get("points").split()) == len(final["timeline"]), rss
    assert "faulted in so far" in open(svg).read()

    pb = str(tmp_path / "touch.pb.gz")
    r = subprocess.run([MEMPROF, "export", "--rss", saved, "--format", "pprof", "-o", pb],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    go = shutil.which("go")
    if not go:
        pytest.skip("go is not installed (Debian golang-go): the pprof file was written, go tool pprof not run")
    env = dict(os.environ, HOME=os.environ.get("HOME", "/tmp"), PPROF_TMPDIR=tempfile.gettempdir())
    r = subprocess.run([go, "tool", "pprof", "-top", "-unit=B", pb], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    names = [m.group(1).strip() for m in re.finditer(r"^\s*\d+B\s+[\d.]+%\s+[\d.]+%\s+\d+B\s+[\d.]+%\s+(.+)$",
                                                     r.stdout, re.M)]
    assert names and names[0].startswith("touch"), r.stdout
    assert "faulted in" in r.stdout or "faulted in" in subprocess.run(
        [go, "tool", "pprof", "-comments", pb], capture_output=True, text=True, timeout=120, env=env).stdout


def tracked_line(marker="the line that keeps the bytearrays"):
    with open(workload("tracked_heap.py")) as f:
        for n, text in enumerate(f, 1):
            if marker in text:
                return n
    raise AssertionError("tracked_heap.py lost its marked line %r" % marker)


def rss_once(pid, *extra):
    r = subprocess.run([MEMPROF, "rss", "--pid", str(pid), "--once", "--interval", "0.3"] + list(extra),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r
    return r.stdout


@pytest.mark.parametrize("pyid,native", [("debian-3.11", False), ("pyenv-3.12", False), ("debian-3.11", True)],
                         ids=["debian-3.11", "pyenv-3.12", "debian-3.11-native"])
def test_tracked_heap_beside_rss(targets, tmp_path, pyid, native):
    """With memprofd attached to the target, each refresh also carries the session's tracked live heap (Python +
    native) and, by line, the live bytes the agent puts on the row's line; without a session (or a daemon) none.
    native: attached with --native, a numpy array's 50 MiB counted as native at its line."""
    py, ver = interpreter(pyid)
    if native and subprocess.run([py, "-c", "import numpy"], capture_output=True, timeout=60).returncode:
        pytest.skip("%s has no numpy: pip install numpy into it (Debian's python3.11: apt-get install python3-numpy)"
                    % pyid)
    mb = 100
    t = targets.start([py, workload("tracked_heap.py"), str(mb)] + (["numpy"] if native else []),
                      stdin=subprocess.PIPE)
    t.wait_for("^ready")
    d = Daemon(str(tmp_path))
    d.start()
    try:
        # a daemon without a session on the target, and no daemon at all: no tracked object, a note in text
        nothing = str(tmp_path / "none.sock")
        for sock in (d.socket, nothing):
            frame = json.loads(rss_once(t.pid, "--json", "--socket", sock).splitlines()[-1])
            assert "tracked" not in frame and all("tracked_bytes" not in r for r in frame["rows"]), frame
        text = rss_once(t.pid, "--socket", nothing)
        assert "no memprof session on pid %d" % t.pid in text and "tracked heap not shown" in text, text
        assert "TRACKED" not in text, text

        d.attach(t.pid, *(["--native"] if native else []))
        saved = str(tmp_path / "heap.rss")
        v = View(t.pid, "--socket", d.socket, "--save", saved)
        try:
            v.next()
            t.proc.stdin.write("go\n")
            t.proc.stdin.flush()
            built = t.wait_for(r"^built (\d+) (\d+)")
            truth, native_truth = int(built.group(1)), int(built.group(2))
            at = time.time()
            # the agent reports on its own schedule: frames until one carries a report sent after the build
            for _ in range(200):
                tracked = v.next().get("tracked")
                if tracked and tracked["report_time"] > at:
                    break
            final = v.finish()
        finally:
            v.kill()
        tracked = final["tracked"]
        assert tracked["report_time"] > at, (tracked, at)
        assert tracked["session"]["state"] == "attached" and tracked["session"]["id"] > 0, tracked
        assert tracked["session"]["mode"] == ("native" if native else "sampling"), tracked
        assert 0.8 * truth <= tracked["python_bytes"] <= 1.25 * truth, (tracked, truth)
        if native:
            assert 0.8 * native_truth <= tracked["native_bytes"] <= 1.25 * native_truth, (tracked, native_truth)
            line = tracked_line("the line that keeps the array")
            rows = [r for r in final["rows"] if r["file"].endswith("tracked_heap.py") and r["line"] == line]
            assert rows and rows[0]["faulted_bytes"] > 0, final["rows"][:5]
            assert 0.8 * native_truth <= rows[0]["tracked_bytes"] <= 1.25 * native_truth, (rows[0], native_truth)
        assert tracked["untracked_bytes"] == final["rss"]["anon_bytes"] - tracked["python_bytes"] - \
            tracked["native_bytes"], (tracked, final["rss"])
        line = tracked_line()
        rows = [r for r in final["rows"] if r["file"].endswith("tracked_heap.py") and r["line"] == line]
        assert rows and rows[0]["faulted_bytes"] > 0, final["rows"][:5]
        assert 0.8 * truth <= rows[0]["tracked_bytes"] <= 1.25 * truth, (rows[0], truth)
        assert all("tracked_bytes" in r for r in final["rows"]), final["rows"][:5]

        # --save: the session's figures in the file's note, which export prints
        r = subprocess.run([MEMPROF, "export", "--rss", saved, "--format", "collapsed", "-o", str(tmp_path / "f")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "memprof session %d tracked " % tracked["session"]["id"] in r.stdout, r

        text = rss_once(t.pid, "--socket", d.socket)
        assert re.search(r"^tracked heap .* = Python .* \+ native .*\(memprof session \d+, %s, attached\)$"
                         % ("native" if native else "sampling"), text, re.M), text
        assert re.search(r"^RSS anon .* - tracked ", text, re.M), text
        assert re.search(r"^\s+FAULTED\s+TRACKED\s+MAPPED\s+UNMAPPED", text, re.M), text
    finally:
        t.kill()  # before the daemon stops: its session ends with the process
        d.stop()



# --by KEY: one row per key (function, leaf native frame, mapping), its bytes the sum of its faults; --limit N rows.
# rss_touch.py 64 faults 64 MiB of shared memory (a /dev/zero mapping) at touch()'s lines, in libc's memcpy, and 1 MiB
# of anonymous memory (its row is not checked: seen absent once); sampled 1 in 8 (2,048 samples of the 16,384 faults:
# a standard error of 2.2%), each key's bytes within 10% of its truth (4.5 standard errors); without the grouping the
# keys repeat, without --limit the rows do not stop at N.
@pytest.mark.parametrize("by,limit", [("function", 2), ("native", 2), ("mapping", 20)])
def test_rss_by_and_limit(targets, by, limit):
    t = start_touch(targets, default_python(), 64)
    final = watch_touch(t, SMALL + ["--by", by, "--limit", str(limit)])
    rows = final["rows"]
    assert 1 <= len(rows) <= limit, rows
    keys = [r[by] for r in rows]
    assert len(set(keys)) == len(keys), keys  # one row per key
    shm = 64 * 2**20
    top = max(rows, key=lambda r: r.get("faulted_bytes", 0))
    assert 0.9 * shm <= top["faulted_bytes"] <= 1.1 * (shm + 2**20), rows
    if by == "function":
        assert keys == ["touch", "main"], rows  # touch's three lines in one row, then main's unmap
    elif by == "native":
        # the copy that faults, then the next of the three (mmap, memset), the third cut by --limit 2
        # in libc: "memcpy (libc.so.6)", or "libc.so.6+0x..." where its symbols are not at hand (a fresh root)
        native = top["native"]
        assert (native.endswith("(libc.so.6)") or native.startswith("libc.so.6+0x")) and "mmap" not in native, rows
    else:
        assert top["mapping"] == "/dev/zero (deleted)" and top["mapped_bytes"] == shm, rows


def test_rss_duration_ends_the_view(targets):
    """--duration 2: the view ends by itself (no Ctrl-C) with its final frame, no sooner than 2 s after its first."""
    t = start_touch(targets, default_python(), 64)
    v = View(t.pid, "--duration", "2")
    try:
        first = v.next()
        v.p.wait(timeout=60)  # ignoring --duration, it would run until the target exits: the target waits for "go"
        final = v.rest()
    finally:
        v.kill()
    assert final["final"] and final["time"] - first["time"] >= 2 - 0.3 - 0.05, (first["time"], final["time"])
