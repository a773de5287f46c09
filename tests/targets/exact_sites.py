"""Exact mode's site cache: one allocating instruction reached with many sizes, from two domains (pymalloc's
small blocks and, above 512 bytes, PyMem_RawMalloc), by callers on different lines; a realloc'd buffer; blocks
freed by another thread; code objects freed and replaced at (perhaps) the same address by code of another file.

Usage: python exact_sites.py
Prints 'ready PID', waits for a line on stdin (attach then), runs, prints 'truth FILE LINE LIVE ALLOCS' for each
checked line (ALLOCS -1: not checked) and 'built', then waits for another line before exiting.
"""
import os
import sys
import threading

print("ready %d" % os.getpid(), flush=True)
sys.stdin.readline()

ZERO = b"\0"


def make(size):
    return ZERO * size  # LINE_MAKE: one instruction, one cache entry, every size


def grow(buf, n):
    for _ in range(n):
        buf += b"x" * 64  # LINE_GROW: the buffer realloc'd here, in place or moved
    return buf


def drop_half(blocks):
    del blocks[::2]  # frees from another thread (holding the GIL)


def build():
    small = [make(40 + i % 20) for i in range(5000)]  # pymalloc's blocks
    large = [make(3000 + i % 13) for i in range(2000)]  # above 512 bytes: the RAW domain
    more = [make(7000) for _ in range(1500)]  # the same site, another size, another line
    g = grow(bytearray(), 3000)
    t = threading.Thread(target=drop_half, args=(large,))
    t.start()
    t.join()
    gen, names = [], []
    for k in range(200):
        # each code object dies after its run; the next may take its address (its file name object is kept
        # alive, so a cache entry of the old code cannot match the new by accident)
        names.append("gen%d.py" % k)
        ns = {"Z": ZERO, "x": None}
        exec(compile("x = Z * %d" % (1000 + k), names[-1], "exec"), ns)
        gen.append(ns["x"])
    return small, large, more, g, gen, names


kept = build()
small, large, more, g, gen, _ = kept
lines = {}
for n, text in enumerate(open(__file__).read().splitlines(), 1):
    if "# LINE_" in text and "lines[" not in text:
        lines[text.split("# ")[-1].split(":")[0]] = n
here = os.path.basename(__file__)
made = small + large + more
print("truth %s %d %d %d" % (here, lines["LINE_MAKE"], sum(sys.getsizeof(b) for b in made), 5000 + 2000 + 1500))
print("truth %s %d %d -1" % (here, lines["LINE_GROW"], sys.getsizeof(g) - sys.getsizeof(bytearray())))
for k, b in enumerate(gen):
    print("truth gen%d.py 1 %d 1" % (k, sys.getsizeof(b)))
print("built", flush=True)
sys.stdin.readline()
