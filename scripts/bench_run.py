"""bench_run.py -- `memprof run` against `python -m memory_profiler`, exec'd by bench.py.

Same scripts, decorated with @profile the way memory_profiler users do, in one
run, the fastest of BENCH_RUN_RUNS (default 5; memory_profiler in the first
BENCH_PEER_RUNS, default 3), as bench_alloc does: primes.py (whole run, wall
clock) and alloc_churn.py with @profile on churn (the workload's own 'elapsed'
line; for memory_profiler on BENCH_MP_ITER iterations, scaled per iteration).
Ratios: to unprofiled, and memory_profiler's time to ours.
Globals from bench.py: row, BUILD, WORKLOADS, PY, ENV.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(os.environ.get("BENCH_RUN_RUNS", "5"))
PEER_RUNS = int(os.environ.get("BENCH_PEER_RUNS", "3"))
PRIMES_N = int(os.environ.get("BENCH_RUN_PRIMES", "300000"))
ITER = int(os.environ.get("BENCH_ALLOC_ITER", "200000"))
MP_ITER = int(os.environ.get("BENCH_MP_ITER", "3000"))
MEMPROF = os.path.join(BUILD, "memprof")


def decorate(tmp, name, func):
    src = open(os.path.join(WORKLOADS, name)).read().replace("\ndef %s(" % func, "\n@profile\ndef %s(" % func)
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(src)
    return path


def timed(argv):
    """(wall seconds, stdout); unprofiled runs use the undecorated workload."""
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=3600)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit("bench_run: %s failed: %s" % (argv, r.stderr[-500:]))
    return wall, r.stdout


def elapsed_of(text):
    m = re.search(r"^elapsed ([\d.]+)", text, re.M)
    if not m:
        sys.exit("bench_run: no 'elapsed' in output: %s" % text[-500:])
    return float(m.group(1))


def main():
    tmp = tempfile.mkdtemp(prefix="memprof-bench-run-")
    primes = decorate(tmp, "primes.py", "primes")
    churn = decorate(tmp, "alloc_churn.py", "churn")
    res = {k: [] for k in ("p_base", "p_run", "p_mp", "c_base", "c_run", "c_exact", "c_mp")}
    for r in range(RUNS):
        res["p_base"].append(timed([PY, os.path.join(WORKLOADS, "primes.py"), str(PRIMES_N)])[0])
        res["p_run"].append(timed([MEMPROF, "run", "-o", os.devnull, "--", PY, primes, str(PRIMES_N)])[0])
        if r < PEER_RUNS:
            res["p_mp"].append(timed([PY, "-m", "memory_profiler", primes, str(PRIMES_N)])[0])
        res["c_base"].append(elapsed_of(timed([PY, os.path.join(WORKLOADS, "alloc_churn.py"), str(ITER)])[1]))
        res["c_run"].append(elapsed_of(timed([MEMPROF, "run", "-o", os.devnull, "--", PY, churn, str(ITER)])[1]))
        res["c_exact"].append(elapsed_of(timed([MEMPROF, "run", "--exact", "-o", os.devnull, "--", PY, churn,
                                                str(ITER)])[1]))
        if r < PEER_RUNS:
            res["c_mp"].append(elapsed_of(timed([PY, "-m", "memory_profiler", churn, str(MP_ITER)])[1]) * ITER / MP_ITER)
    best = {k: min(v) for k, v in res.items()}  # the fastest run (see bench_alloc)
    for k, v in res.items():
        print("memprof run %s: min %.3f s, median %.3f s (runs: %s)" % (k, best[k], statistics.median(v),
                                                                      " ".join("%.3f" % x for x in v)), file=sys.stderr)
    row("primes.py %d with @profile, whole run, wall, fastest of %d (unprofiled %.2f s): memprof run vs "
        "python -m memory_profiler" % (PRIMES_N, RUNS, best["p_base"]),
        "%.2f s (%.2fx)" % (best["p_run"], best["p_run"] / best["p_base"]),
        "%.1f s (%.0fx)" % (best["p_mp"], best["p_mp"] / best["p_base"]), "python -m memory_profiler primes.py")
    rows_speed("primes.py", best["p_mp"] / best["p_run"])
    row("alloc_churn.py %d, @profile on churn, churn's elapsed, fastest of %d (unprofiled %.2f s): memprof run "
        "(sampling 64 KiB) vs memory_profiler" % (ITER, RUNS, best["c_base"]),
        "%.2f s (%.2fx)" % (best["c_run"], best["c_run"] / best["c_base"]),
        "%.1f s (%.0fx)" % (best["c_mp"], best["c_mp"] / best["c_base"]),
        "python -m memory_profiler, %d iterations, scaled to %d" % (MP_ITER, ITER))
    rows_speed("alloc_churn.py (sampling)", best["c_mp"] / best["c_run"])
    row("alloc_churn.py %d, same, memprof run --exact vs memory_profiler" % ITER,
        "%.2f s (%.2fx)" % (best["c_exact"], best["c_exact"] / best["c_base"]),
        "%.1f s (%.0fx)" % (best["c_mp"], best["c_mp"] / best["c_base"]), "same")
    rows_speed("alloc_churn.py (--exact)", best["c_mp"] / best["c_exact"])


def rows_speed(what, x):
    row("→ memprof run speed-up over memory_profiler, %s" % what, "%.0fx" % x, "", "goal ≥ 20x")


main()
