"""bench_rss.py -- the target's cost of `memprof rss` (eBPF, nothing injected), exec'd by bench.py (root only).

Two workloads, a fresh target per run, interleaved, the fastest of BENCH_RSS_RUNS (default 5) of each: touching
300 MB of a fresh mapping (tests/workloads/rss_touch.py, ~77k page faults; its own timing of touch(), the fastest
of TOUCH_ROUNDS rounds in each process: one round lasts 0.2 s, shorter than this VM's swings) and the alloc
workload (alloc_churn.py, its 'elapsed' line), unwatched and watched by memprof rss with the default sampling
(about 1 fault in 128). Then the events memprof rss takes in with every fault recorded (--sample 1).
Globals from bench.py: row, BUILD, WORKLOADS, PY.
"""
import json
import os
import re
import signal
import subprocess
import sys

RUNS = int(os.environ.get("BENCH_RSS_RUNS", "5"))
TOUCH_ROUNDS = 5
ITER = int(os.environ.get("BENCH_ALLOC_ITER", "200000"))
MEMPROF = os.path.join(BUILD, "memprof")
# alloc_churn.py, started only once a line arrives (memprof rss attaches first)
GATED = ("import sys, runpy; sys.stdin.readline(); sys.argv = sys.argv[1:]; "
         "runpy.run_path(sys.argv[0], run_name='__main__')")


def watch(pid, extra=()):
    v = subprocess.Popen([MEMPROF, "rss", "--pid", str(pid), "--json", "--interval", "0.5"] + list(extra),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not v.stdout.readline():  # the first frame: attached
        sys.exit("bench_rss: memprof rss failed: %s" % v.stderr.read())
    return v


def unwatch(v):
    v.send_signal(signal.SIGINT)
    out, _ = v.communicate(timeout=120)
    return json.loads(out.splitlines()[-1])


def run(argv, pattern, watched, extra=(), rounds=1):
    """Seconds the workload reports (the fastest of its rounds), and memprof rss's final frame (None unwatched)."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    secs = []
    try:
        if "rss_touch" in argv[1]:
            p.stdout.readline()  # ready
        v = watch(p.pid, extra) if watched else None
        for _ in range(rounds):
            p.stdin.write("go\n")
            p.stdin.flush()
            for line in p.stdout:
                m = re.search(pattern, line)
                if m:
                    secs.append(float(m.group(1)))
                    break
        final = unwatch(v) if v else None
    finally:
        p.kill()
        p.wait()
    if len(secs) < rounds:
        sys.exit("bench_rss: %s printed no %r" % (argv, pattern))
    return min(secs), final


def main():
    if os.geteuid() != 0 or "built without" in subprocess.run([MEMPROF, "rss", "--pid", "1", "--help"],
                                                                capture_output=True, text=True).stdout:
        row("memprof rss overhead", "n/a (needs root and a memprof built with rss)", "", "")
        return
    touch = [PY, os.path.join(WORKLOADS, "rss_touch.py"), "300", str(TOUCH_ROUNDS)]
    alloc = [PY, "-c", GATED, os.path.join(WORKLOADS, "alloc_churn.py"), str(ITER)]
    res = {k: [] for k in ("touch", "touch+rss", "alloc", "alloc+rss")}
    for _ in range(RUNS):
        res["touch"].append(run(touch, r"^touched \d+ ([\d.]+)", False, rounds=TOUCH_ROUNDS)[0])
        res["touch+rss"].append(run(touch, r"^touched \d+ ([\d.]+)", True, rounds=TOUCH_ROUNDS)[0])
        res["alloc"].append(run(alloc, r"^elapsed ([\d.]+)", False)[0])
        res["alloc+rss"].append(run(alloc, r"^elapsed ([\d.]+)", True)[0])
    best = {k: min(v) for k, v in res.items()}
    for k, v in res.items():
        print("rss %s: min %.3f s (runs: %s)" % (k, best[k], " ".join("%.3f" % x for x in v)), file=sys.stderr)
    secs, final = run(touch[:-1] + ["1"], r"^touched \d+ ([\d.]+)", True, ["--sample", "1"])
    t = final["total"]
    row("memprof rss, fastest of %d processes: touching 300 MB (fastest of %d rounds each; unwatched %.2f s) / "
        "alloc_churn.py %d (unwatched %.2f s)" % (RUNS, TOUCH_ROUNDS, best["touch"], ITER, best["alloc"]),
        "%.2fx / %.2fx" % (best["touch+rss"] / best["touch"], best["alloc+rss"] / best["alloc"]), "n/a", "")
    row("memprof rss --sample 1 (every fault an event with stack and Python frames): events/s during the touch",
        "%.0f/s (%d events, %d lost, touch %.2f s)" % (t["events"] / secs, t["events"], t["events_lost"], secs),
        "n/a", "")


main()
