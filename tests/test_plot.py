"""The daemon's history and what is built on it, against real processes of every
interpreter: session ids in `memprof status`, `memprof diff --pid --window`
(the leak line of service.py on top), `memprof plot` (an SVG parsed back:
both series, legend, a peak naming a function of service.py; live and after
the target exited), `memprof export` (json and collapsed stacks), bad input."""
import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import SUPPORTED_IDS, default_python, interpreter, status_json, target_script, workload
from test_alloc import leak_line

SVG = "{http://www.w3.org/2000/svg}"
# folded stacks: file:function:line frames, outermost first, then live bytes
COLLAPSED_LINE = re.compile(r"^[^;\n]+:[^;\n]*:\d+(;[^;\n]+:[^;\n]*:\d+)* \d+$")


def session_of(daemon, pid):
    """The newest session of pid in `memprof status`."""
    mine = [s for s in status_json(daemon) if s["pid"] == pid]
    assert mine, "pid %d not in memprof status" % pid
    return max(mine, key=lambda s: s["id"])


def wait_state(daemon, pid, state):
    deadline = time.time() + 30
    while session_of(daemon, pid)["state"] != state and time.time() < deadline:
        time.sleep(0.2)
    assert session_of(daemon, pid)["state"] == state, session_of(daemon, pid)


def diff_rows(text, section):
    """The rows of one section ('line' or 'function') of a diff's output."""
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith("by "):
            inside = line == "by %s:" % section
        elif inside and line.startswith("  "):
            rows.append(line)
    return rows


def shown(el):
    """The text an element shows (its <title> tooltip left out)."""
    return (el.text or "") + "".join(c.tail or "" for c in el)


def points(poly):
    return [tuple(float(v) for v in p.split(",")) for p in poly.get("points").split()]


def check_svg(text, pid):
    """Parse a plot and check what a reader needs is there; returns the root."""
    root = ET.fromstring(text)
    assert root.tag == SVG + "svg"
    for el in root.iter():  # self-contained: no scripts, no external references
        assert el.tag not in (SVG + "script", SVG + "image", SVG + "foreignObject"), el.tag
        for k, v in el.attrib.items():
            assert not k.endswith("href"), (el.tag, k, v)
    series = {p.get("id"): p for p in root.iter(SVG + "polyline")}
    assert set(series) >= {"rss", "heap"}, series
    for name in ("rss", "heap"):
        pts = points(series[name])
        assert len(pts) >= 2, (name, pts)
        assert all(x1 < x2 for (x1, _), (x2, _) in zip(pts, pts[1:])), "time goes forward"
    texts = ["".join(t.itertext()) for t in root.iter(SVG + "text")]
    legend = [t for t in texts if t.startswith("RSS") or t.startswith("tracked heap")]
    assert any(t.startswith("RSS") for t in legend) and any(t.startswith("tracked heap") for t in legend), texts
    heading = " ".join(shown(t) for t in root.iter(SVG + "text") if t.get("class") in ("title", "subtitle"))
    assert re.search(r"\bpid %d\b" % pid, heading) and re.search(r"Python 3\.\d+\.\d+", heading), heading
    assert any("service.py" in t for t in texts), "command line shown"
    assert any(re.search(r"\d+(\.\d+)? (KiB|MiB|GiB)$", t) for t in texts), "byte axis in human units"
    # the tracked heap's peak, marked with the function of service.py holding it
    peaks = [g for g in root.iter(SVG + "g") if g.get("class") == "peak"]
    assert peaks, "no peak marked"
    funcs = [shown(t) for g in peaks for t in g.iter(SVG + "text") if t.get("class") == "function"]
    assert any(re.match(r"(handle|worker) \(service\.py:\d+\)$", f) for f in funcs), funcs
    return root


def check_collapsed(text, want_line):
    lines = text.splitlines()
    assert lines, "no stacks"
    for line in lines:
        assert COLLAPSED_LINE.match(line), line
    leak = [l for l in lines if re.search(r"service\.py:handle:%d(;|\s)" % want_line, l)]
    assert leak, "leak line not in the folded stacks:\n" + text[:2000]
    assert all(int(l.rsplit(" ", 1)[1]) > 0 for l in lines)


def check_json(text, pid):
    data = json.loads(text)
    assert data["session"]["pid"] == pid
    assert data["totals"]["live"] > 0 and data["totals"]["rss"] > 0
    frames = {f["id"]: f for f in data["frames"]}
    assert any(f["function"] == "handle" and f["file"].endswith("service.py") for f in frames.values())
    assert data["stacks"]
    for s in data["stacks"]:
        assert s["frames"] and all(f in frames for f in s["frames"]), s
    assert len(data["history"]) >= 2
    for p in data["history"]:
        assert all(site[0] in frames and site[1] > 0 for site in p["sites"]), p
    return data


