"""Native allocations (memprofd attach --native): numpy's arrays attributed to
the Python line that made them, a C library called through ctypes from two
threads without the GIL, every GOT entry put back at detach (read back from
/proc/PID/mem), repeated attach/detach of a numpy workload, the daemon killed
while native tracking is on. numpy is Debian's python3-numpy (scripts/install-deps.sh);
interpreters without numpy skip those tests with a note."""
import functools
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time

import pytest

from conftest import SUPPORTED_IDS, Daemon, agent_mapped, interpreter, target_script
from test_alloc import read_until, report_after

TARGET = target_script("native_np.py")
HOLD_BYTES = 20 * 10000000
LIB_SRC = r"""
#include <stdlib.h>
void *nt_alloc(size_t n) { return malloc(n); }
void nt_free(void *p) { free(p); }
"""
HOOKED = ("malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc", "memalign", "valloc", "mmap",
          "munmap", "mremap")


def marked_line(tag):
    with open(TARGET) as f:
        for n, text in enumerate(f, 1):
            if "# " + tag in text:
                return n
    raise AssertionError("no %s in %s" % (tag, TARGET))


@functools.lru_cache(maxsize=None)
def has_numpy(exe):
    return subprocess.run([exe, "-c", "import numpy"], capture_output=True, timeout=60).returncode == 0


def numpy_interpreter(pyid):
    exe, _ = interpreter(pyid)
    if not has_numpy(exe):
        pytest.skip("%s has no numpy: pip install numpy into it (Debian's python3.11: apt-get install python3-numpy)"
                    % pyid)
    return exe


@pytest.fixture(scope="module")
def libnt(tmp_path_factory):
    """A small C library calling libc's malloc/free through its PLT, built with cc."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the test library: apt-get install build-essential")
    d = tmp_path_factory.mktemp("libnt")
    src = d / "nt.c"
    src.write_text(LIB_SRC)
    out = str(d / "libnt.so")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", out, str(src)], check=True)
    return out


def send(t, cmd, timeout=120):
    t.proc.stdin.write(cmd + "\n")
    t.proc.stdin.flush()
    return read_until(t, r"^ok %s" % cmd.split()[0], timeout=timeout)


def start(targets, exe):
    t = targets.start([exe, "-u", TARGET], stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    return t


def top_json(daemon, pid, *extra):
    r = daemon.run("top", "--pid", pid, "--once", "--json", "--by", "line", "--limit", "0", "--no-fold", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def own_live(data, line):
    return sum(r["own_live"] for r in data["rows"] if os.path.basename(r["file"]) == "native_np.py" and r["line"] == line)


# ------------------------------------------------------------ GOT entries, read back from /proc/PID/mem

def got_offsets(path):
    """{offset: symbol} of path's JUMP_SLOT/GLOB_DAT relocations of the hooked functions."""
    out = subprocess.run(["readelf", "-rW", path], capture_output=True, text=True, check=True).stdout
    offs = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+R_\w+_(JUMP_SLOT|GLOB_DAT)\s+[0-9a-f]+\s+(\w+)", line)
        if m and m.group(3) in HOOKED:
            offs[int(m.group(1), 16)] = m.group(3)
    return offs


def load_base(pid, path):
    real = os.path.realpath(path)
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and os.path.realpath(parts[5]) == real and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    raise AssertionError("%s is not mapped in %d" % (path, pid))


def linked_base(path):
    """The address path's first PT_LOAD is linked at (0 but for a library linked at a fixed address)."""
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True, check=True).stdout
    return min(int(m.group(1), 16) for m in re.finditer(r"^\s*LOAD\s+0x[0-9a-f]+\s+0x([0-9a-f]+)", out, re.M))


def agent_ranges(pid):
    """[(start, end)] of the agent's mappings in pid."""
    with open("/proc/%d/maps" % pid) as f:
        return [tuple(int(a, 16) for a in l.split()[0].split("-")) for l in f if "libmemprof_agent" in l]


def in_agent(pid, addr):
    return any(lo <= addr < hi for lo, hi in agent_ranges(pid))


def read_got(pid, paths):
    """{(path, symbol, offset): value} for the hooked entries of paths in pid."""
    vals = {}
    with open("/proc/%d/mem" % pid, "rb") as mem:
        for path in paths:
            base = load_base(pid, path) - linked_base(path)
            for off, name in got_offsets(path).items():
                mem.seek(base + off)
                vals[(path, name, off)] = struct.unpack("<Q", mem.read(8))[0]
    return vals


