"""tracked_heap.py -- memprof rss beside a memprof session: keeps MB bytearrays of 1 MiB alive from one line.

usage: tracked_heap.py MB -- prints "ready", waits for a line on stdin ("go"), builds them, prints
"built BYTES" (sys.getsizeof of what is kept, the list included), then idles until stdin closes."""
import sys

kept = []


def build(mb):
    for _ in range(mb):
        kept.append(bytearray(1 << 20))  # the line that keeps the bytearrays
    return sys.getsizeof(kept) + sum(sys.getsizeof(b) for b in kept)


def main():
    print("ready", flush=True)
    if not sys.stdin.readline():
        return
    print("built", build(int(sys.argv[1])), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
