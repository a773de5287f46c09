"""Replays every saved fuzz input (tests/fuzz/corpus/TARGET/*: seeds and the crash inputs of fixed bugs) through
its libFuzzer target once (ASan+UBSan, no mutation): a fixed crash that comes back fails here, one test per input."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, lacking

CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
FUZZ_BUILD = os.path.join(ROOT, "build")  # the fuzz targets are built apart from the sanitized CLI (make test-asan)
INPUTS = sorted((t, f) for t in os.listdir(CORPUS) for f in os.listdir(os.path.join(CORPUS, t)))


@pytest.fixture(scope="session")
def fuzz_targets():
    """Builds every fuzz target once (the Makefile's rules; up to date after `make test`)."""
    if not shutil.which("clang"):
        lacking("clang", "the fuzz targets are built with clang's libFuzzer (apt-get install clang)")
    targets = sorted({t for t, _ in INPUTS})
    exes = [os.path.join("build", "fuzz_" + t) for t in targets]
    r = subprocess.run(["make", "-s"] + exes, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, "building the fuzz targets failed:\n" + (r.stdout + r.stderr)[-3000:]
    return {t: os.path.join(ROOT, exe) for t, exe in zip(targets, exes)}


def test_every_target_has_inputs():
    """Each fuzz target in the Makefile has a corpus directory with at least one input to replay."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        line = next(l for l in f if l.startswith("FUZZ_TARGETS"))
    names = line.split("=", 1)[1].split()
    assert names and sorted(names) == sorted(os.listdir(CORPUS)), (names, os.listdir(CORPUS))
    for t in names:
        assert os.listdir(os.path.join(CORPUS, t)), "tests/fuzz/corpus/%s is empty" % t


@pytest.mark.parametrize("target,name", INPUTS, ids=["%s/%s" % i for i in INPUTS])
def test_corpus_input_replays_clean(fuzz_targets, target, name):
    """libFuzzer run on a file executes it once: exit 0 and "Executed" unless a sanitizer or the target aborts."""
    path = os.path.join(CORPUS, target, name)
    r = subprocess.run([fuzz_targets[target], "-runs=0", path], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, "fuzz_%s crashed on %s (exit %d):\n%s" % (target, path, r.returncode, out[-4000:])
    assert "Executed %s" % path in out, out[-2000:]
    assert "ERROR: AddressSanitizer" not in out and "runtime error:" not in out, out[-4000:]
