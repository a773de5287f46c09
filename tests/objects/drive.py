"""drive.py -- loads build/objects_harness.so into this Python process and runs the
object census engine and the `memprof types/growth/backrefs/chain` commands on this
process's own heap (no injector, no daemon). Used by tests/test_objects.py; also a
command line for measurements:

    python drive.py census N        # heap_census.py's heap of N objects: census timings
    python drive.py backrefs        # backrefs.py's heap: graph, chain, DOT
"""
import ctypes
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SO = os.path.join(ROOT, "build", "objects_harness%s.so" % os.environ.get("HARNESS_VARIANT", ""))


class Harness:
    def __init__(self, path=SO):
        # CDLL releases the GIL during calls: the harness takes it like the agent
        self.lib = ctypes.CDLL(path)
        self.lib.harness_cli.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_char_p)]
        self.lib.harness_census.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        self.lib.harness_backrefs.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_uint,
                                              ctypes.c_uint, ctypes.c_uint, ctypes.c_int,
                                              ctypes.c_char_p, ctypes.c_size_t]

    def cli(self, *args):
        """Run `memprof ARGS` in-process against this process; (rc, stdout, stderr)."""
        argv = [b"memprof"] + [str(a).encode() for a in args]
        arr = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
        fd1, out = tempfile.mkstemp()
        fd2, err = tempfile.mkstemp()
        os.close(fd1)
        os.close(fd2)
        try:
            rc = self.lib.harness_cli(out.encode(), err.encode(), len(argv), arr)
            with open(out, encoding="utf-8") as f:
                o = f.read()
            with open(err, encoding="utf-8") as f:
                e = f.read()
        finally:
            os.unlink(out)
            os.unlink(err)
        return rc, o, e

    def census(self, all=False):
        """(objects, bytes, gil_ms, {name: (module, count, bytes)}) or raises."""
        size = 1 << 22
        buf = ctypes.create_string_buffer(size)
        if self.lib.harness_census(int(all), buf, size) < 0:
            raise RuntimeError(buf.value.decode())
        lines = buf.value.decode().splitlines()
        objects, nbytes, gil = lines[0].split()
        types = {}
        for line in lines[1:]:
            name, module, count, b = line.split("\t")
            old = types.get(name, (module, 0, 0))
            types[name] = (module, old[1] + int(count), old[2] + int(b))
        return int(objects), int(nbytes), float(gil), types

    def backrefs(self, type_name=None, addr=0, max_depth=0, too_many=0, max_start=0, chain=False):
        size = 1 << 24
        buf = ctypes.create_string_buffer(size)
        self.lib.harness_backrefs(type_name.encode() if type_name else None, addr, max_depth,
                                  too_many, max_start, int(chain), buf, size)
        return json.loads(buf.value.decode())


class MyBigFatObject:
    def __init__(self, i):
        self.i = i
        self.children = []


def objgraph_census(n):
    """objgraph's timings on a heap like the one here (bench/peers/objgraph_census.py)."""
    import objgraph
    t = time.perf_counter()
    objgraph.most_common_types(limit=10)
    return time.perf_counter() - t


def main():
    h = Harness()
    what = sys.argv[1] if len(sys.argv) > 1 else "census"
    if what == "census":
        n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000000
        objs = [MyBigFatObject(i) for i in range(n)]  # noqa: F841
        for all_ in (False, True):
            best = None
            for _ in range(3):
                objects, nbytes, gil, types = h.census(all_)
                best = gil if best is None else min(best, gil)
            print("%s census: %d objects, %.1f MB, MyBigFatObject %d, GIL %.1f ms (best of 3)"
                  % ("all" if all_ else "tracked", objects, nbytes / 1e6,
                     types["MyBigFatObject"][1], best))
        if len(sys.argv) > 3 and sys.argv[3] == "objgraph":
            print("objgraph most_common_types: %.1f ms" % (objgraph_census(n) * 1e3))
    elif what == "backrefs":
        x = [1]
        y = [x, [x], {"a": x}]  # noqa: F841
        r = h.backrefs(addr=id(x))
        print(json.dumps(r, indent=1))
        print(json.dumps(h.backrefs(addr=id(x), chain=True), indent=1))
        print(h.cli("chain", "--pid", os.getpid(), "--addr", hex(id(x))))
        print(h.cli("backrefs", "--pid", os.getpid(), "--addr", hex(id(x)), "-o", "/tmp/x.dot"))
        print(open("/tmp/x.dot").read())


if __name__ == "__main__":
    main()
