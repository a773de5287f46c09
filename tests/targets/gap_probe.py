"""gap_probe.py -- how long a Python thread was held up: a ticker thread wakes
every millisecond and keeps the longest gap between wake-ups; the main thread
runs Python (safe points every millisecond) and answers stdin: 'reset' starts a
window, 'report' prints 'gap MS', the longest gap within the window: a gap that
began before the reset counts from the reset, and one still open at the report
counts up to it, so that no gap is given to the next window."""
import os
import sys
import threading
import time

state = {"max": 0.0, "since": time.perf_counter(), "last": time.perf_counter()}


def ticker():
    while True:
        time.sleep(0.001)
        now = time.perf_counter()
        gap = now - max(state["last"], state["since"])
        if gap > state["max"]:
            state["max"] = gap
        state["last"] = now


def reader():
    for line in sys.stdin:
        if line.startswith("reset"):
            state["since"] = time.perf_counter()
            state["max"] = 0.0
            print("reset", flush=True)
        elif line.startswith("report"):
            open_gap = time.perf_counter() - max(state["last"], state["since"])
            print("gap %.3f" % (max(state["max"], open_gap) * 1e3), flush=True)


threading.Thread(target=ticker, daemon=True).start()
threading.Thread(target=reader, daemon=True).start()
print("ready %d" % os.getpid(), flush=True)
x = 0
while True:
    for i in range(200):
        x += i
    time.sleep(0.001)
