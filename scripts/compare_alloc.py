"""compare_alloc.py -- allocation tracking overhead on alloc_churn.py, builds compared side by side.

Usage: python3 scripts/compare_alloc.py ROUNDS ITERATIONS LABEL=BUILD_DIR [LABEL=BUILD_DIR ...]
Each run: a fresh Debian python3.11 (BENCH_PYTHON) running tests/workloads/alloc_churn.py ITERATIONS under
tests/targets/churn_wait.py, attached before the churn starts by a private memprofd of that build with
BENCH_ATTACH_ARGS (default --exact). A round is one unprofiled run, then one run per build, so a busy spell of
the machine hits them alike. Prints the fastest run of each as a ratio to the fastest unprofiled one.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.environ.get("BENCH_PYTHON", "/usr/bin/python3.11")
ARGS = os.environ.get("BENCH_ATTACH_ARGS", "--exact").split()


def churn(iterations, build=None, env=None):
    """The churn's own elapsed seconds; build None: unprofiled."""
    p = subprocess.Popen([PYTHON, "-u", os.path.join(ROOT, "tests", "targets", "churn_wait.py"),
                          os.path.join(ROOT, "tests", "workloads", "alloc_churn.py"), str(iterations), "--exit"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        p.stdout.readline()  # ready PID
        if build:
            r = subprocess.run([os.path.join(build, "memprofd"), "attach", "--pid", str(p.pid)] + ARGS,
                               capture_output=True, text=True, env=env)
            if r.returncode:
                sys.exit("compare_alloc: attach failed: %s" % (r.stdout + r.stderr))
        out, _ = p.communicate("go\n", timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    m = re.search(r"^elapsed ([\d.]+)", out, re.M)
    if not m:
        sys.exit("compare_alloc: no 'elapsed' in: %s" % out[-500:])
    return float(m.group(1))


def main():
    if len(sys.argv) < 4 or not all("=" in a for a in sys.argv[3:]):
        sys.exit(__doc__.split("\n\n")[1])
    rounds, iterations = int(sys.argv[1]), int(sys.argv[2])
    builds = [a.split("=", 1) for a in sys.argv[3:]]
    tmps = {label: tempfile.mkdtemp(prefix="memprof-bench-alloc-") for label, _ in builds}
    envs = {label: dict(os.environ, MEMPROF_SOCKET=os.path.join(tmps[label], "memprofd.sock")) for label, _ in builds}
    runs = {label: [] for label in ["unprofiled"] + [label for label, _ in builds]}
    try:
        for r in range(rounds):
            runs["unprofiled"].append(churn(iterations))
            for label, build in builds:
                runs[label].append(churn(iterations, build, envs[label]))
            print("round %d: %s" % (r + 1, " ".join("%s %.3f" % (k, v[-1]) for k, v in runs.items())), flush=True)
    finally:
        for label, build in builds:
            subprocess.run([os.path.join(build, "memprofd"), "stop"], capture_output=True, env=envs[label])
            shutil.rmtree(tmps[label], ignore_errors=True)
    base = min(runs["unprofiled"])
    print("unprofiled: fastest of %d %.3f s" % (rounds, base))
    for label, _ in builds:
        print("%s: %.3fx (fastest %.3f s)" % (label, min(runs[label]) / base, min(runs[label])))


if __name__ == "__main__":
    main()
