"""tracked_heap.py -- memprof rss beside a memprof session: keeps MB bytearrays of 1 MiB alive from one line
(and, with "numpy", a 50 MiB numpy array from another: allocated by C code).

usage: tracked_heap.py MB [numpy] -- prints "ready", waits for a line on stdin ("go"), builds them, prints
"built BYTES NATIVE" (sys.getsizeof of the bytearrays kept, their list included; the array's data bytes, 0
without numpy), then idles until stdin closes."""
import sys

kept = []


def build(mb):
    for _ in range(mb):
        kept.append(bytearray(1 << 20))  # the line that keeps the bytearrays
    return sys.getsizeof(kept) + sum(sys.getsizeof(b) for b in kept)


def build_native():
    import numpy
    # 4 KiB pages: numpy asks for transparent huge pages on big arrays, and memprof rss counts a page fault as
    # 4 KiB whatever it maps in (a 2 MiB huge page fault too)
    numpy.core.multiarray._set_madvise_hugepage(False)
    # arange allocates and writes in C: its pages are faulted in under this line too (numpy.ones writes through
    # a Python wrapper of copyto, whose line would have the faults)
    kept.append(numpy.arange(50 << 17, dtype=numpy.float64))  # the line that keeps the array: 50 MiB from malloc
    return kept[-1].nbytes


def main():
    native = sys.argv[2:] == ["numpy"]
    print("ready", flush=True)
    if not sys.stdin.readline():
        return
    python = build(int(sys.argv[1]))
    print("built", python, build_native() if native else 0, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
