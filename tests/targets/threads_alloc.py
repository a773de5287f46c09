"""Eight threads allocating and freeing without pause; prints 'ready PID', then 'tick N SUM' each second,
where SUM checks that every thread's work came out right (a target harmed by an attach would show it)."""
import os
import sys
import threading
import time

counts = [0] * 8


def work(i):
    while True:
        keep = [bytes(64 + (j % 512)) for j in range(200)]
        d = {j: [j] * 3 for j in range(50)}
        assert sum(len(b) for b in keep) > 0 and len(d) == 50
        counts[i] += 1


def main():
    for i in range(8):
        threading.Thread(target=work, args=(i,), daemon=True).start()
    print("ready %d" % os.getpid(), flush=True)
    n = 0
    while True:
        for _ in range(20):  # short sleeps: the main thread reaches a safe point often (PEP 768 attach)
            time.sleep(0.05)
        n += 1
        print("tick %d %d" % (n, sum(1 for c in counts if c > 0)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
