"""How functions are named and found across the views, against real processes: a comprehension's memory at
the line that wrote it in `memprof lines` (sampling and exact, attach and run), qualified names (co_qualname,
3.11+) in top, lines and pprof, an ambiguous --function listing its candidates, pprof's names as
`go tool pprof -top` prints them."""
import json
import os
import re
import subprocess
import time

import pytest

from conftest import MEMPROF, SUPPORTED_IDS, interpreter, workload
from test_alloc import read_until
from test_export_pprof import export, need_go, pprof
from test_run import ROW, tables

APP = "comp_app.py"


def marked_line(name, mark):
    with open(workload(name)) as f:
        for n, text in enumerate(f, 1):
            if "# " + mark in text:
                return n
    raise AssertionError("no %s in %s" % (mark, name))


def minor(version):
    return tuple(int(x) for x in version.split(".")[:2])


def start_app(daemon, targets, exe, attach_args):
    """comp_app.py attached with attach_args and built: (target, truth bytes of COMP_LINE)."""
    t = targets.start([exe, "-u", workload(APP)], stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    daemon.attach(t.pid, *attach_args)
    t.proc.stdin.write("go\n")
    t.proc.stdin.flush()
    out = read_until(t, r"^built$")
    truth = next(int(l.split()[1]) for l in out if l.startswith("truth "))
    time.sleep(1.0)  # a few report intervals
    return t, truth


def lines_rows(text):
    """{line: increment MiB} of a `memprof lines` table."""
    out = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            out[int(m.group(1))] = float(m.group(3))
    return out


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
@pytest.mark.parametrize("mode", [["--sample-rate", "4096"], ["--exact"]], ids=["sampling", "exact"])
def test_lines_counts_comprehension_at_its_line(pyid, mode, daemon, targets):
    """`self.history = [... for ...]` in __init__ holds what its comprehension allocated, whether the
    comprehension runs in a frame of its own (before 3.12) or inlined (3.12+), sampled or exact."""
    exe, _ = interpreter(pyid)
    t, truth = start_app(daemon, targets, exe, mode)
    r = daemon.run("lines", "--pid", t.pid, "--function", "__init__", "--file", APP)
    assert r.returncode == 0, r.stderr
    rows = lines_rows(r.stdout)
    got = rows.get(marked_line(APP, "COMP_LINE"), 0.0) * 1048576
    assert abs(got - truth) <= 0.1 * truth, "COMP_LINE: %.0f bytes shown, %d held\n%s" % (got, truth, r.stdout)
    daemon.detach(t.pid)


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_run_exact_counts_comprehension_at_its_line(pyid, daemon, tmp_path):
    """memprof run --exact with @profile on UserProfile.__init__: its comprehension line's peak."""
    exe, _ = interpreter(pyid)
    src = open(workload(APP)).read()
    assert "\n    def __init__(self, n):" in src
    script = tmp_path / APP
    script.write_text(src.replace("\n    def __init__(self, n):", "\n    @profile\n    def __init__(self, n):"))
    (tmp_path / "comp_other.py").write_text(open(workload("comp_other.py")).read())
    r = subprocess.run([MEMPROF, "run", "--exact", "--", exe, str(script)], capture_output=True, text=True,
                       timeout=120, env=daemon.env, input="\n\n")
    assert r.returncode == 0, r.stdout + r.stderr
    truth = int(re.search(r"^truth (\d+)$", r.stdout, re.M).group(1))
    reports = tables(r.stderr)
    (_, rows), = reports.get("UserProfile.__init__" if minor(interpreter(pyid)[1]) >= (3, 11) else "__init__")
    comp = marked_line(APP, "COMP_LINE") + 1  # the copy has one more line (@profile)
    inc = {n: i for n, i, _, _ in rows}.get(comp)
    # the line's peak: every profile's history, all kept
    assert inc is not None and abs(inc * 1048576 - truth) <= 0.1 * truth, (truth, r.stderr)


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_qualified_names_and_ambiguous_function(pyid, daemon, targets):
    """top, lines and pprof name the leak UserProfile.__init__ (3.11+); --function __init__ matches two
    functions: an error listing both (file:line, size), exit 2; --file or the qualified name picks one."""
    exe, version = interpreter(pyid)
    qualified = minor(version) >= (3, 11)
    t, truth = start_app(daemon, targets, exe, ["--sample-rate", "4096"])
    comp_line, build_line = marked_line(APP, "COMP_LINE"), marked_line(APP, "BUILD_LINE")

    r = daemon.run("lines", "--pid", t.pid, "--function", "__init__")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"comp_app\.py:%d, [\d.]+ MiB live" % (comp_line - 2), err), err
    assert re.search(r"comp_other\.py:\d+, [\d.]+ KiB live", err), err
    if qualified:
        assert "UserProfile.__init__ (" in err and "Cache.__init__ (" in err, err
        # the largest first
        assert err.index("UserProfile.__init__") < err.index("Cache.__init__"), err

    r = daemon.run("lines", "--pid", t.pid, "--function", "__init__", "--file", "comp_other.py")
    assert r.returncode == 0, r.stderr
    assert "(function %s," % ("Cache.__init__" if qualified else "__init__") in r.stdout, r.stdout

    r = daemon.run("lines", "--pid", t.pid, "--function", "UserProfile.__init__")
    if qualified:
        assert r.returncode == 0, r.stderr
        assert "(function UserProfile.__init__," in r.stdout, r.stdout
        assert abs(lines_rows(r.stdout).get(comp_line, 0) * 1048576 - truth) <= 0.1 * truth, r.stdout
    else:  # no class recorded before 3.11: the last part matches, both candidates are listed
        assert r.returncode == 2 and "give the file" in r.stderr, r.stderr

    # top: the comprehension's memory at the line that wrote it, named alike by line and by function
    # (the constructor folded into the line that created the object, as on 3.12+)
    top = json.loads(daemon.run("top", "--pid", t.pid, "--once", "--json", "--by", "line").stdout)
    first = top["rows"][0]
    assert os.path.basename(first["file"]) == APP and first["line"] == build_line, top["rows"][:3]
    assert first["function"] == "build", first
    nofold = json.loads(daemon.run("top", "--pid", t.pid, "--once", "--json", "--by", "line", "--no-fold").stdout)
    first = nofold["rows"][0]
    assert first["line"] == comp_line, nofold["rows"][:3]
    assert first["function"] == ("UserProfile.__init__" if qualified else "__init__"), first
    byfunc = json.loads(daemon.run("top", "--pid", t.pid, "--once", "--json", "--by", "function",
                                   "--no-fold").stdout)
    assert byfunc["rows"][0]["function"] == first["function"], byfunc["rows"][:3]
    daemon.detach(t.pid)


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_pprof_names_comprehensions_and_modules(pyid, daemon, targets, tmp_path):
    """go tool pprof -top prints <module> and <listcomp> frames by name, never as [python3.x] (its C++
    demangler cut "<...>" names when they came as system names too)."""
    need_go()
    exe, version = interpreter(pyid)
    t, _ = start_app(daemon, targets, exe, ["--sample-rate", "16384"])
    path = str(tmp_path / "heap.pb.gz")
    export(daemon, ["--pid", t.pid], "pprof", path)
    out = pprof("-top", "-cum", "-unit=B", "-nodecount=1000", path)
    rows = re.findall(r"^\s*\d+B?\s+[\d.]+%\s+[\d.]+%\s+\d+B?\s+[\d.]+%\s+(.*)$", out, re.M)
    names = [n.strip() for n in rows]
    assert not [n for n in names if re.match(r"^\[.*\]$", n) or not n], rows
    assert "<module>" in names, rows
    if minor(version) < (3, 12):
        assert "UserProfile.__init__.<locals>.<listcomp>" in names or "<listcomp>" in names, rows
    if minor(version) >= (3, 11):
        assert "UserProfile.__init__" in names, rows
    daemon.detach(t.pid)


