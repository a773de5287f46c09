"""memprof export --format pprof|speedscope and memprof flamegraph against real processes: go tool pprof
reads the profile (leak function first, same bytes as memprof top, Python stacks in -traces, the profile's
types and period), an ended session still exports, speedscope's file shape, the flame graph rendered in
headless Chromium with a search that highlights the leak line; bad input."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import default_python, target_script, workload
from test_alloc import leak_line, report_after, run_alloc_lines

GO = shutil.which("go")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def need_go():
    if not GO:
        pytest.skip("go is not installed (go tool pprof reads the profiles): apt-get install golang-go")


def pprof(*args, timeout=120):
    env = dict(os.environ, HOME=os.environ.get("HOME", "/tmp"), PPROF_TMPDIR=tempfile.gettempdir())
    r = subprocess.run([GO, "tool", "pprof"] + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, "go tool pprof %s failed: %s%s" % (args, r.stdout, r.stderr)
    return r.stdout


def top_rows(text):
    """go tool pprof -top -unit=B rows: [(flat bytes, cum bytes, name)]."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)B\s+[\d.]+%\s+[\d.]+%\s+(\d+)B\s+[\d.]+%\s+(.+)$", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(3).strip()))
    return rows


def top_json(daemon, pid, *extra):
    r = daemon.run("top", "--pid", pid, "--once", "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def near(a, b, rel=0.01):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1)


def export(daemon, who, fmt, path, *extra):
    r = daemon.run("export", *who, "--format", fmt, "-o", path, *extra)
    assert r.returncode == 0, r.stderr + daemon.log_tail()
    return r.stdout


@pytest.fixture
def ended_service(daemon, targets):
    """service.py run for a few seconds under tracking, until it exits: (pid, session id)."""
    t = targets.start([default_python(), workload("service.py"), "2", "5"])
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    daemon.attach(pid, "--sample-rate", "16384")
    while t.readline(60) is not None:
        pass
    t.proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline:
        st = json.loads(daemon.run("status", "--json").stdout)
        mine = [s for s in st if s["pid"] == pid]
        if mine and max(mine, key=lambda s: s["id"])["state"] != "attached":
            return pid, max(mine, key=lambda s: s["id"])["id"]
        time.sleep(0.2)
    raise AssertionError("session of pid %d did not end" % pid)


def test_pprof_of_ended_session_matches_top(daemon, ended_service, tmp_path):
    need_go()
    pid, sid = ended_service
    path = str(tmp_path / "heap.pb.gz")
    out = export(daemon, ["--pid", pid], "pprof", path)
    assert re.match(r"wrote .*heap\.pb\.gz: \d+ stacks, .* live \(pprof\)", out), out
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b", "not gzip"
    top = top_json(daemon, pid, "--by", "function", "--no-fold")
    rows = top_rows(pprof("-top", "-unit=B", path))
    assert rows, "no rows from go tool pprof -top"
    first = top["rows"][0]
    assert first["file"].endswith("service.py"), first
    assert rows[0][2] == first["function"], (rows[:3], top["rows"][:3])
    assert near(rows[0][0], first["own_live"]), (rows[0], first)
    assert near(sum(r[0] for r in rows), top["live"]), (sum(r[0] for r in rows), top["live"])
    # the leak's stack, leaf first: Session.__init__ called by handle, by worker, in a thread
    traces = pprof("-traces", path)
    stacks = [[l.split()[-1] for l in block.strip().splitlines() if l.strip() and not l.strip().startswith("bytes:")]
              for block in traces.split("-----------+")[1:]]
    stacks = [[n.split(".")[-1] for n in s] for s in stacks]  # qualified names (3.11+): Session.__init__
    assert any(s[:3] == ["__init__", "handle", "worker"] or s[1:4] == ["__init__", "handle", "worker"]
               for s in stacks), traces[:3000]
    # the same session by id, after the pid is gone
    path2 = str(tmp_path / "by-session.pb.gz")
    export(daemon, ["--session", sid], "pprof", path2)
    assert top_rows(pprof("-top", "-unit=B", path2))[0] == rows[0]


def test_pprof_types_period_and_lines(daemon, targets, tmp_path):
    need_go()
    t, _, _, _ = run_alloc_lines(daemon, targets, default_python(), ["--sample-rate", "8192"])
    pid = t.pid
    path = str(tmp_path / "heap.pb.gz")
    export(daemon, ["--pid", pid], "pprof", path)
    raw = pprof("-raw", path)
    assert "PeriodType: space bytes" in raw and "Period: 8192" in raw, raw[:800]
    assert re.search(r"alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes\[dflt\]", raw), raw[:800]
    top = top_json(daemon, pid, "--by", "line", "--no-fold")
    rows = top_rows(pprof("-top", "-lines", "-unit=B", path))
    first = top["rows"][0]
    # -lines names a row "function file:line"
    assert rows[0][2].endswith("alloc_lines.py:%d" % first["line"]), (rows[:3], top["rows"][:3])
    assert near(rows[0][0], first["own_live"]), (rows[0], first)
    # --allocated makes alloc_space the default type; -sample_index picks any
    path_a = str(tmp_path / "allocs.pb.gz")
    export(daemon, ["--pid", pid], "pprof", path_a, "--allocated")
    assert "Type: alloc_space" in pprof("-top", path_a)
    assert "Type: inuse_objects" in pprof("-top", "-sample_index=inuse_objects", path)


def test_speedscope_shape(daemon, ended_service, tmp_path):
    pid, _ = ended_service
    path = str(tmp_path / "s.speedscope.json")
    export(daemon, ["--pid", pid], "speedscope", path)
    d = json.load(open(path))
    assert d["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = d["shared"]["frames"]
    assert frames and all(isinstance(f["name"], str) and isinstance(f["line"], int) for f in frames)
    assert [p["name"] for p in d["profiles"]] == ["live bytes", "allocated bytes"]
    assert 0 <= d["activeProfileIndex"] < len(d["profiles"])
    for p in d["profiles"]:
        assert p["type"] == "sampled" and p["unit"] == "bytes" and p["startValue"] == 0
        assert len(p["samples"]) == len(p["weights"]) > 0
        assert all(isinstance(i, int) and 0 <= i < len(frames) for s in p["samples"] for i in s)
        assert abs(p["endValue"] - sum(p["weights"])) <= len(p["weights"]), p["endValue"]
    live = d["profiles"][0]
    top = top_json(daemon, pid)
    assert near(live["endValue"], top["live"]), (live["endValue"], top["live"])
    # stacks are root first: the leak's stack ends in handle's frame at LEAK_LINE, then Session.__init__
    names = [[(frames[i]["name"], frames[i]["line"]) for i in s] for s in live["samples"]]
    assert any(("handle", leak_line()) in s and s[-1][0].split(".")[-1] == "__init__" and s.index(("handle", leak_line())) == len(s) - 2
               for s in names), names[:5]


def chromium_dom(url, tmp_path):
    profile = tempfile.mkdtemp(prefix="memprof-chromium-", dir=str(tmp_path))
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", "--user-data-dir=" + profile, "--virtual-time-budget=5000",
                        "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout, "chromium failed (%d): %s" % (r.returncode, r.stderr[-2000:])
    return r.stdout


def test_flamegraph_renders_and_search_highlights_leak(daemon, targets, tmp_path):
    if not CHROMIUM:
        pytest.skip("chromium is not installed (it renders the page): apt-get install chromium")
    t = targets.start([default_python(), workload("service.py"), "2", "0"])
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    daemon.attach(pid, "--sample-rate", "16384")
    t.wait_for("beat 3")
    path = tmp_path / "flame.html"
    r = daemon.run("flamegraph", "--pid", pid, "-o", path)
    assert r.returncode == 0 and re.match(r"wrote .*flame\.html: \d+ stacks, .* live", r.stdout), r.stdout + r.stderr
    html = path.read_text()
    # self-contained: no external script, style or link
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html), "the page loads something"
    assert "d3-flame-graph" in html
    leak = "service.py:%d" % leak_line()
    dom = chromium_dom("file://%s#search=%s" % (path, leak), tmp_path)
    frames = re.findall(r'<g [^>]*name="([^"]*)"[^>]*class="frame[^"]*"><rect [^>]*fill="([^"]*)"', dom)
    assert len(frames) >= 5, "the flame graph did not render: %s" % dom[-3000:]
    hits = [(n, c) for n, c in frames if leak in n]
    assert hits and all(c.lower() == "#e600e6" for n, c in hits), hits
    assert any(n.startswith("handle (") for n, c in hits), hits
    assert all(c.lower() != "#e600e6" for n, c in frames if leak not in n)
    m = re.search(r'<div id="details">search: (\d+) frames match, ([\d.]+ \w+) live', dom)
    assert m and int(m.group(1)) >= 1, dom[-2000:]
    # without a search, nothing is highlighted; --allocated draws allocated bytes
    dom = chromium_dom("file://%s" % path, tmp_path)
    frames = re.findall(r'<g [^>]*name="([^"]*)"[^>]*class="frame[^"]*"><rect [^>]*fill="([^"]*)"', dom)
    assert ("all live", ) in [(n, ) for n, c in frames] and all(c.lower() != "#e600e6" for n, c in frames), frames
    r = daemon.run("flamegraph", "--pid", pid, "-o", tmp_path / "alloc.html", "--allocated")
    assert r.returncode == 0 and "allocated" in r.stdout, r.stderr


# ---------------------------------------------------------------- the exports against what the program did

# Line 5 holds 24 arrays of 1 MiB; line 7 allocates 64 more, one at a time, and frees each (none live at the end).
KNOWN = """
import os, sys
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
held = [bytearray(1 << 20) for _ in range(24)]
for _ in range(64):
    x = bytearray(1 << 20)
del x
print("built", sum(sys.getsizeof(b) for b in held), sys.getsizeof(bytearray(1 << 20)), flush=True)
sys.stdin.readline()
"""
HELD_LINE, CHURN_LINE = 5, 7


@pytest.fixture
def known(daemon, targets):
    """KNOWN run under tracking, sampled 1 in 64 KiB: (pid, bytes line 5 holds, bytes line 7 allocated), the truth
    from the program's own sys.getsizeof, once a report that followed the work is in."""
    t = targets.start([default_python(), "-u", "-c", KNOWN], stdin=subprocess.PIPE)
    t.wait_for(r"^ready \d+")
    daemon.attach(t.pid, "--sample-rate", "65536")
    t.proc.stdin.write("go\n")
    t.proc.stdin.flush()
    m = t.wait_for(r"^built (\d+) (\d+)")
    report_after(daemon, t.pid, time.time())
    yield t.pid, int(m.group(1)), 64 * int(m.group(2))
    t.proc.stdin.write("go\n")
    t.proc.stdin.flush()


# Tolerance of each line's figure, the same for every export: sampled 1 in 64 KiB, each 1 MiB array is sampled
# (p = 1 - e^-16) and counted as its own size, while a small allocation of the line that happens to be sampled (the
# comprehension's list of 24 pointers) counts 64 KiB: 0.2 MiB allows three such samples; a 2x or 10x error, a
# swapped live/allocated or a figure scaled by the rate is far outside.
TOL = 0.2 * 2**20


def by_line(pairs):
    """{line: bytes} summed over [(leaf frame line of <string>, bytes)]."""
    out = {}
    for line, nbytes in pairs:
        out[line] = out.get(line, 0) + nbytes
    return out


def test_pprof_values_are_what_the_program_did(daemon, known, tmp_path):
    """go tool pprof reads, at line 5, the bytes the program holds there (inuse_space) and, at line 7, the 64 MiB
    it allocated and freed (alloc_space), nothing live."""
    need_go()
    pid, held, churned = known
    path = str(tmp_path / "known.pb.gz")
    export(daemon, ["--pid", pid], "pprof", path)
    for index, want in (("inuse_space", {HELD_LINE: held, CHURN_LINE: 0}),
                        ("alloc_space", {HELD_LINE: held, CHURN_LINE: churned})):
        text = pprof("-top", "-lines", "-unit=B", "-sample_index=" + index, path)
        got = by_line((int(m.group(1)), flat) for flat, _, name in top_rows(text)
                      for m in [re.search(r"<string>:(\d+)$", name)] if m)
        for line, nbytes in want.items():
            assert abs(got.get(line, 0) - nbytes) <= TOL, (index, line, got.get(line, 0), nbytes, text)


def test_speedscope_values_are_what_the_program_did(daemon, known, tmp_path):
    """speedscope's live profile weighs the stacks ending at line 5 as the bytes the program holds there, and its
    allocated profile weighs line 7 as the 64 MiB allocated; line 7 holds nothing live."""
    pid, held, churned = known
    path = str(tmp_path / "known.speedscope.json")
    export(daemon, ["--pid", pid], "speedscope", path)
    d = json.load(open(path))
    frames = d["shared"]["frames"]
    for profile, want in zip(d["profiles"], ({HELD_LINE: held, CHURN_LINE: 0}, {HELD_LINE: held, CHURN_LINE: churned})):
        got = by_line((frames[s[-1]]["line"], w) for s, w in zip(profile["samples"], profile["weights"])
                      if s and frames[s[-1]]["file"] == "<string>")
        for line, nbytes in want.items():
            assert abs(got.get(line, 0) - nbytes) <= TOL, (profile["name"], line, got.get(line, 0), nbytes)


def flame_data(path):
    html = open(path).read()
    at = html.index("const DATA = ") + len("const DATA = ")
    return json.JSONDecoder().raw_decode(html, at)[0]


def test_flamegraph_allocated_is_what_the_program_allocated(daemon, known, tmp_path):
    """The page's data (the tree the browser draws): with --allocated, the frame of line 7 is 64 MiB wide and line
    5's the bytes it holds; without, line 7 has no frame (nothing live) and line 5 is what the program holds."""
    pid, held, churned = known
    for extra, want in (((), {HELD_LINE: held, CHURN_LINE: 0}), (("--allocated",), {HELD_LINE: held, CHURN_LINE: churned})):
        path = str(tmp_path / ("flame%s.html" % "".join(extra)))
        r = daemon.run("flamegraph", "--pid", pid, "-o", path, *extra)
        assert r.returncode == 0, r.stderr
        tree, got = flame_data(path), {}

        def walk(node):  # a <string> frame's own bytes: its value less its children's
            own = node["value"] - sum(c["value"] for c in node.get("children", []))
            if node.get("file") == "<string>":
                got[node["line"]] = got.get(node["line"], 0) + own
            for c in node.get("children", []):
                walk(c)
        walk(tree)
        for line, nbytes in want.items():
            assert abs(got.get(line, 0) - nbytes) <= TOL, (extra, line, got.get(line, 0), nbytes, got)


def test_bad_input(daemon, targets, tmp_path):
    r = daemon.run("export", "--pid", os.getpid(), "--format", "svg")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--format" in r.stderr, r.stderr
    t = targets.start([default_python(), target_script("idle.py")])
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    daemon.attach(pid)
    for args in (["export", "--pid", pid, "--format", "pprof", "-o", "/nonexistent/dir/heap.pb.gz"],
                 ["flamegraph", "--pid", pid, "-o", "/nonexistent/dir/flame.html"]):
        r = daemon.run(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot write /nonexistent/dir" in r.stderr, r.stderr
    r = daemon.run("flamegraph", "--pid", pid)
    assert r.returncode == 2 and "--output FILE.html is required" in r.stderr
    r = daemon.run("export", "--pid", 1, "--format", "pprof", "-o", tmp_path / "x.pb.gz")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and not (tmp_path / "x.pb.gz").exists(), r.stderr