def numpy_core(exe):
    out = subprocess.run([exe, "-c", "import numpy.core._multiarray_umath as m; print(m.__file__)"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


# ------------------------------------------------------------ tests

@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_numpy_line_holds_200mb_churn_holds_nothing(pyid, daemon, targets, tmp_path):
    exe = numpy_interpreter(pyid)
    t = start(targets, exe)
    daemon.attach(t.pid, "--native")
    send(t, "hold")
    send(t, "churn")
    report_after(daemon, t.pid, time.time())  # a report the agent sent after the target's answer
    data = top_json(daemon, t.pid)
    hold, churn = marked_line("HOLD_LINE"), marked_line("CHURN_LINE")
    assert abs(own_live(data, hold) - HOLD_BYTES) <= 0.10 * HOLD_BYTES, (own_live(data, hold), data["rows"][:3])
    top = data["rows"][0]
    assert os.path.basename(top["file"]) == "native_np.py" and top["line"] == hold, data["rows"][:3]
    assert abs(own_live(data, churn)) <= 0.01 * HOLD_BYTES, own_live(data, churn)
    churned = [r for r in data["rows"] if r["line"] == churn and os.path.basename(r["file"]) == "native_np.py"]
    assert churned and churned[0]["allocations"] >= 150, churned  # 200 arrays of 10 MB: each one sampled
    # views: the header's split, the NATIVE share, --native-only, export json and collapsed
    assert abs(data["live_native"] - HOLD_BYTES) <= 0.10 * HOLD_BYTES and data["live_python"] < 0.1 * HOLD_BYTES, data
    assert abs(top["own_native"] - top["own_live"]) <= 0.01 * HOLD_BYTES, top
    only = top_json(daemon, t.pid, "--native-only")
    assert only["native_only"] and all(abs(r["own_native"] - r["own_live"]) < 1 for r in only["rows"]), only["rows"][:3]
    text = daemon.run("top", "--pid", t.pid, "--once", "--by", "line").stdout
    assert re.search(r"tracked live .* = Python .* \+ native ", text) and " NATIVE " in text, text
    row = [l for l in text.splitlines() if l.rstrip().endswith("native_np.py:%d (hold)" % hold)]
    assert row and re.search(r" 100% ", row[0]), text
    ex = json.loads(daemon.run("export", "--pid", t.pid).stdout)
    assert any(st.get("native") and abs(st["live"] - HOLD_BYTES) <= 0.1 * HOLD_BYTES for st in ex["stacks"]), ex["stacks"]
    folded = daemon.run("export", "--pid", t.pid, "--format", "collapsed").stdout.splitlines()
    assert any(re.search(r"native_np.py:hold:%d;\[native\] \d+$" % hold, l) for l in folded), folded[:5]
    # plot stacks the native part under the tracked heap; its peak names the native share
    svg = tmp_path / "np.svg"
    for _ in range(20):  # one history point a second
        r = daemon.run("plot", "--pid", t.pid, "-o", str(svg))
        if "nothing to plot yet" not in r.stderr:
            break
        time.sleep(0.5)
    out = r.stdout + r.stderr
    m = re.search(r"tracked heap peak ([\d.]+) MiB .*\(native ([\d.]+) MiB\)", out)
    assert m and abs(float(m.group(2)) * 2**20 - HOLD_BYTES) <= 0.1 * HOLD_BYTES, out
    assert 'id="native"' in svg.read_text() and ">native part<" in svg.read_text()
    send(t, "release")
    report_after(daemon, t.pid, time.time())  # a report the agent sent after the target's answer
    assert own_live(top_json(daemon, t.pid), hold) <= 0.01 * HOLD_BYTES
    daemon.detach(t.pid)


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_ctypes_two_threads_without_gil(pyid, daemon, targets, libnt):
    """Known sizes from a known line, malloc'd by C code called without the GIL. libnt is loaded after the
    attach (the target's ctypes command loads it): what the dlopen hook patched is counted."""
    exe, _ = interpreter(pyid)
    t = start(targets, exe)
    daemon.attach(t.pid, "--native", "--sample-rate", "65536")
    n, size = 400, 100000
    send(t, "ctypes %s %d %d" % (libnt, n, size))
    report_after(daemon, t.pid, time.time())  # a report the agent sent after the target's answer
    data = top_json(daemon, t.pid)
    line = marked_line("CTYPES_LINE")
    truth = 2 * n * size
    assert abs(own_live(data, line) - truth) <= 0.10 * truth, (own_live(data, line), truth, data["rows"][:3])
    send(t, "cfree")
    report_after(daemon, t.pid, time.time())  # a report the agent sent after the target's answer
    assert abs(own_live(top_json(daemon, t.pid), line)) <= 0.02 * truth
    daemon.detach(t.pid)


def test_got_entries_restored_after_detach(daemon, targets, libnt):
    exe = numpy_interpreter("debian-3.11")
    t = start(targets, exe)
    send(t, "lib %s" % libnt)
    paths = [libnt, numpy_core(exe)]
    before = read_got(t.pid, paths)
    assert any(k[1] == "malloc" for k in before) and any(k[1] == "free" for k in before), before
    daemon.attach(t.pid, "--native")
    during = read_got(t.pid, paths)
    patched = [k for k in before if during[k] != before[k]]
    assert any(k[0] == libnt and k[1] == "malloc" for k in patched), "libnt's malloc was not patched"
    assert any(k[0] == paths[1] for k in patched), "numpy's entries were not patched"
    send(t, "hold")
    daemon.detach(t.pid)
    after = read_got(t.pid, paths)
    assert after == before, [(k, hex(before[k]), hex(after[k])) for k in before if after[k] != before[k]]
    assert not agent_mapped(t.pid)
    send(t, "churn")  # the restored entries work
    send(t, "release")


def test_attach_detach_cycles_numpy(daemon, targets, libnt):
    """numpy work and two threads calling malloc/free without the GIL run throughout."""
    exe = numpy_interpreter("debian-3.11")
    t = start(targets, exe)
    send(t, "spin")
    send(t, "lib %s" % libnt)
    send(t, "cspin")
    want = [l for l in send(t, "sum") if l.startswith("sum ")][0]
    paths = [numpy_core(exe), libnt]
    before = read_got(t.pid, paths)
    for i in range(20):
        daemon.attach(t.pid, "--native")
        send(t, "churn" if i % 5 == 0 else "sum")
        daemon.detach(t.pid)
    assert not agent_mapped(t.pid)
    assert read_got(t.pid, paths) == before
    assert [l for l in send(t, "sum") if l.startswith("sum ")][0] == want
    send(t, "hold")


def test_daemon_killed_target_carries_on(fresh_daemon, targets):
    exe = numpy_interpreter("debian-3.11")
    t = start(targets, exe)
    send(t, "spin")
    paths = [numpy_core(exe)]
    before = read_got(t.pid, paths)
    fresh_daemon.attach(t.pid, "--native")
    assert read_got(t.pid, paths) != before
    fresh_daemon.proc.send_signal(signal.SIGKILL)
    fresh_daemon.proc.wait()
    send(t, "hold")
    send(t, "churn")
    # the agent saw its daemon go: it takes everything back
    deadline = time.time() + 15
    while time.time() < deadline and read_got(t.pid, paths) != before:
        time.sleep(0.2)
    assert read_got(t.pid, paths) == before
    send(t, "release")
    assert t.proc.poll() is None


def test_native_with_exact_refused(daemon, targets):
    exe, _ = interpreter("debian-3.11")
    t = start(targets, exe)
    r = daemon.memprofd("attach", "--pid", t.pid, "--native", "--exact")
    assert r.returncode != 0 and "--native" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_run_native_profile_report(daemon, tmp_path):
    """memprof run --native: the @profile report counts numpy's array at its line."""
    from conftest import MEMPROF
    exe = numpy_interpreter("debian-3.11")
    script = tmp_path / "np_profile.py"
    script.write_text("import numpy as np\n\n\n@profile\ndef f():\n    a = np.zeros(25000000)  # 200 MB\n"
                      "    b = [0] * 10\n    return a\n\n\nx = f()\nprint('done')\n")
    for native, lo, hi in ((True, 0.9 * HOLD_BYTES, 1.1 * HOLD_BYTES), (False, 0, 0.01 * HOLD_BYTES)):
        r = subprocess.run([MEMPROF, "run"] + (["--native"] if native else []) + ["--", exe, str(script)],
                           capture_output=True, text=True, timeout=120, env=daemon.env)
        assert r.returncode == 0 and "done" in r.stdout, r.stdout + r.stderr
        m = re.search(r"^\s+6\s+\S+ MiB\s+(\S+) MiB\s+\d+\s+a = np.zeros", r.stderr, re.M)
        held = float(m.group(1)) * 2**20 if m else 0.0  # without --native the line shows no figures
        assert (m or not native) and lo <= held <= hi, (native, r.stderr)


def test_final_report_stands_while_teardown_frees_native(daemon, tmp_path):
    """The final report is the process's last figures: a native block freed during interpreter teardown, after the
    atexit report, with a report interval (250 ms) passing before the process ends, is not subtracted from it."""
    from conftest import MEMPROF
    exe = numpy_interpreter("debian-3.11")
    script = tmp_path / "teardown.py"
    script.write_text("import time\nimport numpy as np\n\n\nclass Holder:\n    def __init__(self):\n"
                      "        self.arr = np.zeros(2500000)  # HOLD\n\n    def __del__(self, sleep=time.sleep):\n"
                      "        self.arr = None\n        sleep(0.6)\n\n\nh = Holder()\nprint('done')\n")
    r = subprocess.run([MEMPROF, "run", "--native", "--", exe, str(script)], capture_output=True, text=True,
                       timeout=120, env=daemon.env)
    assert r.returncode == 0 and "done" in r.stdout, r.stdout + r.stderr
    pid = int(re.search(r"^memprof: pid (\d+) kept as session", r.stderr, re.M).group(1))
    top = top_json(daemon, pid)
    held = sum(row["own_live"] for row in top["rows"] if row["file"] == str(script) and row["line"] == 7)
    assert abs(held - 20e6) <= 0.05 * 20e6, [(row["file"], row["line"], row["own_live"]) for row in top["rows"][:5]]


def test_lines_native_only(daemon, tmp_path):
    """memprof lines --native-only counts only what C code allocated: of f()'s Python list (2,000,000 pointers,
    16,000,056 bytes) and numpy's array (20,000,000 bytes of data, malloc'd by numpy), the report shows the array's
    line alone; without the option both lines. Sampled 1 in 64 KiB (memprof run's default), each big block is sampled
    and counted as its size (p = 1 - e^-244); a small allocation sampled counts 64 KiB: each line within 0.25 MiB
    (three such samples and the column's rounding)."""
    from conftest import MEMPROF
    exe = numpy_interpreter("debian-3.11")
    script = tmp_path / "np_lines.py"
    script.write_text("import numpy as np\n\n\ndef f():\n    a = [0] * 2000000\n    b = np.zeros(2500000)\n"
                      "    return a, b\n\n\nx = f()\nprint('done')\n")
    r = subprocess.run([MEMPROF, "run", "--native", "--", exe, str(script)], capture_output=True, text=True,
                       timeout=120, env=daemon.env)
    assert r.returncode == 0 and "done" in r.stdout, r.stdout + r.stderr
    pid = int(re.search(r"^memprof: pid (\d+) kept as session", r.stderr, re.M).group(1))

    def increments(*extra):
        out = daemon.run("lines", "--pid", pid, "--function", "f", *extra)
        assert out.returncode == 0, out.stderr
        rows = {}
        for l in out.stdout.splitlines():
            m = re.match(r"^\s*(\d+)\s+\S+ MiB\s+(-?[\d.]+) MiB\s+\d+\s", l)
            if m:
                rows[int(m.group(1))] = float(m.group(2))
        return rows, out.stdout
    both, text = increments()
    assert abs(both.get(5, 0) - 16000056 / 2**20) <= 0.25 and abs(both.get(6, 0) - 20e6 / 2**20) <= 0.25, text
    only, text = increments("--native-only")
    assert abs(only.get(5, 0)) <= 0.25 and abs(only.get(6, 0) - 20e6 / 2**20) <= 0.25, text


def test_library_unloaded_while_hooked(daemon, targets, libnt):
    """A library loaded after attach is patched (dlopen hook); dlclosed while
    hooked, it is never written to at detach, and the others are restored."""
    exe, _ = interpreter("debian-3.11")
    t = start(targets, exe)
    daemon.attach(t.pid, "--native")
    send(t, "lib %s" % libnt)
    # patched at its dlopen: every hooked entry of the library now points into the agent (into libc before)
    got = read_got(t.pid, [libnt])
    assert got and all(in_agent(t.pid, v) for v in got.values()), (got, agent_ranges(t.pid))
    send(t, "ctypes %s 10 1000" % libnt)
    send(t, "cfree")
    send(t, "unload")
    with open("/proc/%d/maps" % t.pid) as f:
        assert os.path.realpath(libnt) not in f.read()
    daemon.detach(t.pid)
    assert not agent_mapped(t.pid)
    send(t, "lib %s" % libnt)  # loads afresh, unpatched, and works
    send(t, "ctypes %s 10 1000" % libnt)
    send(t, "cfree")


# ------------------------------------------------------------ --native-frames

NF_SRC = r"""
#include <stdlib.h>
#include <string.h>
/* no tail calls (-O0): each function keeps its frame, so its name is on the chain */
static void *nf_hidden(size_t n)
{
    char *p = malloc(n);
    if (p) memset(p, 1, 1);
    return p;
}
void *nf_inner(size_t n)
{
    char *p = nf_hidden(n);
    if (p) p[0] = 2;
    return p;
}
void *nf_outer(size_t n)
{
    char *p = nf_inner(n);
    if (p) p[0] = 3;
    return p;
}
"""


@pytest.fixture(scope="module")
def libnf(tmp_path_factory):
    """Two builds of one library whose nf_outer -> nf_inner -> (static) nf_hidden calls malloc:
    with debug info (names and lines from DWARF), and stripped (nf_outer and nf_inner from
    .dynsym; nf_hidden is in no symbol table: it must be shown as an offset, not as a neighbour)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the test library: apt-get install build-essential")
    d = tmp_path_factory.mktemp("libnf")
    src = d / "nf.c"
    src.write_text(NF_SRC)
    debug, stripped = str(d / "libnf_g.so"), str(d / "libnf_s.so")
    subprocess.run([cc, "-shared", "-fPIC", "-O0", "-g", "-o", debug, str(src)], check=True)
    subprocess.run([cc, "-shared", "-fPIC", "-O0", "-s", "-o", stripped, str(src)], check=True)
    return debug, stripped


def export_data(daemon, pid):
    r = daemon.run("export", "--pid", pid)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def hybrid_stacks(ex):
    """[(python frames outermost first, native frames outermost first, live)] of the native stacks."""
    frames = {f["id"]: f for f in ex["frames"]}
    out = []
    for st in ex["stacks"]:
        if st.get("native_frames"):
            out.append(([frames[i] for i in reversed(st["frames"])], [frames[i] for i in reversed(st["native_frames"])],
                         st["live"]))
    return out


def test_native_frames_ctypes_library_names(daemon, targets, libnf, tmp_path):
    """nf_outer -> nf_inner -> nf_hidden -> malloc, called at NF_LINE: the hybrid stack ends in the Python
    line, then the library's functions outermost first; with debug info nf_hidden is named with its file
    and line, stripped it is libnf_s.so+0xOFFSET (never nf_inner or another neighbour)."""
    exe, _ = interpreter("debian-3.11")
    debug, stripped = libnf
    line = marked_line("NF_LINE")
    for lib, inner in ((debug, "nf_hidden"), (stripped, None)):
        t = start(targets, exe)
        # at 4096 a 100 kB block is sampled with probability 1 - e^-24: the sum is exact, not a 3.7% estimate
        daemon.attach(t.pid, "--native", "--native-frames", "--sample-rate", "4096")
        send(t, "nf %s 200 100000" % lib)
        report_after(daemon, t.pid, time.time())  # a report the agent sent after the target's answer
        ex = export_data(daemon, t.pid)
        mine = [(py, nat, live) for py, nat, live in hybrid_stacks(ex)
                if py and os.path.basename(py[-1]["file"]) == "native_np.py" and py[-1]["line"] == line]
        assert mine, [([f["function"] for f in py], [f["function"] for f in nat]) for py, nat, _ in hybrid_stacks(ex)]
        assert abs(sum(m[2] for m in mine) - 200 * 100000) <= 0.1 * 200 * 100000, mine
        names = [f["function"] for f in mine[0][1]]
        k = names.index("nf_outer")  # above it: ctypes/libffi frames
        assert names[k + 1] == "nf_inner", names
        last = mine[0][1][k + 2]
        assert all(f["native"] and f["module"].endswith(os.path.basename(lib)) for f in mine[0][1][k:]), mine[0][1]
        if inner:
            assert last["function"] == "nf_hidden" and last["file"].endswith("nf.c") and last["line"] == 7, last
        else:
            assert re.fullmatch(r"libnf_s\.so\+0x[0-9a-f]+", last["function"]), last
            assert last["line"] == 0, last
        assert len(mine[0][1]) == k + 3, names  # malloc's caller is the innermost: no agent frame
        folded = daemon.run("export", "--pid", t.pid, "--format", "collapsed").stdout.splitlines()
        want = r"native_np.py:nf:%d;\[native\];.*nf_outer \(libnf_\w\.so\);nf_inner \(libnf_\w\.so\);%s \d+$" % (
            line, r"nf_hidden \(libnf_g\.so\)" if inner else r"libnf_s\.so\+0x[0-9a-f]+")
        assert any(re.search(want, l) for l in folded), folded[:5]
        # the flame graph names a frame without a line by its module alone, never "(libnf_s.so:0)"
        page = str(tmp_path / "nf.html")
        assert daemon.run("flamegraph", "--pid", t.pid, "-o", page).returncode == 0
        html = open(page).read()
        assert not re.search(r"\.so[\w.]*:0\)", html), re.findall(r'"name": "[^"]*nf_[^"]*"', html)[:8]
        assert ('"nf_hidden (nf.c:7)"' if inner else '"nf_outer (libnf_s.so)"') in html, \
            re.findall(r'"name": "[^"]*nf_[^"]*"', html)[:8]
        if not inner:
            assert re.search(r'"name": "libnf_s\.so\+0x[0-9a-f]+"', html), re.findall(r'"name": "[^"]*libnf[^"]*"', html)
        if inner and shutil.which("go"):  # pprof: native Locations under the Python one, in libnf's Mapping
            from test_export_pprof import pprof
            path = str(tmp_path / "nf.pb.gz")
            r = daemon.run("export", "--pid", t.pid, "--format", "pprof", "-o", path)
            assert r.returncode == 0, r.stderr
            traces = pprof("-traces", path)
            assert re.search(r"nf_hidden\s+nf_inner\s+nf_outer\s+(.*\s+)*?nf\s", traces), traces[:2000]
            assert re.search(r"libnf_g\.so", pprof("-raw", path)), "no mapping of libnf_g.so"
        daemon.detach(t.pid)


def test_native_frames_numpy_hybrid_stack(daemon, targets):
    """The numpy line's hybrid stack: numpy's C code (_multiarray_umath) under the Python line. Debian's
    numpy has no debug info here and exports few functions in .dynsym: frames without a symbol containing
    them are module+0xOFFSET; every frame is in numpy's module (nothing of the interpreter or the agent)."""
    exe = numpy_interpreter("debian-3.11")
    t = start(targets, exe)
    daemon.attach(t.pid, "--native", "--native-frames")
    send(t, "hold")
    report_after(daemon, t.pid, time.time())  # a report the agent sent after the target's answer
    hold = marked_line("HOLD_LINE")
    ex = export_data(daemon, t.pid)
    mine = [(py, nat, live) for py, nat, live in hybrid_stacks(ex)
            if py and os.path.basename(py[-1]["file"]) == "native_np.py" and py[-1]["line"] == hold]
    assert mine and abs(sum(m[2] for m in mine) - HOLD_BYTES) <= 0.1 * HOLD_BYTES, hybrid_stacks(ex)
    core = os.path.basename(numpy_core(exe))
    for _, nat, _ in mine:
        assert nat and all(f["native"] for f in nat), nat
        assert any(os.path.basename(f["module"]) == core for f in nat), nat
        for f in nat:
            # a name, or the module and an offset -- a name is one of the module's own symbols
            if "+0x" in f["function"]:
                assert f["function"].startswith(os.path.basename(f["module"]) + "+0x"), f
            else:
                assert f["function"] in dynsym(f["module"], t.pid) | symtab_names(f["module"], t.pid) | \
                    demangled(f["module"]), f
            assert "python3" not in os.path.basename(f["module"]) and "memprof" not in f["module"], f
    print("numpy hold line, native frames:", [f["function"] for f in mine[0][1]])
    daemon.detach(t.pid)


CX_SRC = r"""
#include <cstdlib>
#include <cstring>
namespace memprof_test {
template <typename T> struct Pool {
    static void *grab(std::size_t n, const T &mark)
    {
        char *p = static_cast<char *>(std::malloc(n));
        if (p) std::memset(p, static_cast<int>(mark), 1);
        return p;
    }
};
}
/* the entry point the target's nf command calls (-O0: each function keeps its frame) */
extern "C" void *nf_outer(std::size_t n)
{
    char *p = static_cast<char *>(memprof_test::Pool<int>::grab(n, 2));
    if (p) p[0] = 3;
    return p;
}
"""


@pytest.mark.parametrize("demangle", [None, "full", "no"])
def test_native_frames_cplusplus_demangled(daemon, targets, tmp_path, demangle):
    """A C++ library built with g++ (a template member function in a namespace calls malloc): its native
    frame is named demangled, without parameter list (memprof_test::Pool<int>::grab), in the json export
    and the collapsed stacks; the library's .dynsym has it mangled (_ZN12memprof_test4PoolIiE4grab...).
    MEMPROF_DEMANGLE=full in memprofd's environment keeps the signature (as c++filt prints it), =no the mangled
    name."""
    gxx = shutil.which("g++") or shutil.which("c++")
    if not gxx:
        pytest.skip("no C++ compiler (g++) to build the test library: apt-get install build-essential")
    exe, _ = interpreter("debian-3.11")
    src, lib = tmp_path / "cx.cc", str(tmp_path / "libcx.so")
    src.write_text(CX_SRC)
    subprocess.run([gxx, "-shared", "-fPIC", "-O0", "-g", "-o", lib, str(src)], check=True)
    mangled = [n for n in _syms(lib, "-D") if "4PoolIiE4grab" in n]
    assert mangled and mangled[0].startswith("_ZN12memprof_test"), sorted(_syms(lib, "-D"))
    want = {None: "memprof_test::Pool<int>::grab", "no": mangled[0],
            "full": subprocess.run(["c++filt", mangled[0]], capture_output=True, text=True).stdout.strip()}[demangle]
    if demangle:  # a daemon of the test's own, started with the variable
        os.makedirs(str(tmp_path / "d"))
        daemon = Daemon(str(tmp_path / "d"))
        daemon.env["MEMPROF_DEMANGLE"] = demangle
        daemon.start()
    try:
        check_cplusplus_frames(daemon, targets, exe, lib, want)
    finally:
        if demangle:
            daemon.stop()


def check_cplusplus_frames(daemon, targets, exe, lib, want):
    t = start(targets, exe)
    daemon.attach(t.pid, "--native", "--native-frames", "--sample-rate", "65536")
    send(t, "nf %s 200 100000" % lib)
    report_after(daemon, t.pid, time.time())  # a report the agent sent after the target's answer
    line = marked_line("NF_LINE")
    ex = export_data(daemon, t.pid)
    mine = [nat for py, nat, _ in hybrid_stacks(ex)
            if py and os.path.basename(py[-1]["file"]) == "native_np.py" and py[-1]["line"] == line]
    assert mine, [[f["function"] for f in nat] for _, nat, _ in hybrid_stacks(ex)]
    names = [f["function"] for f in mine[0]]
    k = names.index("nf_outer")
    assert names[k + 1:] == [want], names
    assert mine[0][-1]["file"].endswith("cx.cc") and mine[0][-1]["line"] > 0, mine[0][-1]
    assert not any(n.startswith("_Z") for n in names) or want.startswith("_Z"), names
    folded = daemon.run("export", "--pid", t.pid, "--format", "collapsed").stdout.splitlines()
    assert any(re.search(r";nf_outer \(libcx\.so\);%s \(libcx\.so\) \d+$" % re.escape(want), l)
               for l in folded), folded[:5]
    daemon.detach(t.pid)


@functools.lru_cache(maxsize=None)
def _syms(path, flag):
    out = subprocess.run(["nm", flag, "--defined-only", path], capture_output=True, text=True).stdout
    return frozenset(l.split()[-1] for l in out.splitlines() if len(l.split()) >= 3)


@functools.lru_cache(maxsize=None)
def demangled(path):
    """The C++ symbols of path as the daemon names them: demangled without parameter list (c++filt -p) and
    without a template function's return type."""
    names = [n for n in _syms(path, "-D") | _syms(path, "-a") if n.startswith("_Z")]
    if not names or not shutil.which("c++filt"):
        return frozenset()
    out = subprocess.run(["c++filt", "-p"], input="\n".join(names), capture_output=True, text=True).stdout
    return frozenset(n for d in out.splitlines() for n in (d, d.split(" ")[-1]))


def dynsym(module, pid):
    return _syms(module, "-D")


def symtab_names(module, pid):
    return _syms(module, "-a")


# ------------------------------------------------------------ patch failures are told

def python_tracking_carries_on(daemon, t):
    """native_seccomp.py's target keeps 20 MB of Python objects and 100 blocks from its library: the Python line
    holds its 20 MB (within 20%) though the library could not be patched; top's JSON for more checks."""
    send(t, "py")
    send(t, "c 100 100000")
    report_after(daemon, t.pid, time.time())  # a report the agent sent after the target's answer
    data = top_json(daemon, t.pid)
    with open(target_script("native_seccomp.py")) as f:
        py_line = [n for n, text in enumerate(f, 1) if "# PY_LINE" in text][0]
    held = sum(row["own_live"] for row in data["rows"] if row["line"] == py_line and
               os.path.basename(row["file"]) == "native_seccomp.py")
    assert abs(held - 200 * 100000) <= 0.2 * 200 * 100000, data["rows"][:3]
    return data


def test_unpatchable_got_told_python_tracking_continues(daemon, targets, tmp_path):
    """A library with full RELRO in a target whose seccomp filter refuses mprotect(PROT_WRITE): its GOT
    cannot be patched. memprofd attach says so in one line (and memprof status), the attach succeeds
    and Python allocations are tracked."""
    if os.uname().machine != "x86_64":
        pytest.skip("does not apply here: the target's seccomp filter is written for x86_64")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the test library: apt-get install build-essential")
    exe, _ = interpreter("debian-3.11")
    src = tmp_path / "nt.c"
    src.write_text(LIB_SRC)
    lib = str(tmp_path / "libnt_relro.so")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wl,-z,relro,-z,now", "-o", lib, str(src)], check=True)
    t = targets.start([exe, "-u", target_script("native_seccomp.py"), lib], stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    before = read_got(t.pid, [lib])
    r = daemon.attach(t.pid, "--native", "--sample-rate", "65536")
    notes = [l for l in r.stderr.splitlines() if "could not be patched" in l]
    assert len(notes) == 1 and notes[0].startswith("memprofd: pid %d: native: " % t.pid), r.stderr
    assert "mprotect: Operation not permitted" in notes[0] and "Python allocations are tracked" in notes[0], notes
    assert read_got(t.pid, [lib]) == before  # nothing written
    status = daemon.run("status").stdout
    assert re.search(r"^session \d+ \(pid %d\): native: .*could not be patched" % t.pid, status, re.M), status
    data = python_tracking_carries_on(daemon, t)
    daemon.detach(t.pid)
    assert read_got(t.pid, [lib]) == before


def session_json(daemon, pid):
    r = daemon.run("status", "--json")
    assert r.returncode == 0, r.stderr
    mine = [s for s in json.loads(r.stdout) if s["pid"] == pid and s["state"] == "attached"]
    assert len(mine) == 1, r.stdout
    return mine[0]


LATE_NOTE = ("native: libnt_late.so, loaded after the attach: 2 allocation entries could not be patched (its "
             "read-only GOT: mprotect: Operation not permitted): what it allocates is not seen; Python allocations "
             "are tracked")


def late_relro_lib(tmp_path):
    """(path, address): a full-RELRO libnt_late.so linked at a fixed address (ld.so's hint), which
    native_seccomp.py's filter covers before the library is loaded ('late')."""
    if os.uname().machine != "x86_64":
        pytest.skip("does not apply here: the target's seccomp filter is written for x86_64")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the test library: apt-get install build-essential")
    src = tmp_path / "nt.c"
    src.write_text(LIB_SRC)
    lib, at = str(tmp_path / "libnt_late.so"), 0x5A0000000000
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wl,-z,relro,-z,now", "-Wl,-Ttext-segment=0x%x" % at,
                    "-o", lib, str(src)], check=True)
    return lib, at


def test_unpatchable_library_loaded_after_attach_told(daemon, targets, tmp_path):
    """The same refusal for a library the target dlopens after the attach (the agent's dlopen hook patches
    it): the agent sends the note in its reports, and memprof status (text and json), memprof top's header
    and its json name the library and why; the library's GOT is left as ld.so made it, and Python
    tracking carries on. (A library loaded after the attach that can be patched is counted: see
    test_ctypes_two_threads_without_gil, whose ctypes command loads libnt after the attach.)"""
    exe, _ = interpreter("debian-3.11")
    lib, at = late_relro_lib(tmp_path)
    t = targets.start([exe, "-u", target_script("native_seccomp.py"), lib, "late"], stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    r = daemon.attach(t.pid, "--native", "--sample-rate", "65536")
    assert "could not be patched" not in r.stderr, r.stderr  # nothing unpatchable is loaded yet
    assert session_json(daemon, t.pid)["native_late_note"] == ""
    loaded = int([l for l in send(t, "load") if l.startswith("loaded at ")][0].split()[2], 16)
    assert loaded == at, "ld.so did not load %s at its linked address 0x%x (0x%x)" % (lib, at, loaded)
    deadline = time.time() + 15  # the next report carries the note
    while time.time() < deadline and not session_json(daemon, t.pid)["native_late_note"]:
        time.sleep(0.1)
    note = session_json(daemon, t.pid)["native_late_note"]
    assert note == LATE_NOTE, note
    assert session_json(daemon, t.pid)["native_note"] == ""  # the attach's own note stays empty
    status = daemon.run("status").stdout
    assert re.search(r"^session \d+ \(pid %d\): %s$" % (t.pid, re.escape(note)), status, re.M), status
    top = daemon.run("top", "--pid", t.pid, "--once").stdout
    assert note in top.splitlines()[:4], top  # in the header, above the table
    assert top_json(daemon, t.pid)["native_late_note"] == note
    # ld.so's values stand: malloc and free bound to libc, none to the agent
    got = read_got(t.pid, [lib])
    assert sorted(k[1] for k in got) == ["free", "malloc"], got
    libc = [l.split()[5] for l in open("/proc/%d/maps" % t.pid) if "/libc.so" in l][0]
    assert all(load_base(t.pid, libc) <= v < load_base(t.pid, libc) + 0x400000 for v in got.values()), got
    data = python_tracking_carries_on(daemon, t)
    assert data["live_native"] < 0.2 * 100 * 100000, data["live_native"]  # the library's blocks are not seen
    daemon.detach(t.pid)
    assert read_got(t.pid, [lib]) == got


def test_run_native_tells_library_loaded_later(daemon, tmp_path):
    """memprof run --native: a library the program loads later that cannot be patched is named, with why,
    beside the report (the note reaches the daemon at the latest with the agent's final report)."""
    from conftest import MEMPROF
    exe, _ = interpreter("debian-3.11")
    lib, _ = late_relro_lib(tmp_path)
    r = subprocess.run([MEMPROF, "run", "--native", "--", exe, "-u", target_script("native_seccomp.py"), lib, "late"],
                       input="load\npy\n", capture_output=True, text=True, timeout=120, env=daemon.env)
    assert r.returncode == 0 and "ok py" in r.stdout, r.stdout + r.stderr
    pid = int(re.search(r"^ready (\d+)", r.stdout, re.M).group(1))
    assert "memprof: pid %d: %s\n" % (pid, LATE_NOTE) in r.stderr, r.stderr


# ------------------------------------------------------------ a library being loaded while the agent scans

def test_scan_races_dlopen_of_full_relro_library(daemon, targets, tmp_path):
    """A thread loads and unloads a full-RELRO library (malloc's GOT slot first, then 600 more symbols
    to bind on the same read-only pages) in a loop while the agent rescans the loaded objects every 10 ms:
    the agent must never make a GOT page read-only while ld.so is still relocating it (that crashed the
    target in ld.so). The target keeps looping; the attach/detach cycles leave it unharmed."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the test libraries: apt-get install build-essential")
    exe, _ = interpreter("debian-3.11")
    n = 600
    (tmp_path / "helper.c").write_text("".join("int lf_h%d(int x) { return x + %d; }\n" % (i, i) for i in range(n)))
    body = "".join("    s += lf_h%d(s);\n" % i for i in range(n))
    (tmp_path / "lf.c").write_text("#include <stdlib.h>\n" + "".join("int lf_h%d(int);\n" % i for i in range(n)) +
                                   "void *lf_alloc(size_t k)\n{\n    void *p = malloc(k);\n    int s = (int)k;\n" +
                                   "    if (!p) return 0;\n    if (k == 1) {\n" + body + "    }\n    return s ? p : 0;\n}\n")
    helper, lib = str(tmp_path / "libhelper.so"), str(tmp_path / "liblf.so")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", helper, str(tmp_path / "helper.c")], check=True)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wl,-z,relro,-z,now", "-o", lib, str(tmp_path / "lf.c"),
                    "-L" + str(tmp_path), "-lhelper", "-Wl,-rpath," + str(tmp_path)], check=True)
    t = targets.start([exe, "-u", target_script("dlopen_loop.py"), lib], stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    for _ in range(6):
        daemon.attach(t.pid, "--native", "--native-frames", "--interval", "10")
        time.sleep(1.5)
        assert t.proc.poll() is None, "the target died: %s" % t.lines[-5:]
        daemon.detach(t.pid)
    before = int(t.wait_for(r"^loops (\d+)").group(1))
    while int(t.wait_for(r"^loops (\d+)").group(1)) < before + 50:  # still loading and unloading, unharmed
        pass
    assert t.proc.poll() is None and not agent_mapped(t.pid)
