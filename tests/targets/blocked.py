"""A target blocked in one system call while memprof attaches and detaches.

Usage: python blocked.py sleep|stdin|select SECONDS
Prints 'ready PID', then blocks, then prints what the call returned:
  sleep:  'slept S'     (time.sleep(SECONDS), elapsed monotonic seconds)
  stdin:  'read N HEX'  (sys.stdin.read() on a pipe: byte count and sha256)
  select: 'select R S'  (select on a pipe that never gets data: ready fds and elapsed)
Any exception is printed as 'ERROR ...'.
"""
import hashlib
import os
import select
import sys
import time


def main():
    mode, seconds = sys.argv[1], float(sys.argv[2])
    rfd, wfd = os.pipe()
    print("ready %d" % os.getpid(), flush=True)
    t = time.monotonic()
    try:
        if mode == "sleep":
            time.sleep(seconds)
            print("slept %.3f" % (time.monotonic() - t), flush=True)
        elif mode == "stdin":
            data = sys.stdin.buffer.read()
            print("read %d %s" % (len(data), hashlib.sha256(data).hexdigest()), flush=True)
        elif mode == "select":
            r, _, _ = select.select([rfd], [], [], seconds)
            print("select %d %.3f" % (len(r), time.monotonic() - t), flush=True)
    except BaseException as e:  # the test wants to see anything at all
        print("ERROR %r" % (e,), flush=True)
    os.close(wfd)


if __name__ == "__main__":
    main()
