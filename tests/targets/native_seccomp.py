"""A Python where one library's read-only GOT cannot be made writable again: LIB (argv[1], built with
full RELRO) is loaded, then a seccomp filter refuses mprotect with PROT_WRITE inside LIB's mapping (EPERM),
as a hardened sandbox (or an SELinux policy) might. With 'late' (argv[2]) LIB is loaded only by the
command load: it must be linked at a fixed address (-Ttext-segment), which ld.so takes as its hint, and
the filter covers that range from the start. Prints 'ready PID', then one command per stdin line, 'ok CMD' after it:
  load       (late) load LIB now: 'loaded at ADDR' (its first mapping)
  c N SIZE   N blocks of SIZE from LIB's nt_alloc, kept
  py         20 MB of Python bytes objects, kept (PY_LINE)"""
import ctypes
import os
import struct
import sys

import seccomp

late = sys.argv[2:] == ["late"]
real = os.path.realpath(sys.argv[1])


def load():
    so = ctypes.CDLL(sys.argv[1])
    so.nt_alloc.restype = ctypes.c_void_p
    so.nt_alloc.argtypes = [ctypes.c_size_t]
    return so


def linked_span(path):
    """[lo, end) of path's PT_LOAD segments at their linked addresses (ELF64 little-endian)."""
    with open(path, "rb") as f:
        head = f.read(65536)
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    loads = []
    for i in range(phnum):
        p_type, _, _, vaddr, _, _, memsz, _ = struct.unpack_from("<IIQQQQQQ", head, phoff + i * phentsize)
        if p_type == 1:
            loads.append((vaddr, vaddr + memsz))
    return min(s[0] for s in loads) & ~0xFFF, (max(s[1] for s in loads) + 0xFFF) & ~0xFFF


if late:
    lib = None
    lo, end = linked_span(real)
    assert lo, "a late LIB must be linked at a fixed address (-Wl,-Ttext-segment=...)"
else:
    lib = load()
    spans = [[int(x, 16) for x in l.split()[0].split("-")] for l in open("/proc/self/maps") if l.rstrip().endswith(real)]
    lo, end = min(s[0] for s in spans), max(s[1] for s in spans)
assert lo >> 32 == (end - 1) >> 32, "the library spans a 4 GiB boundary"
# x86_64 only. mprotect (10) of an address in LIB's mapping [lo, end) with PROT_WRITE -> ERRNO(EPERM),
# anything else allowed (threads, arenas, other libraries).
prog = [(0x20, 0, 0, 4), (0x15, 1, 0, 0xC000003E), (0x06, 0, 0, 0x7FFF0000),
        (0x20, 0, 0, 0), (0x15, 1, 0, 10), (0x06, 0, 0, 0x7FFF0000),
        (0x20, 0, 0, 20), (0x15, 1, 0, lo >> 32), (0x06, 0, 0, 0x7FFF0000),
        (0x20, 0, 0, 16), (0x35, 1, 0, lo & 0xFFFFFFFF), (0x06, 0, 0, 0x7FFF0000),
        (0x35, 0, 1, end & 0xFFFFFFFF), (0x06, 0, 0, 0x7FFF0000),
        (0x20, 0, 0, 32), (0x45, 0, 1, 2), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)]
seccomp.install(prog)
keep = []
print("ready %d" % os.getpid(), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "load":
        lib = load()
        print("loaded at %x" % min(int(l.split("-")[0], 16) for l in open("/proc/self/maps")
                                   if l.rstrip().endswith(real)), flush=True)
    elif cmd[0] == "c":
        for _ in range(int(cmd[1])):
            keep.append(lib.nt_alloc(int(cmd[2])))
    elif cmd[0] == "py":
        for _ in range(200):
            keep.append(bytes(100000))  # PY_LINE
    print("ok %s" % cmd[0], flush=True)
