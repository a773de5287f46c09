"""gil_ticker.py -- a main thread that mostly holds the GIL in C, beside a thread that wants it every
millisecond. The main thread sums a range (C: no eval-breaker check, so the GIL stays held) for HOLD
seconds, then sleeps 20 ms (the GIL free), back to back, printing 'sum I N VALUE TICKS' after each round;
TICKS counts the wake-ups of a thread sleeping 1 ms in a loop so far. Prints 'ready PID' first."""
import os
import sys
import threading
import time

ticks = [0]


def ticker():
    while True:
        time.sleep(0.001)
        ticks[0] += 1


t0 = time.perf_counter()
sum(range(2000000))
per_s = 2000000 / max(time.perf_counter() - t0, 1e-6)
n = max(1000, int(per_s * (float(sys.argv[1]) if len(sys.argv) > 1 else 0.3)))
threading.Thread(target=ticker, daemon=True).start()
print("ready %d" % os.getpid(), flush=True)
i = 0
while True:
    i += 1
    v = sum(range(n))
    print("sum %d %d %d %d" % (i, n, v, ticks[0]), flush=True)
    time.sleep(0.02)
