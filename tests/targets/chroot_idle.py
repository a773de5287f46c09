"""chroot_idle.py DIR -- chroots into DIR (an empty directory the test removes
afterwards), then idles: 'ready PID', 'tick N' every 0.2 s. A process whose root
directory is gone."""
import os
import sys
import time

os.chroot(sys.argv[1])
os.chdir("/")
sys.stdout.write("ready %d\n" % os.getpid())
sys.stdout.flush()
n = 0
while True:
    time.sleep(0.2)
    n += 1
    sys.stdout.write("tick %d\n" % n)
    sys.stdout.flush()
