"""numpy-heavy workload for `make bench` (memprof run --native): array
arithmetic of mixed sizes, small matrix products, now and then a 800 KB
array kept. Prints 'elapsed S' (the work only, not the import) and a checksum.

Usage: python numpy_work.py [N]   (default 8000 iterations)
"""
import sys
import time

import numpy as np

kept = []


def work(n):
    total = 0.0
    for i in range(n):
        a = np.arange(1000 + i % 500, dtype=np.float64)
        b = np.sqrt(a) * 2.0 + a[::-1]
        c = np.concatenate([a, b])
        total += float(c.sum())
        m = np.ones((64, 64)) @ np.ones((64, 64))
        total += float(m[0, 0])
        if i % 1000 == 0:
            kept.append(np.zeros(100000))
    return total


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    started = time.perf_counter()
    total = work(n)
    print("elapsed %.3f" % (time.perf_counter() - started))
    print("checksum %.1f kept %d" % (total, len(kept)))


if __name__ == "__main__":
    main()
