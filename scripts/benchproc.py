"""benchproc.py -- processes for the daemon benches (bench_fleet, bench_kill9): a private memprofd, targets, /proc figures."""
# Every process made here is ended by pid: Daemon.close() and Target.kill(), which the benches call in finally.
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from proctools import agent_threads, cpu_seconds, free_port  # noqa: E402,F401 (the benches call them as bp.*)



def status_field(pid, name):
    with open("/proc/%d/status" % pid) as f:
        return re.search(r"^%s:\s+(\S+)" % name, f.read(), re.M).group(1)


def rss_kib(pid):
    return int(status_field(pid, "VmRSS"))


def percentile(values, p):
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    v = sorted(values)
    return v[max(0, math.ceil(p / 100.0 * len(v)) - 1)]


class Daemon:
    """memprofd serve on a socket of its own (and --http on a free loopback port if http; serve_args added)."""

    def __init__(self, build, http=False, serve_args=()):
        self.build = build
        self.tmp = tempfile.mkdtemp(prefix="memprof-bench-")
        self.socket = os.path.join(self.tmp, "run", "memprofd.sock")
        self.env = dict(os.environ, MEMPROF_SOCKET=self.socket)
        argv = [os.path.join(build, "memprofd"), "serve", "--socket", self.socket]
        self.port = None
        if http:
            self.port = free_port()
            argv += ["--http", "127.0.0.1:%d" % self.port]
        argv += list(serve_args)
        self.logf = open(os.path.join(self.tmp, "memprofd.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)
        self.pid = self.proc.pid
        deadline = time.time() + 20
        while not self._accepts():
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError("memprofd did not start: %s" % self.log_tail())
            time.sleep(0.05)

    def _accepts(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket)
            if self.port:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False
        finally:
            s.close()

    def run(self, tool, *args, timeout=120):
        return subprocess.run([os.path.join(self.build, tool)] + [str(a) for a in args], capture_output=True,
                              text=True, env=self.env, timeout=timeout)

    def attach(self, pid, *extra):
        r = self.run("memprofd", "attach", "--pid", pid, *extra)
        if r.returncode:
            raise RuntimeError("attach to %d failed: %s%s" % (pid, r.stdout, r.stderr))

    def log_tail(self, n=10):
        with open(os.path.join(self.tmp, "memprofd.log")) as f:
            return "".join(f.readlines()[-n:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self):
        """Stop the daemon (it detaches what is left), or kill it; remove its directory."""
        if self.proc.poll() is None:
            try:
                self.run("memprofd", "stop", timeout=30)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self.logf.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Target:
    """A workload at nice 19 (it takes only idle CPU from the shared machine), its output read in a thread:
    beats = [(monotonic time the line was read, served)] from service.py's 'beat N served=M' lines."""

    def __init__(self, argv, nice=19):
        self.proc = subprocess.Popen(["nice", "-n", str(nice)] + argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.pid = self.proc.pid  # nice execs the workload: same pid
        self.lines, self.beats = [], []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.match(r"beat \d+ served=(\d+)", line)
            if m:
                self.beats.append((time.monotonic(), int(m.group(1))))
            elif line.startswith("ready"):
                self.ready.set()
        self.ready.set()

    def wait_ready(self, beats=1, timeout=120):
        deadline = time.time() + timeout
        while len(self.beats) < beats:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("target %d: no beat %d: %s" % (self.pid, beats, "".join(self.lines[-5:])))
            time.sleep(0.05)

    def rate(self, t0, t1, skip=0):
        """Requests served per second between the first and the last beat read in [t0, t1], its first skip beats
        left out."""
        b = [x for x in self.beats if t0 <= x[0] <= t1][skip:]
        if len(b) < 2:
            raise RuntimeError("target %d: fewer than 2 beats in the window" % self.pid)
        return (b[-1][1] - b[0][1]) / (b[-1][0] - b[0][0])

    def troubled(self):
        return [l for l in self.lines if "ERROR" in l or "Traceback" in l]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=10)
        self.proc.stdout.close()
