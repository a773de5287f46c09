"""Runs the C unit tests: build/test_wire (framing with truncated, oversized and garbage input),
build/test_procfs (probe/procfs.c: stat lines whose name holds spaces and ')', status fields, a renamed process)
and build/test_aset (agent/aset.c: addresses counted once, the region table's growth and cap)."""
import os
import re
import subprocess

import pytest

from conftest import BUILD, ROOT


@pytest.mark.parametrize("name,at_least", [("test_wire", 15), ("test_procfs", 20), ("test_aset", 8)])
def test_c_unit_tests(name, at_least):
    exe = os.path.join(BUILD, name)
    # `make` alone does not build it (`make test` does): build it here, as tests/objects builds its harness
    r = subprocess.run(["make", "-s", os.path.relpath(exe, ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and os.access(exe, os.X_OK), "building build/" + name + " failed: " + r.stdout + r.stderr
    r = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, r.stdout
    assert int(m.group(2)) == 0 and r.returncode == 0, r.stdout
    assert int(m.group(1)) >= at_least
