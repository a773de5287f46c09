"""rss_touch.py -- memprof rss's target: maps and touches MB megabytes in touch() (mmap + writes), then idles.

usage: rss_touch.py MB [ROUNDS [thread|huge|spike]] -- waits for a line on stdin before each round ("go"), prints "touched N SECONDS" after it;
with "thread", touch() runs in a second thread while the main one waits in join(); with "huge", the mapping is
private and asks for transparent huge pages (madvise, as numpy does for big arrays); with "spike", each mapping
is unmapped as soon as it is touched (RSS goes up and down again before "touched"); otherwise the mappings are
kept (RSS stays up) until stdin closes."""
import mmap
import sys
import threading
import time

CHUNK = 1 << 20
HUGE = sys.argv[3:] == ["huge"]
kept = []


def touch(mb):
    if HUGE:
        m = mmap.mmap(-1, mb * CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_HUGEPAGE)
    else:
        m = mmap.mmap(-1, mb * CHUNK)
    block = b"x" * CHUNK
    for off in range(0, mb * CHUNK, CHUNK):
        m[off:off + CHUNK] = block  # the line every page is faulted in by
    kept.append(m)
    return len(m)


def main():
    mb = int(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    threaded = sys.argv[3:] == ["thread"]
    print("ready", flush=True)
    for _ in range(rounds):
        if not sys.stdin.readline():
            return
        t = time.perf_counter()
        if threaded:
            box = []
            worker = threading.Thread(target=lambda: box.append(touch(mb)))
            worker.start()
            worker.join()
            n = box[0]
        else:
            n = touch(mb)
        took = time.perf_counter() - t  # the touch alone
        if sys.argv[3:] == ["spike"]:
            kept.pop().close()
        print("touched", n, "%.3f" % took, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
