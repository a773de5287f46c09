"""IPython and Jupyter: %load_ext memprof (%memit, %mprun, %memprof_top) in terminal IPython and in a real
kernel driven with jupyter_client, and memprof attaching to a running kernel from outside."""
import json
import os
import re
import subprocess
import time

import pytest

from conftest import BUILD, MEMPROF, ROOT, interpreter, proc_state, agent_mapped
from pythons import SUPPORTED_IDS

AGENT = os.path.join(BUILD, "libmemprof_agent.so")
PYDIR = os.path.join(ROOT, "python")
MiB = 1048576.0

_has_ipython = {}


def ipython_python(pyid="debian-3.11"):
    """An interpreter with IPython (Debian's python3-ipython), or a visible skip."""
    exe, _ = interpreter(pyid)
    if exe not in _has_ipython:
        r = subprocess.run([exe, "-c", "import IPython"], capture_output=True, text=True, timeout=60)
        _has_ipython[exe] = r.returncode == 0
    if not _has_ipython[exe]:
        pytest.skip("%s has no IPython (the extension needs it): pip install ipython into %s (Debian's python3.11: "
                    "apt-get install python3-ipython)" % (pyid, exe))
    return exe


def ext_env(daemon, **extra):
    """The extension finds the freshly built memprof, memprofd and agent, and the test's private daemon."""
    env = dict(daemon.env, PATH=BUILD + os.pathsep + os.environ.get("PATH", ""), PYTHONPATH=PYDIR,
               MEMPROF_AGENT=AGENT, MEMPROF=MEMPROF, PYTHONDONTWRITEBYTECODE="1")
    env.pop("MEMPROF_SAMPLE_RATE", None)
    env.update(extra)
    return env


def run_ipython(exe, daemon, tmp_path, code, env=None, timeout=180):
    """Terminal IPython running `code` (a .ipy file, one cell) non-interactively."""
    script = tmp_path / "session.ipy"
    script.write_text(code)
    r = subprocess.run([exe, "-m", "IPython", "--no-banner", "--colors=NoColor", "--no-term-title",
                        "--HistoryManager.enabled=False", str(script)],
                       capture_output=True, text=True, timeout=timeout, env=env or ext_env(daemon),
                       stdin=subprocess.DEVNULL, cwd=str(tmp_path))
    return r.returncode, r.stdout, r.stderr


def increment(text):
    m = re.search(r"peak memory: ([\d.]+) MiB, increment: ([\d.]+) MiB", text)
    assert m, "no %%memit line in: %r" % text
    return float(m.group(2))


def table_rows(report):
    """{line number: (increment MiB, occurrences, text)} of the rows with figures."""
    rows = {}
    for line in report.splitlines():
        m = re.match(r"\s*(\d+)\s+(-?[\d.]+) MiB\s+(-?[\d.]+) MiB\s+(\d+)   (.*)$", line)
        if m:
            rows[int(m.group(1))] = (float(m.group(3)), int(m.group(4)), m.group(5))
    return rows


# ---------------------------------------------------------------- terminal IPython

@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_memit_list_of_ten_million(pyid, daemon, tmp_path):
    exe = ipython_python(pyid)
    rc, out, err = run_ipython(exe, daemon, tmp_path, "%load_ext memprof\n%memit [0] * 10**7\n")
    assert rc == 0, out + err
    assert "memprof: tracking this process" in out, out + err
    inc = increment(out)
    assert 76.3 * 0.9 <= inc <= 76.3 * 1.1, out  # memory_profiler: "increment: 76.30 MiB"
    assert "tracked heap, exact" in out and "RSS: peak" in out, out


def test_memit_options(daemon, tmp_path):
    exe = ipython_python()
    code = ("%load_ext memprof\n"
            "r = %memit -o -q -r 3 [0] * (2 * 10**6)\n"
            "print('runs', len(r.increments), 'inc %.2f' % r.increment)\n")
    rc, out, err = run_ipython(exe, daemon, tmp_path, code)
    assert rc == 0, out + err
    m = re.search(r"runs (\d+) inc ([\d.]+)", out)
    assert m and int(m.group(1)) == 3, out + err
    assert 15.26 * 0.9 <= float(m.group(2)) <= 15.26 * 1.1, out
    assert "peak memory:" not in out, out  # -q


