"""bench_watch.py -- memprofd attaching by policy (serve --watch, issue 26), exec'd by bench.py.

One `memprofd serve --http --watch command=memprof-watch-bench`. In turn:
 1. what always-on sampling costs a service: one service.py (one worker thread: two contend for
    the GIL and their rate swings 2x from second to second; at nice 0, started outside the rule) attached with the default sampling and detached in turn, BENCH_WATCH_ROUNDS
    (default 11) rounds of 4 s each way, the first beat after each switch dropped, and attached with
    a sampling rate no allocation reaches (the hooks' own cost); requests served per second, fastest
    round of each state, and the ratios;
 2. from a matching process's start (its fork) to its session attached (memprof status) and to its
    first sample (memprof_samples_total above 0 in /metrics), for BENCH_WATCH_TARGETS (default 32) service.py 1
    targets at nice 19, started one after the other, each with the rule's marker in its argv;
 3. with those 32 watched: memprofd's CPU share and its RSS at the start, middle and end of
    BENCH_WATCH_WINDOW seconds (default 600; BENCH_QUICK=1: 60).
Globals from bench.py: row, BUILD, WORKLOADS, PY.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

import benchproc as bp

QUICK = os.environ.get("BENCH_QUICK") == "1"
NT = int(os.environ.get("BENCH_WATCH_TARGETS", "32"))
ROUNDS = int(os.environ.get("BENCH_WATCH_ROUNDS", "5" if QUICK else "11"))
WINDOW = int(os.environ.get("BENCH_WATCH_WINDOW", "60" if QUICK else "600"))
MARK = "memprof-watch-bench"
SERVICE = os.path.join(WORKLOADS, "service.py")


def log(msg):
    print("bench_watch: " + msg, file=sys.stderr, flush=True)


def samples(port):
    """{pid: memprof_samples_total} from /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30) as r:
        text = r.read().decode()
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r'^memprof_samples_total\{pid="(\d+)"[^}]*\} (\S+)$', text, re.M)}


STATES = (("detached", None), ("attached", ()), ("hooks only", ("--sample-rate", "1000000000000")))


def throughput(d):
    """Requests/s of one service, detached, attached (default sampling) and attached with a sampling rate no
    allocation ever reaches (the PyMem hooks' cost alone), interleaved round by round."""
    t = bp.Target([PY, "-u", SERVICE, "1"], nice=0)
    try:
        t.wait_ready(beats=2)
        rates = {name: [] for name, _ in STATES}
        for _ in range(ROUNDS):
            for name, args in STATES:
                if args is not None:
                    d.attach(t.pid, *args)
                t0 = time.monotonic()
                time.sleep(4.2)
                rates[name].append(t.rate(t0, time.monotonic(), skip=1))  # not the switch's second
                if args is not None:
                    r = d.run("memprofd", "detach", "--pid", t.pid)
                    if r.returncode:
                        raise RuntimeError("detach %d: %s" % (t.pid, r.stderr))
        if t.troubled() or t.proc.poll() is not None:
            raise RuntimeError("the service was disturbed: %s" % t.troubled())
    finally:
        t.kill()
    for name, v in rates.items():
        log("requests/s per round, %s: %s" % (name, " ".join("%.0f" % x for x in v)))
    best = {k: max(v) for k, v in rates.items()}
    row("always-on sampling, service.py (JSON requests): throughput detached / attached, fastest of %d "
        "4 s rounds each, interleaved" % ROUNDS, "%.3fx" % (best["detached"] / best["attached"]), "",
        "%.0f vs %.0f requests/s; goal < 1.01x" % (best["detached"], best["attached"]))
    row("the same, the PyMem hooks alone (attached, a sampling rate never reached)",
        "%.3fx" % (best["detached"] / best["hooks only"]), "", "%.0f requests/s" % best["hooks only"])


def first_samples(d, targets):
    """Start NT matching targets one after the other: (s to attached, s to first sample) of each."""
    attached, sampled = [], []
    for i in range(NT):
        t0 = time.monotonic()
        t = bp.Target([PY, "-u", SERVICE, "1", "0", MARK])
        targets.append(t)
        seen = None
        while True:
            time.sleep(0.02)
            now = time.monotonic()
            if now - t0 > 30:
                raise RuntimeError("target %d not sampled 30 s after its start: %s" % (t.pid, d.log_tail()))
            if seen is None:
                r = d.run("memprof", "status", "--json")
                if any(x["pid"] == t.pid and x["state"] == "attached" for x in json.loads(r.stdout or "[]")):
                    seen = now - t0
                continue
            got = samples(d.port)
            if got.get(t.pid, 0) > 0:
                attached.append(seen)
                sampled.append(now - t0)
                break
    log("start -> attached (s): %s" % " ".join("%.2f" % x for x in attached))
    log("start -> first sample (s): %s" % " ".join("%.2f" % x for x in sampled))
    row("watch policy: a matching process's start to its session attached, median / max of %d" % NT,
        "%.2f / %.2f s" % (statistics.median(attached), max(attached)), "",
        "/proc scanned every 1 s; attached once two scans see it")
    row("watch policy: a matching process's start to its first sample, median / max of %d" % NT,
        "%.2f / %.2f s" % (statistics.median(sampled), max(sampled)), "", "first report after the attach")


def watching(d, targets):
    c0, w0 = bp.cpu_seconds(d.pid), time.monotonic()
    rss = [bp.rss_kib(d.pid)]
    for mark in (WINDOW // 2, WINDOW):
        time.sleep(max(0, w0 + mark - time.monotonic()))
        rss.append(bp.rss_kib(d.pid))
    cpu = (bp.cpu_seconds(d.pid) - c0) / (time.monotonic() - w0) * 100
    live = samples(d.port)
    watched = sum(1 for t in targets if t.pid in live)
    log("%d s watching %d: CPU %.2f%%, RSS %s KiB, %d sessions" % (WINDOW, NT, cpu, rss, watched))
    row("watch policy, %d processes watched for %d s: memprofd CPU (100%% = one core)" % (NT, WINDOW), "%.2f%%" % cpu,
        "", "goal < 2% of one core")
    row("watch policy, %d processes: memprofd RSS at 0 / %d / %d s" % (NT, WINDOW // 2, WINDOW),
        " / ".join("%.1f" % (k / 1024) for k in rss) + " MiB", "", "%d of %d still attached; goal: flat" % (watched, NT))


def main():
    log("%d targets, %d rounds, %d s window; load average %s" % (NT, ROUNDS, WINDOW, open("/proc/loadavg").read().split()[:3]))
    d = bp.Daemon(BUILD, http=True, serve_args=["--watch", "command=" + MARK])
    targets = []
    try:
        throughput(d)
        first_samples(d, targets)
        watching(d, targets)
        bad = [(t.pid, t.troubled()) for t in targets if t.troubled() or t.proc.poll() is not None]
        if bad:
            raise RuntimeError("targets disturbed: %s" % bad)
    finally:
        for t in targets:
            t.kill()
        d.close()


main()
