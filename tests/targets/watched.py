"""A service for memprofd serve --watch (its arguments are the rule's markers, not read): prints 'ready PID', then
holds 4 MB in 4 KB blocks, 20 of which it replaces every 0.1 s (line HOLD_LINE), so that a session attached at any
time soon records live blocks; exits cleanly (atexit: the agent's final report) when a line arrives on stdin."""
import os
import sys
import threading
import time

held = []


def hold():
    n = 0
    while True:
        for _ in range(20):
            block = bytearray(4096)  # HOLD_LINE
            if len(held) < 1000:
                held.append(block)
            else:
                held[n % 1000] = block
            n += 1
        time.sleep(0.1)


threading.Thread(target=hold, daemon=True).start()
sys.stdout.write("ready %d\n" % os.getpid())
sys.stdout.flush()
sys.stdin.readline()
