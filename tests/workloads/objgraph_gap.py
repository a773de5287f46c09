"""objgraph's in-process walks on heap_churn.py's heap, each timed with the longest gap of the same 1 ms
ticker thread: what `make bench` puts beside memprof's sliced walks (scripts/bench_walk_gap.py)."""
# Usage: python objgraph_gap.py N [OP...]   OP: types growth backrefs chain (default: all)
# Prints 'objgraph OP: MS ms, gap MS ms' per OP, after 'ready PID'.
import io
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heap_churn  # noqa: E402  (its Stable, x and ticker)
import objgraph  # noqa: E402


def run(op, x):
    sink = io.StringIO()
    if op == "types":
        objgraph.show_most_common_types(limit=10, file=sink)
    elif op == "growth":
        objgraph.show_growth(limit=10, file=sink)
    elif op == "backrefs":
        objgraph.show_backrefs([x], max_depth=3, output=sink)
    elif op == "chain":
        objgraph.find_backref_chain(x, objgraph.is_proper_module)
    else:
        raise SystemExit("objgraph_gap: unknown op %r" % op)


def main():
    n = int(sys.argv[1])
    ops = sys.argv[2:] or ["types", "growth", "backrefs", "chain"]
    objs = [heap_churn.Stable(i) for i in range(n)]
    threading.Thread(target=heap_churn.ticker, daemon=True).start()
    if "growth" in ops:
        objgraph.show_growth(limit=10, file=io.StringIO())  # its baseline, as memprof growth's first census
    print("ready %d" % os.getpid(), flush=True)
    for op in ops:
        time.sleep(0.05)
        heap_churn.gap[0] = 0.0
        t = time.perf_counter()
        run(op, heap_churn.x)
        ms = (time.perf_counter() - t) * 1e3
        time.sleep(0.01)  # the ticker's wake-up after the walk closes the gap
        print("objgraph %s: %.1f ms, gap %.1f ms" % (op, ms, heap_churn.gap[0] * 1e3), flush=True)
    del objs


if __name__ == "__main__":
    main()
