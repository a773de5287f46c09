"""Library code allocating for the user's lines: prints 'ready PID', waits for a line on stdin
(attach then), keeps what json.loads builds (JSON_LINE: the allocations happen under the
standard library's json/decoder.py) and, given 'numpy' and numpy importable, ten 10 MB
arrays from np.ones (ONES_LINE: numpy's Python wrapper numeric.py calls C code that
allocates), prints 'built' and waits for another line before exiting.

Usage: python lib_calls.py [numpy]
"""
import json
import os
import sys

try:
    import numpy as np
except ImportError:
    np = None

keep = []


def load(text):
    keep.append(json.loads(text))  # JSON_LINE


def ones():
    for _ in range(10):
        keep.append(np.ones(1250000))  # ONES_LINE


text = json.dumps([{"id": i, "name": "item%d" % i, "tags": ["a%d" % i, "b"]} for i in range(50000)])
print("ready %d" % os.getpid(), flush=True)
sys.stdin.readline()
load(text)
if np is not None and "numpy" in sys.argv[1:]:
    ones()
print("built", flush=True)
sys.stdin.readline()
