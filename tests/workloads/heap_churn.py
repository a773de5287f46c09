"""A heap of N long-lived objects beside a thread that allocates and frees objects all the time, and
a 1 ms ticker thread that measures the target's longest pause: a target for sliced heap walks."""
# Usage: python heap_churn.py N CHURN_PER_S [COLLECT_MS]
# Prints 'ready PID x=0xADDRESS' once the heap is built (x: a list held as in backrefs.py, by y, [x],
# {'a': x} and the module's globals, for backrefs and chain). Stable: N objects (each a tracked instance) made before
# 'ready' and never freed. Churn: at most KEEP alive at any time, CHURN_PER_S made (and as many
# freed) a second. COLLECT_MS > 0: the churn thread also calls gc.collect() that often.
# SIGUSR1: prints 'gap MS' (the ticker's longest gap since the last SIGUSR1) and starts anew.
# SIGUSR2: stops the churn for good and prints 'quiet' once it has stopped.
import collections
import gc
import os
import signal
import sys
import threading
import time

KEEP = 1000


class Stable:
    __slots__ = ("i", "peer")

    def __init__(self, i):
        self.i = i
        self.peer = None


class Churn:
    __slots__ = ("items",)

    def __init__(self):
        self.items = [1, 2]


x = [1]
y = [x, [x], {"a": x}]
gap = [0.0]
churn_on = threading.Event()
churn_on.set()
stopped = threading.Event()


def ticker():
    last = time.monotonic()
    while True:
        time.sleep(0.001)
        now = time.monotonic()
        gap[0] = max(gap[0], now - last)
        last = now


def churn(rate, collect_ms):
    live = collections.deque()
    batch = max(1, rate // 1000)
    next_collect = time.monotonic()
    while churn_on.is_set():
        t = time.monotonic()
        for _ in range(batch):
            live.append(Churn())
            if len(live) > KEEP:
                live.popleft()
        if collect_ms and t >= next_collect:
            gc.collect()
            next_collect = t + collect_ms / 1000.0
        time.sleep(max(0.0, 0.001 - (time.monotonic() - t)))
    live.clear()
    stopped.set()


def on_usr1(signum, frame):
    print("gap %.3f" % (gap[0] * 1e3), flush=True)
    gap[0] = 0.0


def on_usr2(signum, frame):
    churn_on.clear()


def main():
    n, rate = int(sys.argv[1]), int(sys.argv[2])
    collect_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 0
    objs = [Stable(i) for i in range(n)]
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)
    threading.Thread(target=ticker, daemon=True).start()
    if rate:
        threading.Thread(target=churn, args=(rate, collect_ms), daemon=True).start()
    else:
        stopped.set()
    print("ready %d x=%s" % (os.getpid(), hex(id(x))), flush=True)
    announced = False
    while True:
        time.sleep(0.05)
        if not announced and stopped.is_set() and not churn_on.is_set():
            print("quiet", flush=True)
            announced = True
    del objs


if __name__ == "__main__":
    main()
