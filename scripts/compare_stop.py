"""compare_stop.py -- how long `memprofd attach` stops the target, builds compared side by side.

Usage: python3 scripts/compare_stop.py ROUNDS PER_ROUND LABEL=BUILD_DIR [LABEL=BUILD_DIR ...]
Each attach: a private memprofd of that build, a fresh Debian python3.11 running
tests/workloads/service.py 4, `memprofd attach`, its "target stopped X ms". The builds
alternate attach by attach, so a busy spell of the machine hits them alike. Prints each
round, then fastest / median / max per build.
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.environ.get("BENCH_PYTHON", "/usr/bin/python3.11")


def one(build):
    tmp = tempfile.mkdtemp(prefix="memprof-bench-stop-")
    sock = os.path.join(tmp, "memprofd.sock")
    env = dict(os.environ, MEMPROF_SOCKET=sock)
    daemon = target = None
    try:
        with open(os.path.join(tmp, "log"), "w") as log:
            daemon = subprocess.Popen([os.path.join(build, "memprofd"), "serve", "--socket", sock, "--agent",
                                       os.path.join(build, "libmemprof_agent.so")],
                                      stdout=subprocess.DEVNULL, stderr=log, env=env)
        target = subprocess.Popen([PYTHON, "-u", os.path.join(ROOT, "tests", "workloads", "service.py"), "4"],
                                  stdout=subprocess.PIPE, text=True)
        target.stdout.readline()
        deadline = time.time() + 10
        while not os.path.exists(sock) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        r = subprocess.run([os.path.join(build, "memprofd"), "attach", "--pid", str(target.pid)],
                           capture_output=True, text=True, env=env, timeout=60)
        m = re.search(r"target stopped ([\d.]+) ms", r.stdout)
        if not m:
            print("%s: attach failed: %s" % (build, (r.stdout + r.stderr).strip()), file=sys.stderr)
            return None
        subprocess.run([os.path.join(build, "memprofd"), "stop"], capture_output=True, env=env, timeout=60)
        return float(m.group(1))
    finally:
        for p in (target, daemon):
            if p and p.poll() is None:
                p.kill()
            if p:
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__.split("\n\n")[1])
    rounds, per = int(sys.argv[1]), int(sys.argv[2])
    builds = [a.split("=", 1) for a in sys.argv[3:]]
    got = {label: [] for label, _ in builds}
    for n in range(rounds):
        for _ in range(per):
            for label, build in builds:
                v = one(os.path.abspath(build))
                if v is not None:
                    got[label].append(v)
        print("round %d: %s" % (n, "; ".join("%s %s" % (l, " ".join("%.2f" % x for x in v[-per:]))
                                             for l, v in got.items())), flush=True)
    for label, v in got.items():
        if v:
            print("%-10s n=%-3d fastest %.2f  median %.2f  max %.2f ms" % (label, len(v), min(v),
                                                                         statistics.median(v), max(v)))


if __name__ == "__main__":
    main()
