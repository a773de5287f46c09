"""seccomp_target.py eacces|trap|memfd-trap|mmap-exec -- a Python that forbids mmap(PROT_WRITE|PROT_EXEC)
with a seccomp filter (EACCES, like SELinux execmem; or SIGSYS), or memfd_create (SIGSYS), or any
mmap with PROT_EXEC (EPERM: no library can be loaded, mprotect stays allowed), then sleeps 15 s."""
import ctypes, struct, sys, time
action = {"eacces": 0x00050000 | 13, "trap": 0x00030000, "memfd-trap": 0x00030000,
          "mmap-exec": 0x00050000 | 1}[sys.argv[1]]
prog = [(0x20, 0, 0, 0), (0x15, 0, 4, 9), (0x20, 0, 0, 32), (0x54, 0, 0, 6), (0x15, 0, 1, 6),
        (0x06, 0, 0, action), (0x06, 0, 0, 0x7fff0000)]
if sys.argv[1] == "memfd-trap":  # memfd_create (319) -> SIGSYS
    prog = [(0x20, 0, 0, 0), (0x15, 0, 1, 319), (0x06, 0, 0, action), (0x06, 0, 0, 0x7fff0000)]
if sys.argv[1] == "mmap-exec":  # mmap (9) with PROT_EXEC (4) -> EPERM
    prog = [(0x20, 0, 0, 0), (0x15, 0, 4, 9), (0x20, 0, 0, 32), (0x54, 0, 0, 4), (0x15, 0, 1, 4),
            (0x06, 0, 0, action), (0x06, 0, 0, 0x7fff0000)]
buf = b"".join(struct.pack("HBBI", *i) for i in prog)
cbuf = ctypes.create_string_buffer(buf)
class fprog(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filt", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
f = fprog(len(prog), ctypes.addressof(cbuf))
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(f), 0, 0) == 0, ctypes.get_errno()
t = time.time(); time.sleep(15); print("alive, slept %.2f" % (time.time() - t), flush=True)
