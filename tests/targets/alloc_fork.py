"""Fork target: after a line on stdin, forks children with os.fork and a
multiprocessing Pool that allocate and exit; prints 'fork ok N' when all
children exited 0, then waits for another line."""
import multiprocessing
import os
import sys


def work(n):
    data = [bytes(1000 + i) for i in range(n)]
    return sum(len(d) for d in data)


print("ready %d" % os.getpid(), flush=True)
sys.stdin.readline()
codes = []
for k in range(5):
    pid = os.fork()
    if pid == 0:
        total = work(2000)
        os._exit(0 if total == sum(1000 + i for i in range(2000)) else 3)
    codes.append(os.waitpid(pid, 0)[1])
ctx = multiprocessing.get_context("fork")
with ctx.Pool(2) as pool:
    results = pool.map(work, [500] * 8)
ok = all(c == 0 for c in codes) and results == [work(500)] * 8
print("fork %s %d" % ("ok" if ok else "FAILED codes=%r" % codes, len(codes) + len(results)), flush=True)
keep = work(3000)
print("parent alive %d" % keep, flush=True)
sys.stdin.readline()
