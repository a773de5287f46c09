"""Allocation-heavy batch job with a checksum that profiling must not change: the overhead benchmark."""
# Usage: python alloc_churn.py [ITERATIONS]  (default 200000)
# Prints 'elapsed SECONDS' (of churn alone) and 'checksum N kept M'.
import json
import sys
import time


class Record:
    def __init__(self, i):
        self.i = i
        self.name = "rec-%d" % i
        self.tags = [str(i % 7), str(i % 11)]


kept = []


def churn(n):
    total = 0
    for i in range(n):
        d = {"id": i, "name": "item%d" % i, "vals": list(range(i % 50))}
        total += len(json.loads(json.dumps(d))["vals"])
        if i % 100 == 0:
            kept.append(Record(i))
    return total


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
    started = time.perf_counter()
    total = churn(n)
    print("elapsed %.3f" % (time.perf_counter() - started))
    print("checksum %d kept %d" % (total, len(kept)))


if __name__ == "__main__":
    main()
