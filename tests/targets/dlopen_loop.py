"""Loads and unloads a library in a loop (argv[1], via ctypes/dlopen) on a thread while the agent
rescans the loaded objects: prints 'ready PID', then 'loops N' every 0.5 s until stdin closes."""
import ctypes
import os
import sys
import threading
import time

import _ctypes

count = 0


def loop(path):
    global count
    while True:
        h = ctypes.CDLL(path)
        h.lf_alloc(16)
        _ctypes.dlclose(h._handle)
        count += 1


threading.Thread(target=loop, args=(sys.argv[1],), daemon=True).start()
print("ready %d" % os.getpid(), flush=True)
while True:
    time.sleep(0.5)
    print("loops %d" % count, flush=True)
