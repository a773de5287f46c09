"""Idles, printing 'ready PID' then 'tick N' every 0.2 s (also runs on Python 2)."""
import os
import sys
import time

sys.stdout.write("ready %d\n" % os.getpid())
sys.stdout.flush()
n = 0
while True:
    time.sleep(0.2)
    n += 1
    sys.stdout.write("tick %d\n" % n)
    sys.stdout.flush()
