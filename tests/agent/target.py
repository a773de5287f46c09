"""target.py -- a Python process the agent tests load the agent into with ctypes:
the same code path as an injection, minus the hijack. Works on 3.8+.

    python target.py AGENT_SO MODE ARG [N]

Prints one line per event; "gone True" means the process is back to the threads
it had before the agent started."""
import atexit
import ctypes
import os
import sys
import time

lib_path, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3].encode()
n = int(sys.argv[4]) if len(sys.argv) > 4 else 1
lib = ctypes.CDLL(lib_path)


def say(*a):
    print(*a, flush=True)


def tasks():
    return len(os.listdir("/proc/self/task"))


BASE = tasks()


def wait_gone(timeout=15.0, busy=False):
    end = time.time() + timeout
    while time.time() < end:
        if tasks() == BASE:
            return True
        if busy:  # keep the GIL busy: the agent must wait for a switch
            t = time.time()
            while time.time() - t < 0.05:
                sum(i * i for i in range(100))
        else:
            time.sleep(0.01)
    return False


def start(a=arg):
    return lib.memprof_agent_start(a)


def agent_sockets():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink("/proc/self/fd/" + fd).startswith("socket:")
        except OSError:
            pass
    return n


if mode == "session":  # n sessions one after the other
    for i in range(n):
        say("start", start())
        say("gone", wait_gone(30))
elif mode == "sigmask":  # the agent thread blocks every signal
    before = set(os.listdir("/proc/self/task"))
    say("start", start())
    time.sleep(0.5)
    for tid in set(os.listdir("/proc/self/task")) - before:
        with open("/proc/self/task/%s/status" % tid) as f:
            st = dict(l.split(":", 1) for l in f)
        say("thread", st["Name"].strip(), st["SigBlk"].strip())
    say("gone", wait_gone(30))
elif mode == "busy":  # the GIL is never released until the agent has it
    rc = start()
    t = time.time()
    while time.time() - t < 0.3:
        sum(i * i for i in range(100))
    say("start", rc)
    say("gone", wait_gone(30, busy=True))
elif mode == "work":  # the daemon dies meanwhile: we go on
    say("start", start())
    t, total = time.time(), 0
    while time.time() - t < 3:
        total += len([str(i) for i in range(2000)])
        time.sleep(0.005)
    say("alive", total > 0)
    say("gone", wait_gone(10))
elif mode == "badargs":
    for a in [b"", b"token=ab", b"sock=@x fd=abc", b"sock=@x debug=2", b"sock=@x junk",
              b"sock=@ token=x", b"sock=@" + b"x" * 200, b"sock=@x%zz"]:
        say("bad", repr(a[:20]), start(a))
    # keys it does not know (tracking settings travel on the wire now) are ignored
    say("ok", start(b"sock=@memprof-nowhere-%d future=1 rate=abc" % os.getpid()))
    say("gone", wait_gone(10))
    say("again", start(b"sock=@memprof-nowhere-%d" % os.getpid()))
    say("gone", wait_gone(10))
elif mode == "exit":  # leave while the agent starts
    say("start", start())
elif mode == "exit-held":  # the agent waits in PyGILState_Ensure across the exit
    usleep = ctypes.PyDLL(None).usleep  # PyDLL: the GIL stays held
    say("start", start())
    usleep(100000)
    atexit.register(usleep, 200000)
elif mode == "fork":
    say("start", start())
    time.sleep(0.5)
    say("parent-sockets", agent_sockets())
    pid = os.fork()
    if pid == 0:
        ok = agent_sockets() == 0  # the parent's daemon connection was closed
        rc = start(b"sock=@memprof-nowhere-%d" % os.getpid())  # 0: not "already running"
        gone = wait_gone(10)
        os._exit(0 if ok and rc == 0 and gone else 1)
    _, status = os.waitpid(pid, 0)
    say("child", status)
    say("gone", wait_gone(30))
elif mode == "dlclose":
    import _ctypes
    say("start", start())
    say("gone", wait_gone(30))
    _ctypes.dlclose(lib._handle)
    with open("/proc/self/maps") as f:
        say("mapped", "libmemprof_agent" in f.read())
    pid = os.fork()  # a fork handler left behind would crash here
    if pid == 0:
        os._exit(0)
    say("child", os.waitpid(pid, 0)[1])
    lib = ctypes.CDLL(lib_path)
    say("start", start())
    say("gone", wait_gone(30))
say("end")
