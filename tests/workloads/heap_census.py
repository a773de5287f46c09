"""A large heap of one class that then grows by 1000 objects a second: a target for types, growth and chain."""
# Usage: python heap_census.py [OBJECTS]  (default 1000000)
# Prints 'ready PID' once the heap is built. The list of objects is a local of
# main(), so no module refers to it.
import os
import sys
import time


class MyBigFatObject:
    def __init__(self, i):
        self.i = i
        self.children = []


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
    objs = [MyBigFatObject(i) for i in range(n)]
    # Each burst of 1000 whole, as a census sees it: the main thread gives up the GIL only when it sleeps
    # (no forced switch in mid-burst), so a census (or any of its slices) never sees part of a burst.
    sys.setswitchinterval(1000.0)
    print("ready %d" % os.getpid(), flush=True)
    while True:
        time.sleep(1)
        objs.extend(MyBigFatObject(i) for i in range(1000))


if __name__ == "__main__":
    main()
