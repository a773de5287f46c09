"""Exact mode's site cache: one allocating instruction reached with many sizes, from two domains (pymalloc's
small blocks and, above 512 bytes, PyMem_RawMalloc), by callers on different lines; a realloc'd buffer; blocks
freed by another thread; code objects freed and replaced at (perhaps) the same address by code of another file;
blocks allocated and freed by a thread without the GIL (ctypes.CDLL's calls release it) while the main thread
allocates with it, and blocks allocated with the GIL and freed without it.

Usage: python exact_sites.py
Prints 'ready PID', waits for a line on stdin (attach then), runs, prints 'truth FILE LINE LIVE ALLOCS' for each
checked line (ALLOCS -1: not checked), 'rawgil FILE LINE LIVE SLACK' (LINE_RAWGIL's live bytes are LIVE to
LIVE + SLACK), 'nogil LIVE ALLOCS' (what the thread without the GIL kept and made:
a floor for the report's no-GIL row) and 'built', then waits for another line before exiting.
"""
import ctypes
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


def raw_api(lib):
    lib.PyMem_RawMalloc.restype = ctypes.c_void_p
    lib.PyMem_RawMalloc.argtypes = [ctypes.c_size_t]
    lib.PyMem_RawFree.argtypes = [ctypes.c_void_p]
    return lib


NOGIL = raw_api(ctypes.CDLL(None))  # its calls release the GIL
GIL = raw_api(ctypes.pythonapi)  # its calls hold it
NOGIL_KEPT = []


def nogil_thread():
    for i in range(3000):
        p = NOGIL.PyMem_RawMalloc(1000)
        if i % 3 == 0:
            NOGIL_KEPT.append(p)
        else:
            NOGIL.PyMem_RawFree(p)


def across_gil():
    t = threading.Thread(target=nogil_thread)
    t.start()
    held = [None] * 4000
    for i in range(4000):
        held[i] = ZERO * 200  # LINE_HELD: with the GIL, while the thread allocates without it
    t.join()
    raw = [0] * 400
    for i in range(400):
        raw[i] = GIL.PyMem_RawMalloc(2000)  # LINE_RAWGIL
    for i in range(0, 300, 2):
        NOGIL.PyMem_RawFree(raw[i])  # freed without the GIL
    for i in range(300, 400, 2):
        GIL.PyMem_RawFree(raw[i])
    return held, raw


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
    return small, large, more, g, gen, names, across_gil()


kept = build()
small, large, more, g, gen, _, (held, raw) = kept
lines = {}
for n, text in enumerate(open(__file__).read().splitlines(), 1):
    if "# LINE_" in text and "lines[" not in text:
        lines[text.split("# ")[-1].split(":")[0]] = n
here = os.path.basename(__file__)
made = small + large + more
print("truth %s %d %d %d" % (here, lines["LINE_MAKE"], sum(sys.getsizeof(b) for b in made), 5000 + 2000 + 1500))
print("truth %s %d %d -1" % (here, lines["LINE_GROW"], sys.getsizeof(g) - sys.getsizeof(bytearray())))
print("truth %s %d %d %d" % (here, lines["LINE_HELD"], sum(sys.getsizeof(b) for b in held), len(held)))
# the 200 blocks still allocated, and the ints ctypes returned their addresses in: up to 64 bytes each (3.14+
# takes ints from a free list, allocated wherever they were first)
print("rawgil %s %d %d %d" % (here, lines["LINE_RAWGIL"], 200 * 2000, 400 * 64))
print("nogil %d %d" % (1000 * len(NOGIL_KEPT), 3000))
for k, b in enumerate(gen):
    print("truth gen%d.py 1 %d 1" % (k, sys.getsizeof(b)))
print("built", flush=True)
sys.stdin.readline()
