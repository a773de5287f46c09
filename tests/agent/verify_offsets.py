"""verify_offsets.py -- run by test_agent.py under each interpreter: walks this
thread's frames with the agent's offset table (offsets_check.so) and compares
them with what the interpreter reports (a function's qualified name where the
interpreter has one, 3.11+, as the agent records it). Prints "ok N" or the mismatch."""
import ctypes
import sys
import threading

lib = ctypes.PyDLL(sys.argv[1])
buf = ctypes.create_string_buffer(1 << 16)


def name(c):
    return getattr(c, "co_qualname", c.co_name)


def inner():
    exp = []
    f = sys._getframe(1)
    while f:
        c = f.f_code
        exp.append((name(c), c.co_filename, c.co_firstlineno, f.f_lineno))
        f = f.f_back
    rc = lib.oc_walk(buf, len(buf)); line = sys._getframe().f_lineno
    c = sys._getframe().f_code
    return rc, [(name(c), c.co_filename, c.co_firstlineno, line)] + exp


def middle():
    return inner()


class K:
    def meth(self):
        return [middle() for _ in range(1)][0]


def gen():
    yield K().meth()


def check(rc, exp):
    if rc < 0:
        return "walk failed: " + buf.value.decode()
    got = [tuple(l.split("|")) for l in buf.value.decode().splitlines()]
    got = [(n, f, int(a), int(b)) for n, f, a, b in got]
    if got != exp:
        return "mismatch:\n got %r\n exp %r" % (got, exp)
    return None


results = [check(*next(gen()))]
t = threading.Thread(target=lambda: results.append(check(*next(gen()))))
t.start()
t.join()
bad = [r for r in results if r]
print(bad[0] if bad else "ok %d" % len(results))
