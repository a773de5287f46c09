"""sweep.py -- backrefs and chain for every type in a varied heap (frames, generators,
coroutines, closures, slots, weakrefs, big ints, odd strings): no crash, sane labels."""
import asyncio
import collections
import os
import sys
import weakref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drive  # noqa: E402


class Slotted:
    __slots__ = ("a", "b", "__weakref__")


class Plain:
    def method(self):
        return self


def gen():
    local = [1, 2, 3]
    yield local


async def coro():
    await asyncio.sleep(0)


def closure():
    captured = {"k": 1}
    return lambda: captured


keep = {
    "frames": [sys._getframe()],
    "gens": [gen() for _ in range(3)],
    "started": [next(g) for g in [gen()]],
    "coros": [coro() for _ in range(2)],
    "closure": closure(),
    "slots": [Slotted() for _ in range(5)],
    "plain": [Plain() for _ in range(5)],
    "bound": Plain().method,
    "weak": weakref.ref(Plain),
    "bigint": 2 ** 200, "neg": -12345678901234567890, "float": 1.5e300,
    "strs": ["é" * 50, "\u4e2d\u6587", "a'b\"c\n", "\ud800x", "x" * 1000],
    "bytes": b"\x00\xff'abc", "ba": bytearray(b"xyz" * 100),
    "od": collections.OrderedDict(a=1), "dd": collections.defaultdict(list),
    "deque": collections.deque([1, 2]), "set": {1, 2, 3}, "fs": frozenset([1]),
    ("tuple", "key"): "tuple-keyed", 42: "int-keyed", 1.5: "float-keyed",
    "memview": memoryview(b"abc"), "range": range(10), "slice": slice(1, 2),
    "exc": ValueError("x"), "cell_user": None,
    "tup": (None, Plain()), "lst": [None, None, Plain()],
}
keep["slots"][0].a = keep["plain"][0]
keep["plain"][1].ref = keep["slots"][1]
for c in keep["coros"]:
    pass


def main():
    h = drive.Harness()
    for all_ in (False, True):
        objects, nbytes, gil, types = h.census(all_)
    names = sorted(types)
    bad = 0
    for i, name in enumerate(names):
        if name.startswith("c_char_Array"):  # the harness's own, gone already
            continue
        for chain in (False, True):
            r = h.backrefs(type_name=name, max_depth=2, max_start=3, chain=chain)
            if not r["ok"] and not r["error"].startswith("chain: "):
                print("FAIL", name, chain, r["error"])
                bad += 1
            for n in r.get("nodes", []):
                if not n[5] and not n[6] and not n[1]:
                    print("EMPTY TYPE", name, n)
                    bad += 1
    for k in ("strs", "bigint", "neg", "float", "bytes"):
        r = h.backrefs(addr=id(keep[k]), max_depth=1)
        print(k, r["ok"], [n[2] for n in r["nodes"][:1]], [e[2] for e in r["edges"]][:2])
    # labels of attribute edges: slots, instance attributes, closures, bound methods
    for what, obj in (("slot", keep["plain"][0]), ("attr", keep["slots"][1]),
                      ("closure", keep["closure"].__closure__[0].cell_contents),
                      ("bound-self", keep["bound"].__self__)):
        r = h.backrefs(addr=id(obj), max_depth=2)
        print(what, sorted(set(e[2] for e in r["edges"])))
    # item labels: only the direct referrers (the tuple, the list)
    for what, obj in (("tuple-item", keep["tup"][1]), ("list-item", keep["lst"][2])):
        r = h.backrefs(addr=id(obj), max_depth=1)
        print(what, sorted(set(e[2] for e in r["edges"])))
    print("%s: %d types swept, %d failures" % (sys.version.split()[0], len(names), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
