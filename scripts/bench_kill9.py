"""bench_kill9.py -- targets' allocation speed before attach, tracked, and after `kill -9` of the daemon (issue 10), exec'd by bench.py.

8 service.py 1 targets (round-robin over the interpreters tests/pythons.py finds) and 4
controls never attached, all at nice 19. Three windows of 20 s (BENCH_QUICK=1: 8 s):
unprofiled; all 8 attached with --exact (every allocation hooked, so that unhooking shows);
after kill -9 of memprofd, once every agent's thread has gone. Speed: requests served per
second (each one allocates: JSON, dicts, lists), from service.py's beat lines. Each target's
speed is divided by the controls' mean in the same window (the shared machine's load moves
all alike), then by its own unprofiled figure: ratios. tests/test_daemon.py
(test_daemon_killed_with_8_tracking_targets) asserts the behaviour; this only measures.
Globals from bench.py: row, BUILD, WORKLOADS.
"""
import os
import statistics
import sys
import time

import benchproc as bp

sys.path.insert(0, os.path.join(os.path.dirname(BUILD), "tests"))
from pythons import INTERPRETERS, SUPPORTED_IDS  # noqa: E402

WINDOW = 8 if os.environ.get("BENCH_QUICK") == "1" else 20
NT, NC = 8, 4


def log(msg):
    print("bench_kill9: " + msg, file=sys.stderr, flush=True)


def window(procs):
    """{pid: requests/s} over the next WINDOW seconds."""
    t0 = time.monotonic()
    time.sleep(WINDOW + 0.5)
    return {p.pid: p.rate(t0, time.monotonic()) for p in procs}


def main():
    exes = [INTERPRETERS[i][0] for i in SUPPORTED_IDS if i in INTERPRETERS]
    svc = os.path.join(WORKLOADS, "service.py")
    d = bp.Daemon(BUILD)
    procs = []
    try:
        procs = [bp.Target([exes[i % len(exes)], "-u", svc, "1"]) for i in range(NT + NC)]
        tracked, controls = procs[:NT], procs[NT:]
        for p in procs:
            p.wait_ready(beats=2)
        phases = {"unprofiled": window(procs)}
        for p in tracked:
            d.attach(p.pid, "--exact")
        time.sleep(2)
        phases["tracked"] = window(procs)
        d.kill()
        t_kill = time.monotonic()
        left = list(tracked)
        while left and time.monotonic() - t_kill < 30:
            left = [p for p in left if bp.agent_threads(p.pid)]
            time.sleep(0.05)
        unhooked_s = time.monotonic() - t_kill
        if left:
            raise RuntimeError("agents still running 30 s after the daemon died: %s" % [p.pid for p in left])
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