def test_mprun_function_defined_in_session(daemon, tmp_path):
    exe = ipython_python()
    code = ("%load_ext memprof\n"
            "def f():\n"
            "    small = [1] * 1000\n"
            "    big = [2] * (3 * 10**6)\n"
            "    total = len(small) + len(big)\n"
            "    return total\n"
            "%mprun -T report.txt -f f f()\n")
    rc, out, err = run_ipython(exe, daemon, tmp_path, code)
    assert rc == 0, out + err
    assert "Line #    Mem usage    Increment  Occurrences   Line Contents" in out, out + err
    assert "(function f, pid" in out and "exact mode" in out, out
    rows = table_rows(out)
    assert rows, out
    top = max(rows, key=lambda n: rows[n][0])
    assert "big = [2] * (3 * 10**6)" in rows[top][2], out
    assert 22.9 * 0.9 <= rows[top][0] <= 22.9 * 1.1, out
    assert any("small = [1] * 1000" in r[2] for r in rows.values()), out
    assert "def f():" in out and "return total" in out, out  # the whole function, from IPython's linecache
    saved = (tmp_path / "report.txt").read_text()
    assert "*** Profile printout saved to text file report.txt" in out
    assert "big = [2] * (3 * 10**6)" in saved


MPRUN_R_TOP = """%load_ext memprof
def f():
    small = [1] * 1000
    big = [2] * (3 * 10**6)
    return len(big)
def hold():
    global kept
    kept = bytearray(20 * 10**6)
r = %mprun -r -q -f f f()
print("RETURNED", type(r).__name__, repr(r))
hold()
import json, os, subprocess, time
deadline = time.time() + 60
while time.time() < deadline and json.loads(subprocess.run([os.environ["MEMPROF"], "top", "--pid", str(os.getpid()),
        "--once", "--json"], capture_output=True, text=True).stdout)["live"] < 20e6:
    time.sleep(0.1)
%memprof_top --by function --limit 3
print("BY LINE")
%memprof_top --limit 3
"""


def top_first_row(text):
    """(own live MiB, location) of the first row of a `memprof top` table, and the table's [by ...] title."""
    by = re.search(r"LOCATION\s+\[by (\w+),", text)
    row = re.search(r"LOCATION.*\n\s*([\d.]+) (B|KiB|MiB|GiB)\s.*?\s\d+  (.+)$", text, re.M)
    assert by and row, text
    mib = float(row.group(1)) * 1024 ** ["B", "KiB", "MiB", "GiB"].index(row.group(2)) / 2**20
    return by.group(1), mib, row.group(3)


@pytest.mark.parametrize("rate", [None, "65536"])
def test_mprun_r_memprof_top_by_and_sample_rate(daemon, tmp_path, rate):
    """%mprun -r returns the report as a string (-q: not printed); %memprof_top --by function names hold(), which
    holds 20 MB, and by default (by line) its line; MEMPROF_SAMPLE_RATE=65536 before %load_ext samples 1 in 64 KiB
    (the default is exact). The figures are the program's: big = [2] * (3 * 10**6) holds 24,000,056 bytes (22.89
    MiB), kept = bytearray(20 * 10**6) 20,000,057 (19.07 MiB); exact, or each sampled as its own size (p = 1 - e^-300):
    within 0.1 MiB (the column's rounding and one 64 KiB sample of a small allocation)."""
    exe = ipython_python()
    env = ext_env(daemon, **({"MEMPROF_SAMPLE_RATE": rate} if rate else {}))
    rc, out, err = run_ipython(exe, daemon, tmp_path, MPRUN_R_TOP, env=env)
    assert rc == 0, out + err
    mode = "sampling" if rate else "exact"
    assert "memprof: tracking this process (pid %s, %s mode)" % (re.search(r"pid (\d+)", out).group(1), mode) in out, out
    m = re.search(r"^RETURNED (\w+) (.*)$", out, re.M)
    assert m and m.group(1) == "str", out
    report = eval(m.group(2))
    assert not re.search(r"^Line #", out, re.M), out  # -q: returned, not printed
    assert "(function f, pid" in report and "%s mode" % mode in report, report
    big = [inc for inc, occ, txt in table_rows(report).values() if "big = [2] * (3 * 10**6)" in txt]
    assert len(big) == 1 and abs(big[0] - 24000056 / 2**20) <= 0.1, report
    by_function, by_line = out.split("BY LINE")
    assert ("mode sampling (1 per 64.0 KiB)" if rate else "mode exact") in by_function, by_function
    by, mib, where = top_first_row(by_function)
    assert by == "function" and re.match(r"^hold \(<ipython-input-[^>]+>:6\)$", where), by_function
    assert abs(mib - 20000057 / 2**20) <= 0.1, by_function
    by, mib, where = top_first_row(by_line)
    assert by == "line" and re.match(r"^<ipython-input-[^>]+>:8 \(hold\)$", where), by_line
    assert abs(mib - 20000057 / 2**20) <= 0.1, by_line


