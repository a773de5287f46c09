"""Comprehensions inside a constructor, and functions sharing a name: prints 'ready PID',
waits for a line on stdin (attach then), builds, prints 'truth BYTES' (what the
COMP_LINE comprehension keeps: its lists and bytes objects) and 'built', then
waits for another line before exiting. Used by `memprof lines`/`top`/`export`
tests: the leak sits in UserProfile.__init__'s list comprehension (its own
<listcomp> frame before Python 3.12, inlined from 3.12), a second __init__ lives
in comp_other.py, and the module level builds with a comprehension too.

Usage: python comp_app.py [PROFILES]   (default 40, 200 KB each)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import comp_other  # noqa: E402


class UserProfile:
    def __init__(self, n):
        self.name = "user%d" % n
        self.history = [bytes(2000) for _ in range(100)]  # COMP_LINE


def build(count):
    return [UserProfile(i) for i in range(count)]  # BUILD_LINE


print("ready %d" % os.getpid(), flush=True)
sys.stdin.readline()
profiles = build(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
cache = comp_other.Cache()
print("truth %d" % sum(sys.getsizeof(p.history) + sum(sys.getsizeof(b) for b in p.history) for p in profiles),
      flush=True)
print("built", flush=True)
sys.stdin.readline()
