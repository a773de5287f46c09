"""bench.py -- `make bench`: memprof against its peers, measured in the same run, as ratios.

Prints the Markdown table of docs/benchmarks.md. memprof runs on the project's workloads
(tests/workloads). The peers (gdb injection, tracemalloc and memory_profiler
runs, objgraph) are the scripts of ../shared/bench/peers (MEMPROF_SHARED): an
optional extra, measured only when present (their rows say n/a otherwise).
BENCH_PARTS=fleet,kill9,watch runs only those scripts/bench_*.py after the attach rows;
BENCH_QUICK=1 shortens the windows of bench_fleet (120 s -> 30 s), bench_watch (600 s -> 60 s) and bench_kill9, for development.
"""
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
SHARED = os.environ.get("MEMPROF_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
WORKLOADS = os.path.join(ROOT, "tests", "workloads")
PEERS = os.path.join(SHARED, "bench", "peers")
HAVE_PEERS = os.path.isdir(PEERS)
PY = os.environ.get("BENCH_PYTHON", "/usr/bin/python3.11")
N = int(os.environ.get("BENCH_ATTACH_RUNS", "20"))

rows = []


def row(what, ours, peer, peer_name):
    rows.append((what, ours, peer, peer_name))


def start_target(argv):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    while True:
        line = p.stdout.readline()
        if not line or line.startswith("ready"):
            break
    return p


def stop_target(p):
    p.kill()
    p.wait()
    p.stdout.close()


def gdb_inject(pid):
    """One run of the gdb peer, its output; a run that hangs (gdb has been seen to, leaving the target stopped) is
    ended after 60 s -- gdb and its children by their process group -- and the target continued."""
    g = subprocess.Popen(["sh", os.path.join(PEERS, "gdb_inject.sh"), str(pid)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        return g.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        os.killpg(g.pid, signal.SIGKILL)
        g.communicate()
        os.kill(pid, signal.SIGCONT)
        print("bench: gdb_inject.sh hung for 60 s: ended, that run not counted", file=sys.stderr)
        return ""


def bench_attach(env):
    svc = os.path.join(WORKLOADS, "service.py")
    p = start_target([PY, "-u", svc, "4"])
    time.sleep(1)
    walls, stops = [], []
    try:
        for _ in range(N):
            t = time.perf_counter()
            r = subprocess.run([os.path.join(BUILD, "memprofd"), "attach", "--pid", str(p.pid)],
                               capture_output=True, text=True, env=env)
            walls.append((time.perf_counter() - t) * 1000)
            m = re.search(r"target stopped ([\d.]+) ms", r.stdout)
            if not m:
                sys.exit("bench: attach failed: %s" % (r.stdout + r.stderr))
            stops.append(float(m.group(1)))
            subprocess.run([os.path.join(BUILD, "memprofd"), "detach", "--pid", str(p.pid)], capture_output=True,
                           env=env, check=True)
        gdb = []
        if shutil.which("gdb") and HAVE_PEERS:
            for _ in range(int(os.environ.get("BENCH_GDB_RUNS", "10"))):
                out = gdb_inject(p.pid)
                m = re.search(r"wall ([\d.]+) s", out)
                if m:
                    gdb.append(float(m.group(1)) * 1000)
    finally:
        stop_target(p)
    print("attach end-to-end ms: median %.1f max %.1f; target stop ms: median %.2f max %.2f" %
          (statistics.median(walls), max(walls), statistics.median(stops), max(stops)), file=sys.stderr)
    gmed = statistics.median(gdb) if gdb else None
    row("attach, end to end (median / max of %d)" % N, "%.0f / %.0f ms" % (statistics.median(walls), max(walls)),
        "%.0f / %.0f ms" % (gmed, max(gdb)) if gdb else "n/a", "gdb call injection (gdb_inject.sh)")
    row("target stopped per attach (median / max)", "%.2f / %.2f ms" % (statistics.median(stops), max(stops)),
        "%.0f ms (whole gdb session)" % gmed if gdb else "n/a", "gdb stops the target throughout")
    if gdb:
        rows.append(("→ attach speed-up over gdb", "%.0fx" % (gmed / statistics.median(walls)), "", ""))


def main():
    tmp = tempfile.mkdtemp(prefix="memprof-bench-")
    env = dict(os.environ, MEMPROF_SOCKET=os.path.join(tmp, "run", "memprofd.sock"))
    print("bench: Python %s, %d cores" % (PY, os.cpu_count()), file=sys.stderr)
    if not HAVE_PEERS:
        print("bench: %s not found: peers not measured (n/a)" % PEERS, file=sys.stderr)
    failed = []
    try:
        bench_attach(env)
        parts = os.environ.get("BENCH_PARTS")  # e.g. "objects,alloc"; default: all
        for extra in sorted(os.listdir(os.path.join(ROOT, "scripts"))):
            if extra.startswith("bench_") and extra.endswith(".py"):
                if parts and extra[6:-3] not in parts.split(","):
                    continue
                ns = {"__name__": "bench_part", "row": row, "BUILD": BUILD, "WORKLOADS": WORKLOADS,
                      "PEERS": PEERS, "HAVE_PEERS": HAVE_PEERS, "PY": PY, "ENV": env, "start_target": start_target, "stop_target": stop_target}
                try:  # one part's failure loses neither the other parts nor the rows so far
                    exec(compile(open(os.path.join(ROOT, "scripts", extra)).read(), extra, "exec"), ns)
                except Exception:
                    traceback.print_exc()
                    failed.append(extra)
    finally:
        subprocess.run([os.path.join(BUILD, "memprofd"), "stop"], capture_output=True, env=env)
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| measurement | memprof | peer | peer measured |")
    print("|---|---|---|---|")
    for what, ours, peer, name in rows:
        print("| %s | %s | %s | %s |" % (what, ours, peer, name))
    if failed:
        sys.exit("bench: failed: %s (its rows are missing above)" % ", ".join(failed))


if __name__ == "__main__":
    main()
