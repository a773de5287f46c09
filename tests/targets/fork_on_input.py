"""Prints 'ready PID', then for each line on stdin calls os.fork() (the child exits at once) and prints one line:
'forked ok, N warnings' (warnings shown by the filters in force, recorded, not printed), or 'raised TYPE: MESSAGE'
when os.fork() raised (a warning turned into an error)."""
import os
import sys
import warnings

print("ready %d" % os.getpid(), flush=True)
for line in sys.stdin:
    with warnings.catch_warnings(record=True) as shown:
        try:
            pid = os.fork()
        except BaseException as e:
            print("raised %s: %s" % (type(e).__name__, e), flush=True)
            continue
        if pid == 0:
            os._exit(0)
    os.waitpid(pid, 0)
    print("forked ok, %d warnings" % len(shown), flush=True)
