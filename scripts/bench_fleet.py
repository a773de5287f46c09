"""bench_fleet.py -- one daemon serving 32 targets (issue 10) and its HTTP endpoint under them (issue 14), exec'd by bench.py.

One `memprofd serve --http` and BENCH_FLEET_TARGETS (default 32) service.py 1 targets at
nice 19, round-robin over the interpreters tests/pythons.py finds (pyenv 3.8-3.13, Debian
3.11), each attached with --interval 250. Then, in turn, with nothing else asking:
 1. a window of 120 s (BENCH_QUICK=1: 30 s): memprofd's CPU share (utime+stime from
    /proc/PID/stat over the window, 100% = one core), its RSS at the middle and the end,
    and whether every session kept up: history points gained per session per second (the
    daemon keeps one a second) and agent reports received per second (expected 4 each);
 2. /metrics and /debug/pprof/heap?pid=N latency, median / p99 over many requests, each a
    new connection from Python's http.client;
 3. Debian's prometheus scraping /metrics every second for 60 s (quick: 20 s) as
    tests/test_http.py runs it: memprofd's CPU share over that minute, and Prometheus' own
    count of scrapes and their mean duration.
Globals from bench.py: row, BUILD, WORKLOADS.
"""
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import benchproc as bp

sys.path.insert(0, os.path.join(os.path.dirname(BUILD), "tests"))
from pythons import INTERPRETERS, SUPPORTED_IDS  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
NT = int(os.environ.get("BENCH_FLEET_TARGETS", "32"))
WINDOW = 30 if QUICK else 120
PROM_WINDOW = 20 if QUICK else 60
METRICS_N, PPROF_N = (100, 64) if QUICK else (400, 320)


def log(msg):
    print("bench_fleet: " + msg, file=sys.stderr, flush=True)


def get(port, path):
    """(ms, status, body) of one GET on a new connection."""
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
    finally:
        c.close()
    return (time.perf_counter() - t) * 1000, r.status, body


def metric(port, name):
    _, _, body = get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise RuntimeError("no %s in /metrics" % name)


def history(d, pid):
    """(points in the session's history, seconds since its newest point)"""
    r = d.run("memprof", "export", "--pid", pid)
    if r.returncode:
        raise RuntimeError("export --pid %d: %s" % (pid, r.stderr))
    h = json.loads(r.stdout)["history"]
    return len(h), time.time() - h[-1]["t"]