def test_load_ext_twice_and_top(daemon, tmp_path):
    exe = ipython_python()
    code = ("%load_ext memprof\n"
            "%load_ext memprof\n"
            "%reload_ext memprof\n"
            "keep = [bytearray(1000) for _ in range(2000)]\n"
            "%memprof_top --limit 5\n"
            "print('answer', 6 * 7)\n")
    rc, out, err = run_ipython(exe, daemon, tmp_path, code)
    assert rc == 0, out + err
    assert out.count("memprof: tracking this process") == 1, out + err
    assert "already loaded" in out, out
    assert "OWN LIVE" in out and "mode exact" in out, out
    assert "answer 42" in out, out


def test_load_ext_without_daemon(daemon, tmp_path):
    """memprofd cannot be started (its socket directory is not private): one clear line, the session goes on."""
    exe = ipython_python()
    bad = tmp_path / "open"
    bad.mkdir(mode=0o755)
    os.chmod(str(bad), 0o755)
    env = ext_env(daemon, MEMPROF_SOCKET=str(bad / "memprofd.sock"))
    code = ("%load_ext memprof\n"
            "print('answer', 6 * 7)\n"
            "%memit [0] * 10\n")
    rc, out, err = run_ipython(exe, daemon, tmp_path, code, env=env)
    assert "memprof: cannot start: socket directory %s has mode 755" % bad in err and "must be 700" in err, out + err
    assert "the session carries on without memprof" in err
    assert "answer 42" in out, out + err
    assert "memprof is not running in this process" in out + err, out + err
    assert "Traceback" not in out + err


# ---------------------------------------------------------------- a real kernel

def _jupyter():
    return pytest.importorskip("jupyter_client", reason="python3-jupyter-client is not installed (apt-get install "
                                                        "python3-jupyter-client)")


class Kernel:
    """An ipykernel started with jupyter_client, on Debian's python3; always shut down."""

    def __init__(self, exe, env, tmp_path):
        jc = _jupyter()
        from jupyter_client.kernelspec import KernelSpecManager
        kdir = tmp_path / "kernels" / "memproftest"
        kdir.mkdir(parents=True)
        (kdir / "kernel.json").write_text(json.dumps({
            "argv": [exe, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "memprof test", "language": "python"}))
        ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
        self.km = jc.KernelManager(kernel_name="memproftest", kernel_spec_manager=ksm)
        self.km.start_kernel(env=env, cwd=str(tmp_path))
        self.pid = self.km.provisioner.pid if getattr(self.km, "provisioner", None) else self.km.kernel.pid
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code, timeout=120):
        """(stdout text, stderr text, error (ename, evalue) or None) of one cell, read from iopub."""
        out, err, error = [], [], []

        def hook(msg):
            t, c = msg["msg_type"], msg["content"]
            if t == "stream":
                (out if c["name"] == "stdout" else err).append(c["text"])
            elif t in ("execute_result", "display_data"):
                out.append(c["data"].get("text/plain", "") + "\n")
            elif t == "error":
                error.append((c["ename"], c["evalue"]))
                self.traceback = "\n".join(c.get("traceback", []))

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout, allow_stdin=False,
                                             stop_on_error=False)  # cells that fail on purpose abort no others
        assert reply["content"]["status"] in ("ok", "error")
        return "".join(out), "".join(err), error[0] if error else None

    def shutdown(self):
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(daemon, tmp_path):
    exe = ipython_python()
    r = subprocess.run([exe, "-c", "import ipykernel"], capture_output=True)
    if r.returncode:
        pytest.skip("%s has no ipykernel (apt-get install python3-ipykernel)" % exe)
    _jupyter()
    k = Kernel(exe, ext_env(daemon, JPY_SESSION_NAME="/srv/notebooks/leaky.ipynb"), tmp_path)
    yield k
    pid = k.pid
    k.shutdown()
    state, tracer = proc_state(pid)
    assert state != "t" and tracer == 0 or state is None