# ---------------------------------------------------------------- library frames

LIB = "lib_calls.py"


def start_lib(daemon, targets, exe, attach_args, *argv):
    t = targets.start([exe, "-u", workload(LIB)] + list(argv), stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    daemon.attach(t.pid, *attach_args)
    t.proc.stdin.write("go\n")
    t.proc.stdin.flush()
    read_until(t, r"^built$")
    time.sleep(1.0)
    return t


def top_lines(daemon, pid, *extra):
    r = daemon.run("top", "--pid", pid, "--once", "--json", "--by", "line", "--limit", "0", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def own_at(data, name, line):
    return sum(r["own_live"] for r in data["rows"] if os.path.basename(r["file"]) == name and r["line"] == line)


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_library_allocations_shown_at_the_users_line(pyid, daemon, targets):
    """What json.loads builds (allocated under json/decoder.py) is the user's JSON_LINE's by default;
    --libraries shows it at the standard library's line, the user's line keeping it under TOTAL LIVE."""
    exe, _ = interpreter(pyid)
    t = start_lib(daemon, targets, exe, ["--sample-rate", "65536"])
    line = marked_line(LIB, "JSON_LINE")
    data = top_lines(daemon, t.pid)
    first = data["rows"][0]
    assert os.path.basename(first["file"]) == LIB and first["line"] == line, data["rows"][:3]
    assert first["own_live"] >= 0.8 * data["live"], (first, data["live"])
    libs = top_lines(daemon, t.pid, "--libraries")
    first = libs["rows"][0]
    assert "/json/" in first["file"], libs["rows"][:3]
    assert own_at(libs, LIB, line) <= 0.1 * libs["live"], libs["rows"][:5]
    mine = [r for r in libs["rows"] if os.path.basename(r["file"]) == LIB and r["line"] == line]
    assert mine and mine[0]["total_live"] >= 0.8 * libs["live"], mine
    daemon.detach(t.pid)


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_numpy_wrapper_allocations_shown_at_the_users_line(pyid, daemon, targets):
    """--native: np.ones's 100 MB (allocated by C under numpy's numeric.py wrapper) is ONES_LINE's own."""
    from test_native import numpy_interpreter
    exe = numpy_interpreter(pyid)
    t = start_lib(daemon, targets, exe, ["--native"], "numpy")
    line, want = marked_line(LIB, "ONES_LINE"), 10 * 10000000
    data = top_lines(daemon, t.pid)
    first = data["rows"][0]
    assert os.path.basename(first["file"]) == LIB and first["line"] == line, data["rows"][:3]
    assert abs(first["own_live"] - want) <= 0.1 * want, first
    libs = top_lines(daemon, t.pid, "--libraries")
    first = libs["rows"][0]
    assert "numpy" in first["file"] and first["function"].split(".")[-1] == "ones", libs["rows"][:3]
    daemon.detach(t.pid)
