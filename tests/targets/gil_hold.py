"""Holds the GIL in C (a sum over a range: no eval-breaker check) for HOLD seconds at a time, back to back,
printing 'ready PID' then 'sum I N VALUE' and 'took I SECONDS s' after each round so a test can check every
result (and how long the GIL was really held). A line
'hold S' on stdin changes HOLD from the next round; with HOLD 0 it idles (GIL free) until such a line."""
import os
import select
import sys
import time



def calibrate():
    """Sums per second now: the fastest of 5 (a round measured while the machine was busy would make every
    HOLD shorter than asked, and a test expecting the GIL held past a deadline would see it free too soon).
    Measured again when a 'hold' line comes, so that a hold is timed at the machine's speed of that moment."""
    best = 0
    for _ in range(5):
        t0 = time.perf_counter()
        sum(range(1000000))
        best = max(best, 1000000 / max(time.perf_counter() - t0, 1e-6))
    return best


per_s = calibrate()
hold = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
print("ready %d" % os.getpid(), flush=True)
i = 0
while True:
    if select.select([sys.stdin], [], [], 0 if hold else 0.2)[0]:
        line = sys.stdin.readline()
        if not line:
            break
        hold = float(line.split()[1])
        if hold:
            per_s = calibrate()
        print("holding %s" % hold, flush=True)
    if not hold:
        continue
    i += 1
    n = max(1000, int(per_s * hold))
    # one write per round: each write lets a waiting thread have the GIL
    t0 = time.perf_counter()
    v = sum(range(n))
    sys.stdout.write("sum %d %d %d\ntook %d %.2f s\n" % (i, n, v, i, time.perf_counter() - t0))
    sys.stdout.flush()
