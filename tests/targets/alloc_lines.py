"""Accuracy target: each LINE_* line keeps a known number of bytes alive.

Usage: python alloc_lines.py [tracemalloc]
Prints 'ready PID', waits for a line on stdin (attach then), optionally starts
tracemalloc(1) as the oracle, builds, prints one 'truth LINE BYTES' per line
(sum of sys.getsizeof of what the line keeps, its list included) and, with
tracemalloc, 'tm LINE BYTES' per line of this file; then 'built' and waits
for another line before exiting.
"""
import os
import sys

print("ready %d" % os.getpid(), flush=True)
sys.stdin.readline()
if len(sys.argv) > 1 and sys.argv[1] == "tracemalloc":
    import tracemalloc
    tracemalloc.start(1)
else:
    tracemalloc = None


def build():
    a = [bytes(8000) for _ in range(2000)]  # LINE_A
    b = [bytearray(3000) for _ in range(3000)]  # LINE_B
    c = [str(i) * 1000 for i in range(2500)]  # LINE_C
    d = [list(range(250)) for _ in range(4000)]  # LINE_D
    e = [bytes(100 + i % 300) for i in range(50000)]  # LINE_E: small blocks, pymalloc's own
    for i in range(20000):
        x = bytes(5000 + i % 100)  # LINE_CHURN
    for i in range(100000):
        x = bytes(100 + i % 300)  # LINE_CHURN_SMALL: freed at once
    return a, b, c, d, e


def truth(kept):
    out = []
    for obj in kept:
        out.append(sys.getsizeof(obj) + sum(sys.getsizeof(o) for o in obj))
    return out


kept = build()
lines = {}
for n, text in enumerate(open(__file__).read().splitlines(), 1):
    if "# LINE_" in text and "lines[" not in text:
        lines[text.split("# ")[-1].split(":")[0]] = n
for name, size in zip(["LINE_A", "LINE_B", "LINE_C", "LINE_D", "LINE_E"], truth(kept)):
    print("truth %d %d" % (lines[name], size))
if tracemalloc:
    snap = tracemalloc.take_snapshot()
    for stat in snap.statistics("lineno"):
        fr = stat.traceback[0]
        if fr.filename == __file__:
            print("tm %d %d %d" % (fr.lineno, stat.size, stat.count))
    tracemalloc.stop()
print("built", flush=True)
sys.stdin.readline()
