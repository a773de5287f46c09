"""seccomp.py -- install(prog): a classic BPF seccomp filter, rows of (code, jt, jf, k), on the calling process
(no new privileges first), for the targets that play a locked-down process (seccomp_memfd.py,
native_seccomp.py). x86_64 filters: each checks the architecture first."""
import ctypes
import struct


class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filt", ctypes.c_void_p)]


def install(prog):
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    libc = ctypes.CDLL(None, use_errno=True)
    f = Fprog(len(prog), ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0                      # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(f), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, filter
