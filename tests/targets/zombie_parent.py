"""Leaves a zombie child: prints 'ready PARENT zombie CHILD', then idles."""
import os
import time

child = os.fork()
if child == 0:
    os._exit(0)
time.sleep(0.3)
print("ready %d zombie %d" % (os.getpid(), child), flush=True)
while True:
    time.sleep(1)
