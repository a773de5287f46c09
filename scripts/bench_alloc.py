"""bench_alloc.py -- allocation tracking overhead on alloc_churn.py, exec'd by bench.py.

Elapsed time of alloc_churn.py's churn (the workload's own 'elapsed' line), in
one run, interleaved, BENCH_ALLOC_RUNS rounds (default 11): unprofiled; memprof
sampling (attached before churn starts); memprof exact; after a detach (attach +
detach, then churn); and, in the first BENCH_PEER_RUNS rounds (default 3),
tracemalloc with 1 frame and memory_profiler's line mode (fewer iterations,
scaled per iteration). Ratios to unprofiled, of the fastest run of each, as
timeit reports: on this shared 2-core machine whole runs slow down by up to
1.6x in bursts of seconds, which medians of a few runs do not survive; every
run is printed on stderr. The peers (only when ../shared/bench/peers is present)
run their own copy of alloc_churn.py: its checksum must equal ours, or their
rows say n/a, so that the ratios compare the same work.
Globals from bench.py: row, BUILD, WORKLOADS, PEERS, HAVE_PEERS, PY, ENV.
"""
import os
import re
import statistics
import subprocess
import sys

ITER = int(os.environ.get("BENCH_ALLOC_ITER", "200000"))
MP_ITER = int(os.environ.get("BENCH_MP_ITER", "3000"))
RUNS = int(os.environ.get("BENCH_ALLOC_RUNS", "11"))
PEER_RUNS = int(os.environ.get("BENCH_PEER_RUNS", "3"))
ROOT = os.path.dirname(BUILD)
CHURN = os.path.join(WORKLOADS, "alloc_churn.py")
WAITER = os.path.join(ROOT, "tests", "targets", "churn_wait.py")
MEMPROFD = os.path.join(BUILD, "memprofd")


checksums = set()  # of every run, ours and the peers': one value when all did the same work


def elapsed_of(text):
    m = re.search(r"^elapsed ([\d.]+)", text, re.M)
    if not m:
        sys.exit("bench_alloc: no 'elapsed' in output: %s" % text[-500:])
    return float(m.group(1))


def checksum_of(text):
    m = re.search(r"^checksum .*$", text, re.M)
    return m.group(0) if m else None


def churn(attach_args=None, detach_first=False):
    """Elapsed of one churn; attach_args None: unprofiled."""
    p = subprocess.Popen([PY, "-u", WAITER, CHURN, str(ITER), "--exit"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        p.stdout.readline()  # ready PID
        if attach_args is not None:
            subprocess.run([MEMPROFD, "attach", "--pid", str(p.pid)] + attach_args, capture_output=True, text=True,
                           env=ENV, check=True)
            if detach_first:
                subprocess.run([MEMPROFD, "detach", "--pid", str(p.pid)], capture_output=True, env=ENV, check=True)
        out, _ = p.communicate("go\n", timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if attach_args is not None and not detach_first:
        subprocess.run([MEMPROFD, "detach", "--pid", str(p.pid)], capture_output=True, env=ENV)
    checksums.add(checksum_of(out))
    return elapsed_of(out)


def peer(argv, same_iterations=True):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=1800).stdout
    if same_iterations:
        checksums.add(checksum_of(out))
    return elapsed_of(out)


def main():
    res = {k: [] for k in ("base", "sampling", "exact", "detached", "tracemalloc", "memory_profiler")}
    for r in range(RUNS):
        res["base"].append(churn())
        res["sampling"].append(churn([]))
        res["exact"].append(churn(["--exact"]))
        res["detached"].append(churn([], detach_first=True))
        if r < PEER_RUNS and HAVE_PEERS:
            res["tracemalloc"].append(peer(["sh", os.path.join(PEERS, "tracemalloc_run.sh"), "1", str(ITER), PY]))
            res["memory_profiler"].append(
                peer(["sh", os.path.join(PEERS, "memory_profiler_run.sh"), str(MP_ITER), PY], False) * ITER / MP_ITER)
    if len(checksums) != 1:
        print("bench_alloc: the peers' alloc_churn.py did other work (checksums %s): peers n/a" % sorted(checksums),
              file=sys.stderr)
        res["tracemalloc"], res["memory_profiler"] = [], []
    res = {k: v for k, v in res.items() if v}
    best = {k: min(v) for k, v in res.items()}
    med = {k: statistics.median(v) for k, v in res.items()}
    for k, v in res.items():
        print("alloc_churn %s: min %.3f s, median %.3f s (runs: %s)" % (k, best[k], med[k], " ".join("%.3f" % x for x in v)),
              file=sys.stderr)

    def ratio(k, fmt="%.2fx"):
        return fmt % (best[k] / best["base"]) if k in best else "n/a"

    what = "alloc_churn.py %d, elapsed, fastest of %d (unprofiled %.2f s)" % (ITER, RUNS, best["base"])
    tm = "tracemalloc_run.sh 1 %d, fastest of %d" % (ITER, PEER_RUNS)
    row(what + ": memprof sampling (512 KiB) vs tracemalloc(1)", ratio("sampling"), ratio("tracemalloc"), tm)
    row(what + ": memprof exact vs tracemalloc(1)", ratio("exact"), ratio("tracemalloc"), tm)
    row(what + ": memprof sampling vs memory_profiler line mode", ratio("sampling"), ratio("memory_profiler", "%.0fx"),
        "memory_profiler_run.sh %d, scaled to %d, fastest of %d" % (MP_ITER, ITER, PEER_RUNS))
    row("alloc_churn.py after attach + detach (back to unprofiled speed?)", ratio("detached"), "1.00x", "unprofiled")


main()
