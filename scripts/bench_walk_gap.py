"""bench_walk_gap.py -- part of `make bench` (exec'd by bench.py): how long the target's threads wait
while memprof walks its heap. tests/workloads/heap_churn.py builds N objects and runs a 1 ms ticker
thread; each of `types`, `types --all`, `growth`, `backrefs --max-depth 3` and `chain` runs ROUNDS
times and the ticker's longest gap during each is read (median / max), beside objgraph's
in-process walks on the same heap with the same ticker (tests/workloads/objgraph_gap.py).
BENCH_WALK_SIZES (default 1000000,10000000,30000000) and BENCH_WALK_ROUNDS (default 5) change it."""
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SIZES = [int(s) for s in os.environ.get("BENCH_WALK_SIZES", "1000000,10000000,30000000").split(",")]
ROUNDS = int(os.environ.get("BENCH_WALK_ROUNDS", "5"))
PEER_NAMES = {"types": "objgraph.show_most_common_types", "growth": "objgraph.show_growth",
              "backrefs": "objgraph.show_backrefs, depth 3", "chain": "objgraph.find_backref_chain"}


def _rss_gib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 2.0 ** 20


def _heap(n):
    p = subprocess.Popen([PY, "-u", os.path.join(WORKLOADS, "heap_churn.py"), str(n), "0"], stdout=subprocess.PIPE,
                         text=True, bufsize=1)
    m = re.match(r"ready \d+ x=(0x[0-9a-f]+)", p.stdout.readline())
    if not m:
        p.kill()
        raise SystemExit("bench: heap_churn.py %d did not start" % n)
    return p, m.group(1)


def _gap(p):
    os.kill(p.pid, signal.SIGUSR1)
    for line in p.stdout:
        m = re.match(r"gap ([\d.]+)", line)
        if m:
            return float(m.group(1))
    raise SystemExit("bench: heap_churn.py ended")


def _objgraph(n):
    try:
        out = subprocess.run([PY, "-u", os.path.join(WORKLOADS, "objgraph_gap.py"), str(n)], capture_output=True,
                             text=True, timeout=1800).stdout
    except subprocess.TimeoutExpired:
        return {}
    return {op: (float(ms), float(gap)) for op, ms, gap in re.findall(r"objgraph (\w+): ([\d.]+) ms, gap ([\d.]+) ms", out)}


def walk_gaps(n):
    tmp = tempfile.mkdtemp(prefix="memprof-walk-")
    p, x = _heap(n)
    try:
        rss = _rss_gib(p.pid)
        subprocess.run([os.path.join(BUILD, "memprofd"), "attach", "--pid", str(p.pid), "--no-track"], env=ENV,
                       check=True, capture_output=True)
        cmds = [("types", "types"), ("types --all", "types", "--all"),
                ("growth", "growth", "--interval", "0.1", "--count", "1"),
                ("backrefs --max-depth 3", "backrefs", "--addr", x, "--max-depth", "3", "-o", os.path.join(tmp, "x.dot")),
                ("chain", "chain", "--addr", x)]
        ours = {}
        for _ in range(ROUNDS):  # the commands interleaved, round by round
            _gap(p)
            time.sleep(0.3)
            ours.setdefault("nothing run", []).append((_gap(p), 300.0))
            for name, *argv in cmds:
                _gap(p)
                t = time.monotonic()
                r = subprocess.run([os.path.join(BUILD, "memprof"), argv[0], "--pid", str(p.pid)] + argv[1:], env=ENV,
                                   capture_output=True, text=True, timeout=900)
                ms = (time.monotonic() - t) * 1e3
                if r.returncode != 0:
                    raise SystemExit("bench: memprof %s on %d objects failed: %s" % (name, n, r.stderr.strip()))
                ours.setdefault(name, []).append((_gap(p), ms))
        subprocess.run([os.path.join(BUILD, "memprofd"), "detach", "--pid", str(p.pid)], env=ENV, capture_output=True)
    finally:
        stop_target(p)
        shutil.rmtree(tmp, ignore_errors=True)
    peer = _objgraph(n) if HAVE_OBJGRAPH else {}
    for name, runs in ours.items():
        gaps = [g for g, _ in runs]
        op = name.split()[0]
        pg = peer.get(op) if name != "types --all" else None
        row("%s on %s objects (RSS %.1f GiB): a 1 ms ticker's longest gap, median / max of %d (the command's time)"
            % ("`%s`" % name if name != "nothing run" else "nothing run, 300 ms", format(n, ","), rss, ROUNDS),
            "%.1f / %.1f ms (%.0f ms)" % (statistics.median(gaps), max(gaps), statistics.median([m for _, m in runs])),
            "%.0f ms (%.0f ms)" % (pg[1], pg[0]) if pg else "n/a" if op in PEER_NAMES or name == "types --all" else "",
            "objgraph counts tracked objects only" if name == "types --all"
            else (PEER_NAMES[op] + " in-process: its gap (its time)") if op in PEER_NAMES else "")


HAVE_OBJGRAPH = subprocess.run([PY, "-c", "import objgraph"], capture_output=True).returncode == 0
if not HAVE_OBJGRAPH:
    print("bench: objgraph not importable by %s: its walk rows say n/a" % PY, file=sys.stderr)
for size in SIZES:
    walk_gaps(size)
