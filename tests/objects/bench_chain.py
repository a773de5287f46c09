"""bench_chain.py N -- memprof's chain and backrefs engine vs objgraph's
find_backref_chain and show_backrefs, on a heap_census-like heap of N objects."""
import inspect
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drive  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000000
objs = [drive.MyBigFatObject(i) for i in range(n)]
target = objs[n // 2]
h = drive.Harness()
for what, kw in (("chain", dict(chain=True)), ("backrefs", dict(max_depth=3))):
    best = min(h.backrefs(addr=id(target), **kw)["gil_ms"] for _ in range(3))
    r = h.backrefs(addr=id(target), **kw)
    print("memprof %s: %.1f ms GIL (%d nodes)" % (what, best, len(r["nodes"])))
try:
    import objgraph
except ImportError:
    sys.exit(0)
t = time.perf_counter()
chain = objgraph.find_backref_chain(target, inspect.ismodule)
print("objgraph find_backref_chain: %.1f ms (%d long)" % ((time.perf_counter() - t) * 1e3, len(chain)))
t = time.perf_counter()
objgraph.show_backrefs([target], max_depth=3, filename="/tmp/bench_objgraph.dot")
print("objgraph show_backrefs: %.1f ms" % ((time.perf_counter() - t) * 1e3))
