"""A long-running service to attach to: worker threads serving JSON requests, one steady leak (LEAK_LINE)."""
# Usage: python service.py [THREADS] [SECONDS]  (SECONDS 0 or absent: until killed)
# Prints 'ready PID', then 'beat N served=M sessions=K' each second. Every
# request is checked after its round trip (a disturbed process prints 'ERROR'); the leak never levels off.
import hashlib
import json
import os
import sys
import threading
import time

_sessions = {}
_lock = threading.Lock()
served = 0


class Session:
    def __init__(self, key):
        self.key = key
        self.payload = bytearray(2048)
        self.history = [key] * 16


def handle(i):
    request = {"user": i % 997, "items": [{"sku": j, "qty": j % 3} for j in range(i % 40)]}
    body = json.dumps(request).encode()
    digest = hashlib.sha256(body).hexdigest()
    if len(json.loads(body)["items"]) != i % 40:
        print("ERROR request %d came back wrong" % i, flush=True)
    if i % 50 == 0:
        with _lock:
            _sessions[len(_sessions)] = Session(digest)  # LEAK_LINE
    return len(digest)


def worker(tid, stop):
    global served
    i = tid
    while not stop.is_set():
        handle(i)
        i += 7
        with _lock:
            served += 1


def main():
    nthreads = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0
    stop = threading.Event()
    for tid in range(nthreads):
        threading.Thread(target=worker, args=(tid, stop), daemon=True).start()
    print("ready %d" % os.getpid(), flush=True)
    started, beat = time.time(), 0
    while not seconds or time.time() - started < seconds:
        time.sleep(1)
        beat += 1
        print("beat %d served=%d sessions=%d" % (beat, served, len(_sessions)), flush=True)
    stop.set()


if __name__ == "__main__":
    main()