def keep_up(d, targets, label):
    t_h0 = time.monotonic()
    h0 = {t.pid: history(d, t.pid)[0] for t in targets}
    rep0 = metric(d.port, "memprof_agent_reports_total")
    c0, w0 = bp.cpu_seconds(d.pid), time.monotonic()
    rss = {}
    for mark in (WINDOW // 2, WINDOW):
        time.sleep(max(0, w0 + mark - time.monotonic()))
        rss[mark] = bp.rss_kib(d.pid)
    cpu = (bp.cpu_seconds(d.pid) - c0) / (time.monotonic() - w0) * 100
    rep1 = metric(d.port, "memprof_agent_reports_total")
    h1 = {t.pid: history(d, t.pid) for t in targets}
    span = time.monotonic() - t_h0
    rates = sorted((h1[p][0] - h0[p]) / span for p in h0)
    age = max(a for _, a in h1.values())
    reports = (rep1 - rep0) / span
    r = d.run("memprof", "status", "--json")
    states = [s["state"] for s in json.loads(r.stdout) if s["pid"] in h0]
    attached = states.count("attached")
    log("%d s window: CPU %.2f%%, RSS %s KiB, history points/s per session %s, reports/s %.1f, newest point at most %.2f s old, %d/%d attached"
        % (WINDOW, cpu, rss, " ".join("%.2f" % x for x in rates), reports, age, attached, len(targets)))
    row("%s, %d s: memprofd CPU (100%% = one core)" % (label, WINDOW), "%.2f%%" % cpu, "", "goal < 10% of one core")
    row("%s: memprofd RSS at %d s / %d s" % (label, WINDOW // 2, WINDOW),
        "%.1f / %.1f MiB" % (rss[WINDOW // 2] / 1024, rss[WINDOW] / 1024), "", "goal: flat after the first minute")
    row("%s: history points per session per s, min / median (one a second kept); agent reports per s (nominal %d)"
        % (label, 4 * len(targets)), "%.2f / %.2f; %.1f" % (rates[0], statistics.median(rates), reports), "",
        "%d of %d sessions attached at the end" % (attached, len(targets)))
    row("%s: age of the newest history point at the end, max over sessions" % label, "%.2f s" % age,
        "", "a point a second from 250 ms reports: up to ~1.3 s is current")
    return cpu


def latency(d, targets, label):
    for path, n in (("/metrics", METRICS_N), ("/debug/pprof/heap?pid=%d", PPROF_N)):
        ms, size = [], 0
        for i in range(n):
            p = path % targets[i % len(targets)].pid if "%d" in path else path
            t, status, body = get(d.port, p)
            if status != 200:
                raise RuntimeError("GET %s: %d %s" % (p, status, body[:200]))
            ms.append(t)
            size = max(size, len(body))
        log("%s: %d requests, median %.2f ms, p99 %.2f ms, max %.2f ms, largest %d bytes"
            % (path, n, statistics.median(ms), bp.percentile(ms, 99), max(ms), size))
        row("%s latency, %s (median / p99 of %d, up to %.0f KiB)" % (path.replace("%d", "N"), label, n, size / 1024),
            "%.1f / %.1f ms" % (statistics.median(ms), bp.percentile(ms, 99)), "", "Python http.client, new connection each")


def prom_query(port, q):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": q}))
    with urllib.request.urlopen(url, timeout=10) as r:
        res = json.load(r)["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def prometheus(d, label, idle_cpu):
    exe = shutil.which("prometheus")
    if not exe:
        log("prometheus is not installed (Debian prometheus): its row says n/a")
        row("memprofd CPU while Prometheus scrapes /metrics every 1 s, %s" % label, "n/a", "", "prometheus not installed")
        return
    port = bp.free_port()
    cfg = os.path.join(d.tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: memprof\n"
                "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % d.port)
    with open(os.path.join(d.tmp, "prometheus.log"), "w") as plog:
        prom = subprocess.Popen([exe, "--config.file", cfg, "--storage.tsdb.path", os.path.join(d.tmp, "tsdb"),
                                 "--web.listen-address", "127.0.0.1:%d" % port], stdout=plog, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:  # scraping: up is 1
            try:
                if prom_query(port, 'up{job="memprof"}') == 1:
                    break
            except OSError:
                pass
            if prom.poll() is not None or time.time() > deadline:
                raise RuntimeError("prometheus did not scrape memprofd: see %s/prometheus.log" % d.tmp)
            time.sleep(0.5)
        c0, w0 = bp.cpu_seconds(d.pid), time.monotonic()
        time.sleep(PROM_WINDOW)
        cpu = (bp.cpu_seconds(d.pid) - c0) / (time.monotonic() - w0) * 100
        rng = "[%ds]" % PROM_WINDOW
        scrapes = prom_query(port, 'count_over_time(up{job="memprof"}%s)' % rng)
        ups = prom_query(port, 'sum_over_time(up{job="memprof"}%s)' % rng)
        dur = prom_query(port, 'avg_over_time(scrape_duration_seconds{job="memprof"}%s)' % rng)
        samples = prom_query(port, 'scrape_samples_scraped{job="memprof"}')
    finally:
        prom.kill()
        prom.wait()
    log("prometheus %d s: memprofd CPU %.2f%% (%.2f%% without it), %s scrapes (%s up), mean scrape %.1f ms, %s samples"
        % (PROM_WINDOW, cpu, idle_cpu, scrapes, ups, (dur or 0) * 1000, samples))
    row("memprofd CPU while Prometheus scrapes /metrics every 1 s for %d s, %s" % (PROM_WINDOW, label),
        "%.2f%% (%.2f%% unscraped)" % (cpu, idle_cpu), "",
        "Prometheus: %d scrapes, %d up, mean %.1f ms, %d samples each"
        % (scrapes or 0, ups or 0, (dur or 0) * 1000, samples or 0))


def main():
    exes = [INTERPRETERS[i][0] for i in SUPPORTED_IDS if i in INTERPRETERS]
    label = "%d targets (%d interpreters), reporting every 250 ms" % (NT, min(NT, len(exes)))
    log("%s; load average %s" % (label, open("/proc/loadavg").read().split()[:3]))
    d = bp.Daemon(BUILD, http=True)
    targets = []
    try:
        for i in range(NT):
            targets.append(bp.Target([exes[i % len(exes)], "-u", os.path.join(WORKLOADS, "service.py"), "1"]))
        for t in targets:
            t.wait_ready()
            d.attach(t.pid, "--interval", "250")
        time.sleep(2)
        idle_cpu = keep_up(d, targets, label)
        latency(d, targets, "%d sessions" % NT)
        prometheus(d, "%d sessions" % NT, idle_cpu)
        bad = [(t.pid, t.troubled()) for t in targets if t.troubled() or t.proc.poll() is not None]
        if bad:
            raise RuntimeError("targets disturbed: %s" % bad)
        log("load average at the end %s" % open("/proc/loadavg").read().split()[:3])
    finally:
        for t in targets:
            t.kill()
        d.close()


main()
