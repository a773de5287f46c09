"""gap_probe.py -- how long a Python thread was held up: a ticker thread wakes
every millisecond and keeps the longest gap between wake-ups; the main thread
runs Python (safe points every millisecond) and answers stdin: 'reset' starts a
window, 'report' prints 'gap MS' (the longest gap since reset)."""
import os
import sys
import threading
import time

state = {"max": 0.0}


def ticker():
    last = time.perf_counter()
    while True:
        time.sleep(0.001)
        now = time.perf_counter()
        if now - last > state["max"]:
            state["max"] = now - last
        last = now


def reader():
    for line in sys.stdin:
        if line.startswith("reset"):
            state["max"] = 0.0
            print("reset", flush=True)
        elif line.startswith("report"):
            print("gap %.3f" % (state["max"] * 1e3), flush=True)


threading.Thread(target=ticker, daemon=True).start()
threading.Thread(target=reader, daemon=True).start()
print("ready %d" % os.getpid(), flush=True)
x = 0
while True:
    for i in range(200):
        x += i
    time.sleep(0.001)
