"""A process that forks 1,000 children a minute (one each 60 ms, living 0.3 s each; its arguments are a watch rule's
markers, not read): prints 'ready PID', then 'forked N' when a line arrives on stdin, and exits."""
import os
import sys
import threading
import time

forked = 0
stop = threading.Event()


def fork_loop():
    global forked
    while not stop.is_set():
        pid = os.fork()
        if pid == 0:
            time.sleep(0.3)
            os._exit(0)
        forked += 1
        while True:  # reap the ones that ended
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        time.sleep(0.06)


t = threading.Thread(target=fork_loop)
t.start()
sys.stdout.write("ready %d\n" % os.getpid())
sys.stdout.flush()
sys.stdin.readline()
stop.set()
t.join()
sys.stdout.write("forked %d\n" % forked)
sys.stdout.flush()
