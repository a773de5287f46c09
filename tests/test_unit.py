"""Runs the C unit tests (build/test_wire: framing with truncated, oversized and garbage input)."""
import os
import re
import subprocess

from conftest import BUILD, ROOT


def test_wire_unit_tests():
    exe = os.path.join(BUILD, "test_wire")
    # `make` alone does not build it (`make test` does): build it here, as tests/objects builds its harness
    r = subprocess.run(["make", "-s", os.path.relpath(exe, ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and os.access(exe, os.X_OK), "building build/test_wire failed: " + r.stdout + r.stderr
    r = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, r.stdout
    assert int(m.group(2)) == 0 and r.returncode == 0, r.stdout
    assert int(m.group(1)) >= 15