def test_kernel_magics(kernel):
    out, err, error = kernel.run("%load_ext memprof")
    assert error is None and "memprof: tracking this process (pid %d" % kernel.pid in out, (out, err, error)
    out, err, error = kernel.run("%memit [0] * 10**7")
    assert error is None, (out, err, error)
    assert 76.3 * 0.9 <= increment(out) <= 76.3 * 1.1, out
    out, err, error = kernel.run("%%memit n = 10**6\ny = [0] * n\n")  # the line is setup, the cell is measured
    assert error is None, (out, err, error)
    assert 7.63 * 0.9 <= increment(out) <= 7.63 * 1.1, out
    kernel.run("def grow(n):\n"
               "    a = list(range(n))\n"
               "    b = [str(i) for i in a]\n"
               "    return len(b)\n")
    out, err, error = kernel.run("%mprun -f grow grow(200000)")
    assert error is None, (out, err, error)
    rows = table_rows(out)
    assert rows, out
    assert any("b = [str(i) for i in a]" in r[2] for r in rows.values()), out
    top = max(rows, key=lambda n: rows[n][0])
    assert "b = [str(i) for i in a]" in rows[top][2], out  # 200000 strings and the list
    assert "def grow(n):" in out, out
    out, err, error = kernel.run("%memprof_top --limit 3")
    assert error is None and "OWN LIVE" in out, (out, err, error)


def test_kernel_bad_input(kernel):
    kernel.run("%load_ext memprof")
    # IPython shows a magic's UsageError as one line on stderr, without a traceback
    out, err, error = kernel.run("%mprun f()")
    assert "UsageError: %mprun needs -f FUNCTION" in err and "Traceback" not in err, (out, err, error)
    out, err, error = kernel.run("%mprun -f no_such_function print(1)")
    assert "UsageError: %mprun: could not find function 'no_such_function' (NameError" in err, (out, err, error)
    assert "1" not in out, out  # the statement did not run
    kernel.run("def boom():\n"
               "    held = [0] * (2 * 10**6)\n"
               "    raise ValueError('boom %d' % len(held))\n")
    out, err, error = kernel.run("%mprun -f boom boom()")
    assert error == ("ValueError", "boom 2000000"), (out, err, error)
    rows = table_rows(out)
    # the report first, with the list's size (2,000,000 pointers and a 56-byte header: 15.26 MiB; exact mode, within
    # the column's rounding)
    assert any("held = [0] * (2 * 10**6)" in r[2] and abs(r[0] - 16000056 / 2**20) <= 0.1 for r in rows.values()), out
    out, err, error = kernel.run("%memit [0] * 10**6; 1/0")
    assert error and error[0] == "ZeroDivisionError" and "peak memory:" in out, (out, err, error)
    out, err, error = kernel.run("%load_ext memprof")
    assert "already loaded" in out + err, (out, err, error)
    out, err, error = kernel.run("6 * 7")
    assert error is None and "42" in out, (out, err, error)


