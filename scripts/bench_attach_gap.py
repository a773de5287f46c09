"""bench_attach_gap.py -- how long an attach holds back the target's other Python threads: the longest gap a
1 ms ticker thread of tests/targets/gap_probe.py sees during `memprofd attach` (median / p90 / max of
BENCH_ATTACH_RUNS attaches, each followed by a detach), per interpreter: ptrace on Debian's python3.11 and
pyenv's 3.8-3.13, remote-exec (and ptrace) on sid's 3.14/3.15; beside it, interleaved, the same window while
`memprofd --version` runs (a process started and ended, nothing done to the target: what starting the client alone
costs the target on this machine) and with nothing run at all.
Exec'd by bench.py (globals row, BUILD, ENV); also runs alone: python3 scripts/bench_attach_gap.py [ID...]
(BENCH_ATTACH_RUNS, default 20), printing the rows. On a shared machine, BENCH_GAP_WRAP="nice -n -19" or "chrt -f 10" (root) runs the
target and `memprofd attach` (and so a daemon it starts) under that command, so that other jobs' CPU use
stays out of the gaps.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":
    BUILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build")
    ENV = dict(os.environ, MEMPROF_SOCKET=os.path.join(tempfile.mkdtemp(prefix="memprof-gap-"), "memprofd.sock"))

    def row(*cols):
        print("| %s |" % " | ".join(cols))

ROOT = os.path.dirname(BUILD)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import conftest  # noqa: E402  (finds the interpreters; the sid ones run in their chroot through wrappers)

MEMPROFD = os.path.join(BUILD, "memprofd")
N = int(os.environ.get("BENCH_ATTACH_RUNS", "20"))
NICE = os.environ.get("BENCH_GAP_WRAP", "").split()
PTRACE_IDS = ["debian-3.11"] + ["pyenv-3.%d" % m for m in range(8, 14)]
SID_IDS = ["sid-3.14", "sid-3.15"]


def p90(v):
    s = sorted(v)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def stats(v):
    return "%.2f / %.2f / %.2f ms" % (statistics.median(v), p90(v), max(v))


def gaps(exe, methods):
    """{method: [gap ms of each attach]}, 'exec': the window of a `memprofd --version`, 'none': nothing run."""
    p = subprocess.Popen(NICE + [exe, "-u", os.path.join(ROOT, "tests", "targets", "gap_probe.py")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    res = {m: [] for m in methods + ["exec", "none"]}
    walls = []

    def ask(cmd, answer):
        p.stdin.write(cmd + "\n")
        while True:
            line = p.stdout.readline()
            if not line:
                sys.exit("bench_attach_gap: gap_probe.py exited")
            if line.startswith(answer):
                return line

    try:
        p.stdout.readline()
        time.sleep(1)
        for _ in range(N):
            for method in methods + ["exec", "none"]:
                ask("reset", "reset")
                if method == "none":  # the ticker's own jitter over an attach's duration
                    time.sleep(statistics.median(walls) / 1e3)
                elif method == "exec":  # a process of ours started and ended, the target left alone
                    subprocess.run(NICE + [MEMPROFD, "--version"], stdout=subprocess.DEVNULL, env=ENV)
                else:
                    t = time.perf_counter()
                    r = subprocess.run(NICE + [MEMPROFD, "attach", "--pid", str(p.pid), "--method", method],
                                       capture_output=True, text=True, env=ENV)
                    walls.append((time.perf_counter() - t) * 1e3)
                    if r.returncode:
                        sys.exit("bench_attach_gap: attach failed: %s" % (r.stdout + r.stderr))
                res[method].append(float(re.search(r"gap ([\d.]+)", ask("report", "gap")).group(1)))
                if method in methods:
                    subprocess.run([MEMPROFD, "detach", "--pid", str(p.pid)], capture_output=True, env=ENV,
                                   check=True)
                time.sleep(0.05)  # what the detach (outside every window) holds up settles before the next reset
    finally:
        p.kill()
        p.wait()
    return res


def main(ids):
    found = dict(conftest.INTERPRETERS)
    if any(i.startswith("sid-") for i in ids):
        found.update(conftest._sid_interpreters())
    for pyid in ids:
        if pyid not in found:
            print("bench_attach_gap: %s not found, skipped" % pyid, file=sys.stderr)
            continue
        exe, ver = found[pyid]
        methods = ["remote-exec", "ptrace"] if pyid.startswith("sid-") else ["ptrace"]
        res = gaps(exe, methods)
        for m, v in res.items():
            print("attach gap %s %s: %s" % (pyid, m, " ".join("%.2f" % x for x in v)), file=sys.stderr)
        for m in methods:
            row("%s (%s) attach by %s: longest gap of a 1 ms ticker thread, median / p90 / max of %d" %
                (pyid, ver, m, N), stats(res[m]), stats(res["exec"]),
                "`memprofd --version` run instead (nothing run: %s)" % stats(res["none"]))


if __name__ == "__main__":
    try:
        main(sys.argv[1:] or PTRACE_IDS + SID_IDS)
    finally:
        subprocess.run([MEMPROFD, "stop"], capture_output=True, env=ENV)  # the daemon the first attach started
else:
    main(PTRACE_IDS + SID_IDS)
