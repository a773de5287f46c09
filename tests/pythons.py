"""The Python interpreters on this machine, found once for pytest, run_tests.py, the inject Makefile and bench.sh."""
# As a command:  python3 tests/pythons.py list        every expected id, its path and version or MISSING
#                python3 tests/pythons.py path ID...  the first of these ids found (exit 1 if none)
#                python3 tests/pythons.py prefix ID   that interpreter's sys.prefix (exit 1 if not found)
import glob
import os
import re
import shutil
import subprocess
import sys

SUPPORTED = [(3, m) for m in range(8, 14)]
UNSUPPORTED = [(2, 7), (3, 6), (3, 7)]
DEBIAN = "/usr/bin/python3.11"
SUPPORTED_IDS = ["pyenv-%d.%d" % v for v in SUPPORTED] + ["debian-3.11"]
UNSUPPORTED_IDS = ["pyenv-%d.%d" % v for v in UNSUPPORTED]


def _pyenv_root():
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    exe = shutil.which("pyenv")
    if exe:
        try:
            root = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=10).stdout.strip() or root
        except (OSError, subprocess.SubprocessError):
            pass
    return root


def _version_of(path):
    try:
        out = subprocess.run([path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def find_interpreters():
    """{id: (path, 'X.Y.Z')} for pyenv's newest patch of each minor, plus Debian's python3.11."""
    found = {}
    versions = []
    for d in glob.glob(os.path.join(_pyenv_root(), "versions", "*")):
        m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", os.path.basename(d))
        if m:
            versions.append((tuple(int(x) for x in m.groups()), d))
    for (major, minor, _), d in sorted(versions):  # numeric order: the newest patch of a minor wins
        exe = os.path.join(d, "bin", "python%d.%d" % (major, minor))
        if os.access(exe, os.X_OK):
            ver = _version_of(exe)
            if ver:
                found["pyenv-%d.%d" % (major, minor)] = (exe, ver)
    if os.access(DEBIAN, os.X_OK):
        ver = _version_of(DEBIAN)
        if ver:
            found["debian-3.11"] = (DEBIAN, ver)
    return found


INTERPRETERS = find_interpreters()


def kernel_thread():
    """The pid of a kernel thread this process can see (kthreadd is pid 2 on a host), or None: inside a
    pid namespace of its own (a container, make check-fresh) none is visible."""
    for d in sorted(glob.glob("/proc/[0-9]*"), key=lambda p: int(p[6:])):
        try:
            with open(d + "/stat") as f:
                flags = int(f.read().rsplit(")", 1)[1].split()[6])
        except (OSError, IndexError, ValueError):
            continue
        if flags & 0x00200000:  # PF_KTHREAD
            return int(d[6:])
    return None


def first_of(*ids):
    """(id, path, version) of the first of ids found on this machine, or None."""
    for pyid in ids:
        if pyid in INTERPRETERS:
            return (pyid,) + INTERPRETERS[pyid]
    return None


def report_lines():
    """What was found and what was not, one line per expected interpreter."""
    lines = []
    for pyid in SUPPORTED_IDS + UNSUPPORTED_IDS:
        path, ver = INTERPRETERS.get(pyid, (None, None))
        lines.append("  %-12s %s" % (pyid, "%s (%s)" % (path, ver) if path else "MISSING - its tests are skipped"))
    return lines


def main(argv):
    if argv[:1] == ["list"]:
        print("\n".join(report_lines()))
        return 0
    if argv[:1] == ["path"] and len(argv) > 1:
        hit = first_of(*argv[1:])
        if hit:
            print(hit[1])
            return 0
        print("pythons.py: none of %s found (pyenv root %s)" % (", ".join(argv[1:]), _pyenv_root()), file=sys.stderr)
        return 1
    if argv[:1] == ["prefix"] and len(argv) == 2:
        hit = first_of(argv[1])
        if not hit:
            print("pythons.py: %s not found (pyenv root %s)" % (argv[1], _pyenv_root()), file=sys.stderr)
            return 1
        print(subprocess.run([hit[1], "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                             timeout=20).stdout.strip())
        return 0
    print("usage: pythons.py list | path ID... | prefix ID", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
