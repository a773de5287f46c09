"""bench_py314.py -- CPython 3.14/3.15 (Debian sid's, in the chroot tests/conftest.py
sets up), exec'd by bench.py: attach on 3.14 by ptrace and by remote-exec (end to
end, how long the target was stopped, how long its main thread ran the loader:
median / max of BENCH_ATTACH_RUNS; the longest gap a ticking Python thread saw is
bench_attach_gap.py's, per interpreter), and sampling/exact overhead on alloc_churn.py on 3.14 and
3.15 (fastest of BENCH_PY314_RUNS interleaved rounds, as for 3.11).
Globals from bench.py: row, BUILD, WORKLOADS, PY, ENV.
"""
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(BUILD)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import conftest  # noqa: E402  (finds the sid interpreters: wrappers that enter their chroot in a mount namespace)

MEMPROFD = os.path.join(BUILD, "memprofd")
N = int(os.environ.get("BENCH_ATTACH_RUNS", "20"))
RUNS = int(os.environ.get("BENCH_PY314_RUNS", "5"))
ITER = int(os.environ.get("BENCH_ALLOC_ITER", "200000"))


def med_max(v, fmt="%.2f"):
    return (fmt + " / " + fmt) % (statistics.median(v), max(v))


def attach_rows(exe, version):
    p = subprocess.Popen([exe, "-u", os.path.join(ROOT, "tests", "targets", "gap_probe.py")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    res = {m: {"wall": [], "stop": [], "loader": []} for m in ("ptrace", "remote-exec")}
    import time

    try:
        p.stdout.readline()
        time.sleep(1)
        for _ in range(N):
            for method in ("ptrace", "remote-exec"):
                t = time.perf_counter()
                r = subprocess.run([MEMPROFD, "attach", "--pid", str(p.pid), "--method", method],
                                   capture_output=True, text=True, env=ENV)
                res[method]["wall"].append((time.perf_counter() - t) * 1e3)
                m = re.search(r"target stopped ([\d.]+) ms", r.stdout)
                if not m:
                    sys.exit("bench_py314: attach failed: %s" % (r.stdout + r.stderr))
                res[method]["stop"].append(float(m.group(1)))
                m = re.search(r"loader for ([\d.]+) ms", r.stdout)
                res[method]["loader"].append(float(m.group(1)) if m else 0.0)
                subprocess.run([MEMPROFD, "detach", "--pid", str(p.pid)], capture_output=True, env=ENV, check=True)
    finally:
        p.kill()
        p.wait()
    for method, v in res.items():
        print("attach %s %s: %s" % (version, method, {k: " ".join("%.2f" % x for x in xs) for k, xs in v.items()}),
              file=sys.stderr)
    pt, rx = res["ptrace"], res["remote-exec"]
    what = "Python %s attach (median / max of %d)" % (version, N)
    row(what + ": end to end, remote-exec vs ptrace", med_max(rx["wall"], "%.0f") + " ms",
        med_max(pt["wall"], "%.0f") + " ms", "memprofd attach --method ptrace")
    row(what + ": target threads stopped", med_max(rx["stop"]) + " ms", med_max(pt["stop"]) + " ms",
        "ptrace: the hijacked thread; remote-exec: none")
    row(what + ": main thread running the loader (remote-exec)", med_max(rx["loader"]) + " ms", "", "")


def churn(exe, attach_args=None):
    p = subprocess.Popen([exe, "-u", os.path.join(ROOT, "tests", "targets", "churn_wait.py"),
                          os.path.join(WORKLOADS, "alloc_churn.py"), str(ITER), "--exit"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        p.stdout.readline()
        if attach_args is not None:
            subprocess.run([MEMPROFD, "attach", "--pid", str(p.pid)] + attach_args, capture_output=True, text=True,
                           env=ENV, check=True)
        out, _ = p.communicate("go\n", timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if attach_args is not None:
        subprocess.run([MEMPROFD, "detach", "--pid", str(p.pid)], capture_output=True, env=ENV)
    return float(re.search(r"^elapsed ([\d.]+)", out, re.M).group(1))


def alloc_rows(exe, version):
    res = {k: [] for k in ("base", "sampling", "exact")}
    for _ in range(RUNS):
        res["base"].append(churn(exe))
        res["sampling"].append(churn(exe, []))
        res["exact"].append(churn(exe, ["--exact"]))
    for k, v in res.items():
        print("alloc_churn %s %s: %s" % (version, k, " ".join("%.3f" % x for x in v)), file=sys.stderr)
    best = {k: min(v) for k, v in res.items()}
    what = "Python %s alloc_churn.py %d, elapsed, fastest of %d (unprofiled %.2f s)" % (version, ITER, RUNS,
                                                                                       best["base"])
    row(what + ": memprof sampling (512 KiB) / exact", "%.2fx / %.2fx" % (best["sampling"] / best["base"],
                                                                          best["exact"] / best["base"]), "", "")


def main():
    sid = {k: v for k, v in conftest._sid_interpreters().items() if k in ("sid-3.14", "sid-3.15")}
    if not sid:
        print("bench_py314: skipped: %s" % (conftest.SID_NOTE or ["no sid interpreters"])[0], file=sys.stderr)
        return
    if "sid-3.14" in sid:
        attach_rows(*sid["sid-3.14"])
    for pyid in sorted(sid):
        alloc_rows(*sid[pyid])


main()
