"""A Python whose seccomp filter refuses memfd_create with EPERM (like a locked-down
container), then idles like idle.py: 'ready PID', 'tick N' every 0.2 s."""
import seccomp
from idle import idle

# load arch; allow if not x86_64 ... (x86_64 only); load nr; memfd_create (319) -> ERRNO(EPERM); else ALLOW
seccomp.install([(0x20, 0, 0, 4), (0x15, 1, 0, 0xC000003E), (0x06, 0, 0, 0x7FFF0000),
                 (0x20, 0, 0, 0), (0x15, 0, 1, 319), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)])
idle()