def test_kernel_mprun_asks_only_for_its_files_and_raises_the_users_traceback(kernel, daemon):
    """%mprun asks memprof for the stacks through the profiled functions' files only (not the whole session and its
    history, whose parsing grew with the session's age); after a statement that raised, nothing of memprof's data is
    kept alive by the traceback (%memprof_top does not show json's decoder holding it), and the traceback is the
    user's statement's, not magics.py's internals."""
    out, err, error = kernel.run("%load_ext memprof")
    assert error is None, (out, err, error)
    # an older, busier session: 20000 sites of other files, each holding a little
    out, err, error = kernel.run("held = []\n"
                                 "for i in range(20000):\n"
                                 "    g = {}\n"
                                 "    exec(compile('x = bytearray(64)', 'site%d.py' % i, 'exec'), g)\n"
                                 "    held.append(g['x'])\n")
    assert error is None, (out, err, error)
    kernel.run("def boom():\n"
               "    big = [0] * (2 * 10**6)\n"
               "    raise ValueError('boom %d' % len(big))\n"
               "boom_file = boom.__code__.co_filename\n")
    out, err, error = kernel.run("%mprun -f boom boom()")
    assert error == ("ValueError", "boom 2000000"), (out, err, error)
    assert any("big = [0] * (2 * 10**6)" in r[2] for r in table_rows(out).values()), out
    tb = re.sub(r"\x1b\[[0-9;]*m", "", kernel.traceback)
    assert "magics.py" not in tb and "_exec" not in tb, tb
    assert "raise ValueError('boom %d' % len(big))" in tb, tb
    out, err, error = kernel.run("%memprof_top --by function --limit 5")
    assert error is None and "OWN LIVE" in out, (out, err, error)
    assert "json/" not in out and "decoder.py" not in out, out
    # what %mprun asks for: boom's file only, no history
    out, err, error = kernel.run("print(boom_file)")
    cell_file = out.strip()
    r = daemon.run("mprun-data", "--pid", kernel.pid, "--file", cell_file)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["frames"] and {f["file"] for f in data["frames"]} == {cell_file}, data["frames"]
    assert "history" not in data and len(data["stacks"]) < 50, len(data["stacks"])
    # the figures are the program's (exact mode): boom's list of 2,000,000 pointers, 16,000,056 bytes, allocated
    # at line 2 of its cell (the list and its items); within 64 bytes (a sampled mode, or a 2x, is outside)
    assert data["mode"] == "exact", data["mode"]
    big = {f["id"] for f in data["frames"] if f["function"] == "boom" and f["line"] == 2}
    at_big = [s for s in data["stacks"] if s["frames"] and s["frames"][0] in big]
    assert abs(sum(s["alloc_bytes"] for s in at_big) - 16000056) <= 64, at_big
    # the session's total takes in at least the 20,000 held bytearrays (121 bytes each, sys.getsizeof) and that list
    assert data["totals"]["allocated"] >= 20000 * 121 + 16000056, data["totals"]


def test_kernel_attached_from_outside(kernel, daemon):
    """No extension: memprof ps marks the kernel; attach, top shows the cell's leaking line, detach, it goes on."""
    out, err, error = kernel.run("leak = []\n"
                                 "def handle(i):\n"
                                 "    leak.append(bytearray(4096))  # the leaking line\n"
                                 "    return i\n"
                                 "print(sum(handle(i) for i in range(10)))")
    assert error is None and "45" in out, (out, err, error)
    r = daemon.run("ps")
    row = [l for l in r.stdout.splitlines() if l.split()[:1] == [str(kernel.pid)]]
    assert row and "[kernel: /srv/notebooks/leaky.ipynb]" in row[0] and "ipykernel_launcher" in row[0], r.stdout
    r = daemon.run("ps", "--json")
    entry = [e for e in json.loads(r.stdout) if e["pid"] == kernel.pid]
    assert entry and entry[0]["kernel"] is True and entry[0]["notebook"] == "/srv/notebooks/leaky.ipynb"
    # the kernel idles in zmq polls on several threads
    assert len(os.listdir("/proc/%d/task" % kernel.pid)) >= 3
    daemon.attach(kernel.pid, "--exact", "--interval", "100")
    try:
        out, err, error = kernel.run("for i in range(3000):\n    handle(i)\nprint(len(leak))")
        assert error is None and "3010" in out, (out, err, error)
        seen = ""
        for _ in range(100):  # the agent reports every 100 ms
            seen = daemon.run("top", "--pid", kernel.pid, "--once", "--by", "line").stdout
            if re.search(r"\(handle\)", seen):
                break
            time.sleep(0.1)
        lines = [l for l in seen.splitlines() if "(handle)" in l]
        assert lines, seen
        m = re.match(r"\s*([\d.]+) (\w+)", lines[0])
        assert m and m.group(2) == "MiB" and float(m.group(1)) >= 11, seen  # 3000 x 4 KiB held
    finally:
        daemon.detach(kernel.pid)
    assert not agent_mapped(kernel.pid)
    out, err, error = kernel.run("print(len(leak), sum(range(100)))")
    assert error is None and "3010 4950" in out, (out, err, error)


