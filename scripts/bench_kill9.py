"""bench_kill9.py -- targets' allocation speed before attach, tracked, and after `kill -9` of the daemon (issue 10), exec'd by bench.py.

8 service.py 1 targets (round-robin over the interpreters tests/pythons.py finds) and 4
controls never attached, all at nice 19. Three windows of 20 s (BENCH_QUICK=1: 8 s):
unprofiled; all 8 attached with --exact (every allocation hooked, so that unhooking shows);
after kill -9 of memprofd, once every agent's thread has gone. Speed: requests served per
second (each one allocates: JSON, dicts, lists), from service.py's beat lines. Each target's
speed is divided by the controls' mean in the same window (the shared machine's load moves
all alike), then by its own unprofiled figure: ratios. tests/test_daemon.py
(test_daemon_killed_with_8_tracking_targets) asserts the behaviour; this only measures.
Then alloc_churn.py's elapsed (Debian's python3.11, normal priority) in BENCH_KILL_RUNS
(default 7; quick: 3) pairs run side by side, so that load bursts hit both: one unprofiled,
one after attach --exact + kill -9 of memprofd + its agent gone; the median ratio.
Globals from bench.py: row, BUILD, WORKLOADS, PY.
"""
import os
import re
import statistics
import subprocess
import sys
import time

import benchproc as bp

sys.path.insert(0, os.path.join(os.path.dirname(BUILD), "tests"))
from pythons import INTERPRETERS, SUPPORTED_IDS  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
WINDOW = 8 if QUICK else 20
NT, NC = 8, 4
RUNS = int(os.environ.get("BENCH_KILL_RUNS", "3" if QUICK else "7"))
ITER = int(os.environ.get("BENCH_ALLOC_ITER", "200000"))
CHURN = os.path.join(WORKLOADS, "alloc_churn.py")
WAITER = os.path.join(os.path.dirname(BUILD), "tests", "targets", "churn_wait.py")


def log(msg):
    print("bench_kill9: " + msg, file=sys.stderr, flush=True)


def window(procs):
    """{pid: requests/s} over the next WINDOW seconds."""
    t0 = time.monotonic()
    time.sleep(WINDOW + 0.5)
    return {p.pid: p.rate(t0, time.monotonic()) for p in procs}


def unhooked(pids, timeout=30):
    """Seconds until no pid has an agent thread (RuntimeError after timeout)."""
    t0 = time.monotonic()
    left = list(pids)
    while left:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("agents still running %d s after the daemon died: %s" % (timeout, left))
        time.sleep(0.05)
        left = [p for p in left if bp.agent_threads(p)]
    return time.monotonic() - t0


def churn_pair():
    """(unprofiled, after kill -9) elapsed of alloc_churn.py, the two run side by side: one process
    attached --exact, then its daemon killed and its agent gone; both told to start at once."""
    d = bp.Daemon(BUILD)
    procs = []
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([PY, "-u", WAITER, CHURN, str(ITER), "--exit"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            procs[-1].stdout.readline()  # ready PID
        d.attach(procs[1].pid, "--exact")
        d.kill()
        unhooked([procs[1].pid])
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        d.close()
    res = []
    for out in outs:
        m = re.search(r"^elapsed ([\d.]+)", out, re.M)
        if not m:
            raise RuntimeError("alloc_churn.py: no elapsed line: %s" % out[-300:])
        res.append(float(m.group(1)))
    return res


def churn_rounds():
    pairs = [churn_pair() for _ in range(RUNS)]
    ratios = sorted(k / u for u, k in pairs)
    log("alloc_churn pairs (unprofiled, after kill -9): %s" % " ".join("%.3f/%.3f" % tuple(p) for p in pairs))
    row("alloc_churn.py %d after attach --exact + kill -9 of memprofd, run beside an unprofiled one: median "
        "(min-max) of %d pairs (unprofiled median %.2f s)" % (ITER, RUNS, statistics.median(u for u, _ in pairs)),
        "%.2fx (%.2f-%.2f)" % (statistics.median(ratios), ratios[0], ratios[-1]), "1.00x", "unprofiled")


def main():
    exes = [INTERPRETERS[i][0] for i in SUPPORTED_IDS if i in INTERPRETERS]
    svc = os.path.join(WORKLOADS, "service.py")
    d = bp.Daemon(BUILD)
    procs = []
    try:
        for i in range(NT + NC):  # appended one by one: the finally kills whatever was started
            procs.append(bp.Target([exes[i % len(exes)], "-u", svc, "1"]))
        tracked, controls = procs[:NT], procs[NT:]
        for p in procs:
            p.wait_ready(beats=2)
        phases = {"unprofiled": window(procs)}
        for p in tracked:
            d.attach(p.pid, "--exact")
        time.sleep(2)
        phases["tracked"] = window(procs)
        d.kill()
        unhooked_s = unhooked([p.pid for p in tracked])
        time.sleep(1)
        phases["after"] = window(procs)
        for p in tracked:
            if p.troubled() or p.proc.poll() is not None or bp.status_field(p.pid, "TracerPid") != "0":
                raise RuntimeError("target %d disturbed: %s" % (p.pid, p.troubled()))
    finally:
        for p in procs:
            p.kill()
        d.close()
    norm = {ph: {p.pid: r[p.pid] / statistics.mean(r[c.pid] for c in controls) for p in tracked}
            for ph, r in phases.items()}
    for ph, r in phases.items():
        log("%s: tracked %s, controls %s requests/s" % (ph, " ".join("%.0f" % r[p.pid] for p in tracked),
                                                     " ".join("%.0f" % r[c.pid] for c in controls)))
    ratio = {ph: sorted(norm[ph][pid] / norm["unprofiled"][pid] for pid in norm[ph]) for ph in ("tracked", "after")}
    for ph, v in ratio.items():
        log("%s / unprofiled per target: %s" % (ph, " ".join("%.2f" % x for x in v)))
    what = "kill -9 of memprofd with %d targets tracking (--exact): speed / unprofiled, median (min-max) of %d, %d s each" \
        % (NT, NT, WINDOW)
    row(what + ": while tracked", "%.2fx (%.2f-%.2f)" % (statistics.median(ratio["tracked"]), ratio["tracked"][0],
                                                        ratio["tracked"][-1]), "", "relative to %d untracked controls" % NC)
    row(what + ": after the kill (agents unhooked)", "%.2fx (%.2f-%.2f)" % (
        statistics.median(ratio["after"]), ratio["after"][0], ratio["after"][-1]), "1.00x", "unprofiled")
    row("kill -9 of memprofd: until every agent of %d had unhooked and ended its thread" % NT, "%.2f s" % unhooked_s,
        "", "")


main()
churn_rounds()
