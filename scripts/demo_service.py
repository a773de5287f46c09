"""A small service for `make demo` when ../shared is absent: threads, churn, and a slow leak."""
import json
import os
import threading
import time

cache = {}


class Session:
    def __init__(self, key):
        self.key = key
        self.payload = bytearray(2048)


def worker(tid):
    i = tid
    while True:
        body = json.dumps({"user": i % 997, "items": list(range(i % 40))})
        json.loads(body)
        if i % 50 == 0:
            cache[i] = Session(i)  # the leak
        i += 7
        time.sleep(0.0005)


for t in range(4):
    threading.Thread(target=worker, args=(t,), daemon=True).start()
print("ready %d" % os.getpid(), flush=True)
beat = 0
while True:
    time.sleep(1)
    beat += 1
    print("beat %d sessions=%d" % (beat, len(cache)), flush=True)