@pytest.mark.parametrize("pyid", SUPPORTED_IDS)
def test_window_diff_plot_export(pyid, daemon, targets, tmp_path):
    exe, version = interpreter(pyid)
    want = leak_line()
    # service.py's workers until the test says stop on stdin: then a normal exit
    t = targets.start([exe, "-u", target_script("service_until_stdin.py"), workload("service.py"), "4"],
                      stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    # sampled finely enough that the leak (tens of KiB/s on the slower
    # interpreters) stands well above the noise of the short-lived lines
    daemon.attach(t.pid, "--sample-rate", "16384")
    sid = session_of(daemon, t.pid)["id"]
    time.sleep(8)

    r = daemon.run("diff", "--pid", t.pid, "--window", "6")
    assert r.returncode == 0, r.stderr
    assert re.match(r"live: .* -> .* \([+-].*\) over [56]\.\d s$", r.stdout.splitlines()[0]), r.stdout
    by_line, by_func = diff_rows(r.stdout, "line"), diff_rows(r.stdout, "function")
    assert by_line and by_line[0].lstrip().startswith("+"), r.stdout
    assert by_line[0].endswith("service.py:%d (handle)" % want), r.stdout
    assert any(re.search(r"handle \(.*service\.py:\d+\)$", row) for row in by_func), r.stdout

    r = daemon.run("diff", "--pid", t.pid, "--window", "600")
    assert r.returncode == 1 and r.stdout == ""
    assert re.match(r"memprof: pid %d: the history reaches back \d+\.\d s only, not 600 s" % t.pid, r.stderr), r.stderr
    assert r.stderr.count("\n") == 1

    # plot of the live session
    svg = str(tmp_path / "live.svg")
    r = daemon.run("plot", "--pid", t.pid, "-o", svg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote %s: " % svg), r.stdout
    with open(svg) as f:
        check_svg(f.read(), t.pid)
    r = daemon.run("plot", "--pid", t.pid, "-o", "-", "--title", "service <live> & well")
    assert r.returncode == 0, r.stderr
    root = check_svg(r.stdout, t.pid)
    assert "service <live> & well" in [("".join(e.itertext())) for e in root.iter(SVG + "text")]

    # export while attached
    r = daemon.run("export", "--pid", t.pid, "--format", "collapsed")
    assert r.returncode == 0, r.stderr
    check_collapsed(r.stdout, want)
    js = str(tmp_path / "live.json")
    r = daemon.run("export", "--pid", t.pid, "-o", js)
    assert r.returncode == 0 and r.stdout.startswith("wrote %s" % js), r.stdout + r.stderr
    with open(js) as f:
        data = check_json(f.read(), t.pid)
    assert data["session"]["id"] == sid and data["session"]["state"] == "attached"
    assert data["session"]["python"] == version

    # the target ends: its session and history stay, by pid and by session id
    t.proc.stdin.write("stop\n")
    t.proc.stdin.flush()
    assert t.proc.wait(timeout=60) == 0, t.output()
    wait_state(daemon, t.pid, "exited")
    for how in (["--pid", t.pid], ["--session", sid]):
        svg = str(tmp_path / ("exited-%s.svg" % how[0].strip("-")))
        r = daemon.run("plot", *how, "-o", svg)
        assert r.returncode == 0, (how, r.stderr)
        with open(svg) as f:
            root = check_svg(f.read(), t.pid)
        sub = [e for e in root.iter(SVG + "text") if e.get("class") == "subtitle"][0]
        assert "session %d (exited)" % sid in "".join(sub.itertext())
    r = daemon.run("export", "--session", sid, "--format", "collapsed")
    assert r.returncode == 0, r.stderr
    check_collapsed(r.stdout, want)
    r = daemon.run("export", "--pid", t.pid, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert check_json(r.stdout, t.pid)["session"]["state"] == "exited"
    r = daemon.run("diff", "--session", sid, "--window", "5")
    assert r.returncode == 0 and diff_rows(r.stdout, "line"), r.stdout + r.stderr
    assert "ERROR" not in t.output()


def test_session_ids(daemon, targets, tmp_path):
    """Every session gets its own increasing id, shown by status; an ended
    session stays reachable by id after the pid has a newer session."""
    t = targets.start([default_python(), "-u", workload("service.py"), "2"])
    t.wait_for(r"^ready \d+")
    daemon.attach(t.pid)
    first = session_of(daemon, t.pid)
    time.sleep(2.5)
    daemon.detach(t.pid)
    daemon.attach(t.pid)
    second = session_of(daemon, t.pid)
    assert second["id"] > first["id"] and second["state"] == "attached"
    ids = [s["id"] for s in status_json(daemon)]
    assert len(ids) == len(set(ids)), ids

    table = daemon.run("status").stdout.splitlines()
    assert re.match(r"^ID\s+PID\s+PYTHON\s+STATE", table[0]), table
    assert any(re.match(r"^%d\s+%d\s+\S+\s+detached" % (first["id"], t.pid), l) for l in table), table
    assert any(re.match(r"^%d\s+%d\s+\S+\s+attached" % (second["id"], t.pid), l) for l in table), table

    # the pid now names the new session; --session the old, detached one
    r = daemon.run("export", "--session", first["id"])
    assert r.returncode == 0, r.stderr
    old = json.loads(r.stdout)
    assert old["session"]["id"] == first["id"] and old["session"]["state"] == "detached"
    assert old["history"] and old["stacks"]
    r = daemon.run("export", "--pid", t.pid)
    assert r.returncode == 0 and json.loads(r.stdout)["session"]["id"] == second["id"], r.stderr
    r = daemon.run("export", "--pid", t.pid + 1, "--session", first["id"])
    assert r.returncode == 1
    assert r.stderr == "memprof: session %d is of pid %d, not %d\n" % (first["id"], t.pid, t.pid + 1), r.stderr
    daemon.detach(t.pid)


def test_bad_input(daemon, targets, tmp_path):
    t = targets.start([default_python(), "-u", workload("service.py"), "2"])
    t.wait_for(r"^ready \d+")
    svg = str(tmp_path / "x.svg")

    def fails(args, pattern, status=1):
        """status 1: the command could not do its job ("memprof: ..."); 2: a usage error ("memprof CMD: ...");
        6: not attached (the exit-status table, common/exitcodes.h)."""
        r = daemon.run(*args)
        assert r.returncode == status, (args, r.returncode, r.stdout, r.stderr)
        assert re.search(pattern, r.stderr), (args, r.stderr)
        prefix = "memprof %s: " % args[0] if status == 2 else "memprof: "
        assert r.stderr.startswith(prefix) and r.stderr.count("\n") == 1, (args, r.stderr)
        return r

    # not attached, unknown session
    fails(["plot", "--pid", t.pid, "-o", svg], r"pid %d: not attached \(attach first" % t.pid, 6)
    fails(["export", "--pid", t.pid], r"pid %d: not attached" % t.pid, 6)
    fails(["diff", "--pid", t.pid, "--window", "5"], r"pid %d: not attached" % t.pid, 6)
    fails(["plot", "--session", "999999", "-o", svg], r"no session 999999 \(memprof status lists them\)", 6)
    assert not os.path.exists(svg)

    # attached without allocation tracking: no data to plot
    daemon.attach(t.pid, "--no-track")
    fails(["plot", "--pid", t.pid, "-o", svg], r"without allocation tracking")
    fails(["export", "--pid", t.pid, "--format", "collapsed"], r"without allocation tracking")
    daemon.detach(t.pid)

    daemon.attach(t.pid)
    time.sleep(2.5)
    fails(["plot", "--pid", t.pid, "-o", str(tmp_path / "no" / "such" / "dir.svg")],
          r"cannot write .*dir\.svg: No such file or directory")
    fails(["plot", "--pid", t.pid, "-o", str(tmp_path / "mem.png")], r"mem\.png: .*SVG only: use an \.svg name", 2)
    fails(["plot", "--pid", t.pid, "-o", svg, "--format", "png"], r"--format needs one of svg, got 'png'", 2)
    fails(["plot", "--pid", t.pid], r"--output FILE\.svg is required", 2)
    fails(["plot", "-o", svg], r"--pid PID, --session ID or --rss FILE is required", 2)
    fails(["plot", "--pid", "abc", "-o", svg], r"--pid needs a process id, got 'abc'", 2)
    fails(["plot", "--session", "x1", "-o", svg], r"--session needs a session id .*, got 'x1'", 2)
    fails(["export", "--pid", t.pid, "--format", "xml"], r"--format needs one of json, collapsed, pprof, speedscope, got 'xml'",
          2)
    fails(["export", "--pid", t.pid, "-o", str(tmp_path / "no" / "x.json")], r"cannot write .*x\.json")
    fails(["diff", "--pid", t.pid], r"--pid needs --window SECONDS", 2)
    fails(["diff", "--pid", t.pid, "--window", "0"], r"--window needs a number of seconds above 0, got '0'", 2)
    fails(["diff", "--pid", t.pid, "--window", "5s"], r"--window needs a number of seconds above 0, got '5s'", 2)
    fails(["diff", "--window", "5"], r"--window needs --pid PID", 2)
    fails(["diff", "a.mps", "--pid", t.pid, "--window", "5"], r"unexpected argument 'a\.mps'", 2)
    daemon.detach(t.pid)

    for cmd in ("plot", "export", "diff"):
        r = daemon.run(cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith("usage: memprof %s" % cmd), r.stdout
        assert "--socket PATH" in r.stdout and "--session ID" in r.stdout, r.stdout


HOLD_64 = """
import os, sys, time
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
held = [bytearray(1 << 20) for _ in range(64)]
print("held", time.time(), flush=True)
while True:
    time.sleep(0.1)
"""


def _bytes(label):
    num, unit = re.match(r"^([\d.]+)(?: (KiB|MiB|GiB))?$", label).groups()
    return float(num) * {None: 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


def test_plot_heights_are_the_bytes(daemon, targets):
    """The plot's lines stand at the process's real figures, read through its own y axis: the tracked heap at the
    64 MiB the target holds, RSS at its VmRSS, the peak label and marker at the heap's top."""
    t = targets.start([default_python(), "-u", "-c", HOLD_64], stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    # 1 sample per 64 KiB: each 1 MiB array is sampled (p = 1 - e^-16) and counted as its size
    daemon.attach(t.pid, "--sample-rate", "65536")
    t.proc.stdin.write("go\n")
    t.proc.stdin.flush()
    held_at = float(t.wait_for(r"^held ([\d.]+)").group(1))
    # two history points (one a second) after the arrays exist: the plot's last point shows them
    deadline = time.time() + 30
    while time.time() < deadline:
        hist = json.loads(daemon.run("export", "--pid", t.pid).stdout)["history"]
        if len([p for p in hist if p["t"] > held_at]) >= 2:
            break
        time.sleep(0.2)
    with open("/proc/%d/status" % t.pid) as f:
        vmrss = int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024
    r = daemon.run("plot", "--pid", t.pid, "-o", "-")
    assert r.returncode == 0, r.stderr
    root = ET.fromstring(r.stdout)
    # the y axis: its labels (bottom up), each on a horizontal grid line (the label's text sits on a baseline below)
    labels = [_bytes("".join(e.itertext()))
              for g in root.iter(SVG + "g") if g.get("class") == "yticks" for e in g.iter(SVG + "text")]
    rows = sorted({float(l.get("y1")) for g in root.iter(SVG + "g") if g.get("class") == "grid"
                   for l in g.iter(SVG + "line") if l.get("y1") == l.get("y2")}, reverse=True)
    assert len(labels) == len(rows) >= 3 and labels[0] == 0, (labels, rows)
    (y0, b0), (y1, b1) = (rows[0], labels[0]), (rows[-1], labels[-1])

    def at(y):  # the bytes a pixel row stands for, by the axis's own labels
        return b0 + (y - y0) * (b1 - b0) / (y1 - y0)

    series = {p.get("id"): points(p) for p in root.iter(SVG + "polyline")}
    heap, rss = at(series["heap"][-1][1]), at(series["rss"][-1][1])
    truth = 64 * 2**20
    # the heap: the 64 arrays (and their list, headers: < 0.1%); a pixel is ~0.2 MiB of an 80 MiB axis: 1% allowed
    assert truth * 0.99 <= heap <= truth * 1.01, (heap, truth, hist[-1])
    # RSS: the process's VmRSS read just before the plot, the target idle since (1 px, and 1 MiB of drift allowed)
    assert abs(rss - vmrss) <= 2**20 + (b1 - b0) / abs(y1 - y0), (rss, vmrss)
    # the peak: its marker on the heap line's highest point, its label the same bytes
    top_y = min(y for _, y in series["heap"])
    circles = [c for g in root.iter(SVG + "g") if g.get("class") == "peaks" for c in g.iter(SVG + "circle")]
    assert circles and any(abs(float(c.get("cy")) - top_y) < 0.2 for c in circles), (top_y, circles)
    label = [shown(e) for g in root.iter(SVG + "g") if g.get("class") == "peak" for e in g.iter(SVG + "text")
             if shown(e).startswith("peak ")]
    m = re.match(r"^peak ([\d.]+ (?:KiB|MiB|GiB)) at [\d.]+ s", label[0] if label else "")
    assert m and truth * 0.99 <= _bytes(m.group(1)) <= truth * 1.01, label
