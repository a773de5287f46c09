"""bench_native.py -- native allocation tracking (memprof run --native), exec'd by bench.py.

A numpy workload (tests/workloads/numpy_work.py) and the alloc workload
(alloc_churn.py), interleaved, the fastest of BENCH_NATIVE_RUNS (default 5)
of each: unprofiled, memprof run (Python allocations, sampling 512 KiB),
memprof run --native (same rate), memprof run --native --native-frames (each
native sample unwinds its C call chain), and heaptrack (Debian's, which
intercepts native allocations and unwinds every one) when installed. Times are the workloads' own 'elapsed'
lines (the work, not the interpreter's start or the import).
Globals from bench.py: row, BUILD, WORKLOADS, PY, ENV.
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

RUNS = int(os.environ.get("BENCH_NATIVE_RUNS", "5"))
NP_ITER = int(os.environ.get("BENCH_NUMPY_ITER", "8000"))
ITER = int(os.environ.get("BENCH_ALLOC_ITER", "200000"))
MEMPROF = os.path.join(BUILD, "memprof")
HEAPTRACK = shutil.which("heaptrack")
RATE = "524288"


def elapsed(argv):
    r = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=3600)
    m = re.search(r"^elapsed ([\d.]+)", r.stdout, re.M)
    if r.returncode or not m:
        sys.exit("bench_native: %s failed (exit status %d): %s" % (argv, r.returncode, (r.stdout + r.stderr)[-500:]))
    return float(m.group(1))


def main():
    if subprocess.run([PY, "-c", "import numpy"], capture_output=True).returncode:
        row("numpy workload, memprof run --native", "n/a (no numpy for %s: apt-get install python3-numpy)" % PY, "", "")
        return
    tmp = tempfile.mkdtemp(prefix="memprof-bench-native-")
    work = {"numpy": [os.path.join(WORKLOADS, "numpy_work.py"), str(NP_ITER)],
            "alloc": [os.path.join(WORKLOADS, "alloc_churn.py"), str(ITER)]}
    modes = {"base": [], "run": [MEMPROF, "run", "--sample-rate", RATE, "-o", os.devnull, "--"],
             "native": [MEMPROF, "run", "--native", "--sample-rate", RATE, "-o", os.devnull, "--"],
             "frames": [MEMPROF, "run", "--native", "--native-frames", "--sample-rate", RATE, "-o", os.devnull, "--"]}
    if HEAPTRACK:
        modes["heaptrack"] = [HEAPTRACK, "-o", os.path.join(tmp, "ht")]
    res = {(w, m): [] for w in work for m in modes}
    for _ in range(RUNS):
        for w, args in work.items():
            for m, pre in modes.items():
                res[(w, m)].append(elapsed(pre + [PY] + args))
    shutil.rmtree(tmp, ignore_errors=True)
    best = {k: min(v) for k, v in res.items()}
    for k, v in res.items():
        print("native %s/%s: min %.3f s, median %.3f s (runs: %s)" % (k[0], k[1], best[k], statistics.median(v),
                                                                      " ".join("%.3f" % x for x in v)), file=sys.stderr)
    for w, label in (("numpy", "numpy_work.py %d" % NP_ITER), ("alloc", "alloc_churn.py %d" % ITER)):
        base = best[(w, "base")]
        ht = best.get((w, "heaptrack"))
        peer = "%.2fx" % (ht / base) if ht else "n/a"
        row("%s, elapsed, fastest of %d (unprofiled %.2f s): memprof run (Python only, 512 KiB) / --native / "
            "--native --native-frames vs heaptrack" % (label, RUNS, base),
            "%.2fx / %.2fx / %.2fx" % (best[(w, "run")] / base, best[(w, "native")] / base, best[(w, "frames")] / base),
            peer,
            "heaptrack (Debian)" if ht else "heaptrack not installed")


main()
