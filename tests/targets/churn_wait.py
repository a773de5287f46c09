"""Runs the alloc_churn.py workload (tests/workloads) after a line on stdin, so that a
profiler can attach first. Usage: python churn_wait.py ALLOC_CHURN_PATH [ITERATIONS]
Prints 'ready PID'; after the first stdin line runs churn and prints its
'elapsed' and 'checksum' lines; then 'done', and exits after another stdin line
(or at once with --exit)."""
import os
import runpy
import sys

path = sys.argv[1]
args = [a for a in sys.argv[2:] if a != "--exit"]
wait_at_end = "--exit" not in sys.argv[2:]
print("ready %d" % os.getpid(), flush=True)
sys.stdin.readline()
sys.argv = [path] + args
runpy.run_path(path, run_name="__main__")
print("done", flush=True)
if wait_at_end:
    sys.stdin.readline()
