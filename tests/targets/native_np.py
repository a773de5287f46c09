"""Native allocations target (numpy, ctypes): prints 'ready PID', then runs one
command per stdin line and prints 'ok CMD' after it:
  hold     20 arrays of 10,000,000 bytes kept alive        (HOLD_LINE)
  churn    200 arrays of 10,000,000 bytes, each freed at once (CHURN_LINE)
  release  drop what hold keeps
  ctypes LIB N SIZE  two threads each malloc N blocks of SIZE through LIB's (loaded unless lib did)
           nt_alloc (ctypes releases the GIL for the call), kept (CTYPES_LINE)
  cfree    free them through nt_free
  spin     a thread allocating and freeing numpy arrays until the process ends
  sum      print 'sum S': a checksum of numpy work (a harmed target shows it)
  lib LIB  load LIB (nt_alloc/nt_free) through ctypes
  cspin    two threads calling nt_alloc/nt_free without the GIL until the end
  unload   dlclose the library loaded by lib
  nf LIB N SIZE  N blocks of SIZE from LIB's nf_outer (which calls nf_inner, which mallocs), kept (NF_LINE)
"""
import ctypes
import os
import sys
import threading

try:
    import numpy as np
except ImportError:
    np = None

keep = []
blocks = []
lib = None


def hold():
    for _ in range(20):
        keep.append(np.zeros(1250000))  # HOLD_LINE


def churn():
    for _ in range(200):
        a = np.zeros(1250000)  # CHURN_LINE
        del a


def ctypes_alloc(n, size, out):
    for _ in range(n):
        out.append(lib.nt_alloc(size))  # CTYPES_LINE


def nf(path, n, size):
    so = ctypes.CDLL(path)
    so.nf_outer.restype = ctypes.c_void_p
    so.nf_outer.argtypes = [ctypes.c_size_t]
    for _ in range(n):
        blocks.append(so.nf_outer(size))  # NF_LINE


def spin():
    while True:
        a = np.arange(100000) * 2
        b = np.zeros((300, 300)) + a[:300]
        del a, b


def cspin(f, a):
    while True:
        ps = [a(64 + i * 4096) for i in range(32)]
        for p in ps:
            f(p)


def load(path):
    so = ctypes.CDLL(path)
    so.nt_alloc.restype = ctypes.c_void_p
    so.nt_alloc.argtypes = [ctypes.c_size_t]
    so.nt_free.argtypes = [ctypes.c_void_p]
    so.nt_free(so.nt_alloc(16))  # resolve the PLT entries now
    return so


def checksum():
    a = np.arange(1000, dtype=np.int64)
    return int((a * a).sum() + np.ones((50, 50)).sum())


print("ready %d" % os.getpid(), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "hold":
        hold()
    elif cmd[0] == "churn":
        churn()
    elif cmd[0] == "release":
        keep.clear()
    elif cmd[0] == "ctypes":
        if lib is None:
            lib = load(cmd[1])
        outs = [[], []]
        ts = [threading.Thread(target=ctypes_alloc, args=(int(cmd[2]), int(cmd[3]), o)) for o in outs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        blocks = outs[0] + outs[1]
    elif cmd[0] == "cfree":
        for p in blocks:
            lib.nt_free(p)
        blocks = []
    elif cmd[0] == "spin":
        threading.Thread(target=spin, daemon=True).start()
    elif cmd[0] == "cspin":
        for _ in range(2):
            threading.Thread(target=cspin, args=(lib.nt_free, lib.nt_alloc), daemon=True).start()
    elif cmd[0] == "unload":
        handle = lib._handle
        lib = None
        import _ctypes
        _ctypes.dlclose(handle)
    elif cmd[0] == "sum":
        print("sum %d" % checksum(), flush=True)
    elif cmd[0] == "nf":
        nf(cmd[1], int(cmd[2]), int(cmd[3]))
    elif cmd[0] == "lib":
        lib = load(cmd[1])
    print("ok %s" % cmd[0], flush=True)
