"""chroot_idle.py DIR -- chroots into DIR (an empty directory the test removes
afterwards), then idles: 'ready PID', 'tick N' every 0.2 s. A process whose root
directory is gone."""
import os
import sys

from idle import idle  # before the chroot: nothing is found after it

os.chroot(sys.argv[1])
os.chdir("/")
idle()
