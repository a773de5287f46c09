"""A Python whose seccomp filter refuses memfd_create with EPERM (like a locked-down
container), then idles like idle.py: 'ready PID', 'tick N' every 0.2 s."""
import ctypes
import os
import struct
import sys
import time

# load arch; allow if not x86_64 ... (x86_64 only); load nr; memfd_create (319) -> ERRNO(EPERM); else ALLOW
prog = [(0x20, 0, 0, 4), (0x15, 1, 0, 0xC000003E), (0x06, 0, 0, 0x7FFF0000),
        (0x20, 0, 0, 0), (0x15, 0, 1, 319), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)]
buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))


class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filt", ctypes.c_void_p)]


libc = ctypes.CDLL(None, use_errno=True)
f = Fprog(len(prog), ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0                      # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(f), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, filter
sys.stdout.write("ready %d\n" % os.getpid())
sys.stdout.flush()
n = 0
while True:
    time.sleep(0.2)
    n += 1
    sys.stdout.write("tick %d\n" % n)
    sys.stdout.flush()