def test_kernel_extension_detached_from_outside(kernel, daemon):
    """memprofd detach of a kernel that loaded the extension: hooks off, the magics say so, the kernel goes on."""
    out, err, error = kernel.run("%load_ext memprof")
    assert "memprof: tracking this process" in out, (out, err, error)
    r = daemon.run("status", "--json")
    assert [s for s in json.loads(r.stdout) if s["pid"] == kernel.pid and s["state"] == "attached"], r.stdout
    daemon.detach(kernel.pid)
    out, err, error = kernel.run("%memit [0] * 10**6")
    assert "UsageError: memprof was detached from this process" in err, (out, err, error)
    out, err, error = kernel.run("x = [str(i) for i in range(100000)]\nprint(len(x), sum(range(100)))")
    assert error is None and "100000 4950" in out, (out, err, error)
    # attached again from outside (the library is still loaded: memprofd reuses it), then detached for good
    daemon.attach(kernel.pid, "--exact")
    out, err, error = kernel.run("%memit [0] * 10**7")
    assert error is None and 76.3 * 0.9 <= increment(out) <= 76.3 * 1.1, (out, err, error)
    daemon.detach(kernel.pid)
    for cell, want in (("print(6 * 7)", "42"), ("y = {i: str(i) for i in range(50000)}; print(len(y))", "50000")):
        out, err, error = kernel.run(cell)
        assert error is None and want in out, (out, err, error)


def test_installed_layout_found_without_path(daemon, tmp_path):
    """Laid out as make install does (the Makefile's INSTALL_FILES): `memprof ipython-path` names the package's
    directory, and the extension finds PREFIX/bin/memprof next to it with nothing of memprof on PATH."""
    import shutil
    exe = ipython_python()
    prefix = tmp_path / "usr"
    text = open(os.path.join(ROOT, "Makefile")).read()
    entries = re.findall(r"(python/memprof/\S+?):(lib/python3/dist-packages/\S+?):0644", text)
    assert len(entries) >= 3, "INSTALL_FILES has no python/memprof entries"
    for src, dst in entries:
        (prefix / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(ROOT, src), str(prefix / dst))
    (prefix / "bin").mkdir()
    for name in ("memprof", "memprofd"):
        shutil.copy(os.path.join(BUILD, name), str(prefix / "bin" / name))
    r = subprocess.run([str(prefix / "bin" / "memprof"), "ipython-path"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == str(prefix / "lib/python3/dist-packages"), r.stdout + r.stderr
    r = subprocess.run([MEMPROF, "ipython-path"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == PYDIR, r.stdout + r.stderr  # the checkout's own
    if os.path.exists("/usr/bin/memprof") or os.path.exists("/bin/memprof"):
        pytest.skip("memprof is installed in /usr/bin: the PATH of this test would find it first")
    env = ext_env(daemon, PATH="/usr/bin:/bin", PYTHONPATH=str(prefix / "lib/python3/dist-packages"))
    env.pop("MEMPROF")
    rc, out, err = run_ipython(exe, daemon, tmp_path, "%load_ext memprof\nimport memprof\nprint(memprof.__file__)\n"
                               "%memit [0] * 10**7\n", env=env)
    assert rc == 0 and "memprof: tracking this process" in out, out + err
    assert str(prefix / "lib/python3/dist-packages/memprof/__init__.py") in out, out
    assert 76.3 * 0.9 <= increment(out) <= 76.3 * 1.1, out
