"""Idles, printing 'ready PID' then 'tick N' every 0.2 s (also runs on Python 2). idle() is that loop for the
targets that set something up first (chroot_idle.py, seccomp_memfd.py)."""
import os
import sys
import time


def idle():
    sys.stdout.write("ready %d\n" % os.getpid())
    sys.stdout.flush()
    n = 0
    while True:
        time.sleep(0.2)
        n += 1
        sys.stdout.write("tick %d\n" % n)
        sys.stdout.flush()


if __name__ == "__main__":
    idle()
