"""Runs the C unit tests (build/test_wire: framing with truncated, oversized and garbage input)."""
import os
import re
import subprocess

from conftest import BUILD


def test_wire_unit_tests():
    exe = os.path.join(BUILD, "test_wire")
    assert os.access(exe, os.X_OK), "build/test_wire missing: make test builds it"
    r = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, r.stdout
    assert int(m.group(2)) == 0 and r.returncode == 0, r.stdout
    assert int(m.group(1)) >= 15
