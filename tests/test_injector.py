"""The injector on its own (tests/inject/run_tests.py through pytest): version
probes, restarted system calls, busy and multi-threaded targets, SIGSTOP,
misbehaving agents, seccomp — with a stand-in agent library. An interpreter a
check wants and this machine lacks (tests/pythons.py) makes it a visible skip,
after the checks on those found passed."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "inject"))

import run_tests  # noqa: E402
from conftest import required  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def built():
    if os.geteuid() != 0:
        pytest.skip("the injector tests need root: run make test as root")
    # this interpreter runs tests/pythons.py for the Makefile too: one discovery, one PYENV_ROOT
    subprocess.run(["make", "-s", "-C", os.path.join(HERE, "inject"), "PYTHON=" + sys.executable], check=True,
                   capture_output=True)
    yield
    run_tests.cleanup()


@pytest.mark.parametrize("test", run_tests.TESTS, ids=[t.__name__ for t in run_tests.TESTS])
def test_injector(test, capsys):
    before, missed = len(run_tests.failures), len(run_tests.missing)
    try:
        test()
    finally:
        run_tests.cleanup()
    new = run_tests.failures[before:]
    assert not new, "injector checks failed:\n  " + "\n  ".join(new)
    lacking = sorted(set(run_tests.missing[missed:]))
    if lacking:  # under MEMPROF_REQUIRE (CI), a missing interpreter it provides fails instead
        must = [i for i in lacking if required(i)]
        assert not must, "checks passed on the interpreters found, but these are missing: " + ", ".join(must)
        pytest.skip("%s not installed (checks passed on the interpreters found)" % ", ".join(lacking))
