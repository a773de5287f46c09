"""memprofd serve --http: /metrics scraped by a real Prometheus (PromQL over its HTTP API sees the leaking
process's live bytes rise and picks it as the fastest-growing one), promtool accepts the exposition,
/debug/pprof/heap read by go tool pprof, 404/400/405/401 with one-line reasons, a slow client does not
stop the endpoint, loopback-only unless allowed, a port in use; every process started here is killed."""
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import MEMPROFD, Daemon, default_python, target_script, workload
from proctools import free_port

GO = shutil.which("go")


class HttpDaemon(Daemon):
    """A daemon of its own with --http on a free loopback port."""

    def start_http(self, *extra):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.logf = open(self.log, "a")
        self.proc = subprocess.Popen([MEMPROFD, "serve", "--socket", self.socket, "--http",
                                      "127.0.0.1:%d" % self.port] + list(extra),
                                     stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 10
        while True:
            assert self.proc.poll() is None, "memprofd exited: %s" % open(self.log).read()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                if os.path.exists(self.socket):
                    return
            except OSError:
                pass
            assert time.time() < deadline, "memprofd did not listen on %d: %s" % (self.port, self.log_tail())
            time.sleep(0.05)

    def get(self, path, headers=None, method="GET"):
        """(status, body bytes, headers)"""
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers


@pytest.fixture
def hd(tmp_path):
    d = HttpDaemon(str(tmp_path))
    d.start_http()
    yield d
    d.stop()


def one_line(body):
    text = body.decode()
    return text.endswith("\n") and text.count("\n") == 1


def test_pprof_over_http_read_by_go_pprof(hd, targets, tmp_path):
    """What /debug/pprof/heap and /allocs serve, read by go tool pprof: live bytes (inuse_space) by default for heap,
    allocated bytes (alloc_space) for allocs, and service.py's handle() among the functions."""
    if not GO:
        pytest.skip("go is not installed (go tool pprof reads the profiles): apt-get install golang-go")
    t = targets.start([default_python(), workload("service.py"), "2", "0"])
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    hd.attach(pid, "--sample-rate", "16384")
    t.wait_for("beat 2")
    for what, kind in (("heap", "inuse_space"), ("allocs", "alloc_space")):
        status, body, _ = hd.get("/debug/pprof/%s?pid=%d" % (what, pid))
        assert status == 200 and body[:2] == b"\x1f\x8b", (what, status, body[:200])
        path = tmp_path / ("%s.pb.gz" % what)
        path.write_bytes(body)
        env = dict(os.environ, HOME=os.environ.get("HOME", "/tmp"), PPROF_TMPDIR=str(tmp_path))
        r = subprocess.run([GO, "tool", "pprof", "-top", str(path)], capture_output=True, text=True, timeout=120,
                           env=env)
        assert r.returncode == 0 and "Type: %s" % kind in r.stdout and "handle" in r.stdout, r.stdout + r.stderr


def test_pprof_over_http(hd, targets, tmp_path):
    t = targets.start([default_python(), workload("service.py"), "2", "0"])
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    hd.attach(pid, "--sample-rate", "16384")
    t.wait_for("beat 2")
    status, body, headers = hd.get("/debug/pprof/heap?pid=%d" % pid)
    assert status == 200 and body[:2] == b"\x1f\x8b", (status, body[:200])
    status, body, _ = hd.get("/debug/pprof/allocs?pid=%d" % pid)
    assert status == 200 and body[:2] == b"\x1f\x8b"
    status, body, _ = hd.get("/debug/pprof/")
    assert status == 200 and ("heap?pid=%d" % pid).encode() in body
    sid = json.loads(hd.run("status", "--json").stdout)[0]["id"]
    assert hd.get("/debug/pprof/heap?session=%d" % sid)[0] == 200
    # bad requests: one line each, the right status, and the daemon carries on
    for path, code, words in [("/debug/pprof/heap?pid=99999999999", 400, "not a process id"),
                              ("/debug/pprof/heap?pid=999999999", 404, "not attached"),
                              ("/debug/pprof/heap?pid=1", 404, "pid 1: not attached"),
                              ("/debug/pprof/heap?session=9999", 404, "session 9999"),
                              ("/debug/pprof/heap?pid=abc", 400, "not a process id"),
                              ("/debug/pprof/heap?pid=%d&session=%d" % (pid, sid), 400, "exactly one"),
                              ("/debug/pprof/heap?pid=%d&colour=red" % pid, 400, "unknown parameter 'colour'"),
                              ("/debug/pprof/heap", 400, "exactly one"),
                              ("/metrics?pid=3", 400, "no parameters"),
                              ("/nowhere", 404, "not found")]:
        status, body, _ = hd.get(path)
        assert status == code and one_line(body) and words in body.decode(), (path, status, body)
    status, body, _ = hd.get("/metrics", method="POST")
    assert status == 405 and one_line(body), body
    assert hd.get("/metrics")[0] == 200
    assert hd.run("status").returncode == 0


def test_slow_client_does_not_block(hd, targets):
    t = targets.start([default_python(), target_script("idle.py")])
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    hd.attach(pid)
    slow = []
    try:
        for _ in range(3):  # headers never finished, and a client that never reads its reply
            s = socket.create_connection(("127.0.0.1", hd.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        s = socket.create_connection(("127.0.0.1", hd.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"".join(b"GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(50)))
        slow.append(s)
        for _ in range(5):
            status, body, _ = hd.get("/metrics")
            assert status == 200 and b"memprof_process_rss_bytes{pid=\"%d\"" % pid in body
        assert hd.run("status").returncode == 0
    finally:
        for s in slow:
            s.close()


def promtool():
    exe = shutil.which("promtool")
    if not exe:
        pytest.skip("promtool is not installed: apt-get install prometheus")
    return exe


def test_promtool_accepts_exposition(hd, targets):
    t = targets.start([default_python(), workload("service.py"), "2", "0"])
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    hd.attach(pid, "--sample-rate", "16384")
    t.wait_for("beat 2")
    r = hd.run("types", "--pid", pid)
    assert r.returncode == 0, r.stderr
    status, body, headers = hd.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
    text = body.decode()
    r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("memprof_process_rss_bytes", "memprof_tracked_live_bytes", "memprof_allocated_bytes_total",
                 "memprof_samples_total", "memprof_dropped_samples_total"):
        assert re.search(r'^%s\{pid="%d",container=""\} ' % (name, pid), text, re.M), name  # pid and container
    # the free-text labels once per process, in one info series (Prometheus practice), not on every series
    info = [l for l in text.splitlines() if l.startswith("memprof_process_info{")]
    assert len(info) == 1 and re.match(r'memprof_process_info\{pid="%d",container="",python="3\.[^"]+",'
                                       r'command="[^"]*service\.py 2 0"\} 1$' % pid, info[0]), info
    assert text.count("command=") == 1, [l for l in text.splitlines() if "command=" in l]
    sites = [l for l in text.splitlines() if l.startswith("memprof_site_live_bytes{")]
    assert 0 < len(sites) <= 10 and 'site="service.py:' in sites[0], sites
    types = [l for l in text.splitlines() if l.startswith("memprof_type_bytes{")]
    assert 0 < len(types) <= 10, types
    assert 'memprof_sessions{state="attached"} 1' in text
    assert "memprof_agent_connections 1" in text and "memprof_agent_reports_total" in text


def prom_query(port, q):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": q}))
    with urllib.request.urlopen(url, timeout=10) as r:
        d = json.load(r)
    assert d["status"] == "success", d
    return d["data"]["result"]


@contextlib.contextmanager
def prometheus(tmp_path, config):
    """Debian's prometheus on a free loopback port with config (its YAML text), in tmp_path; yields the port and
    kills it after."""
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("prometheus is not installed: apt-get install prometheus")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(config)
    with open(tmp_path / "prometheus.log", "w") as log:
        prom = subprocess.Popen([exe, "--config.file", str(cfg), "--storage.tsdb.path", str(tmp_path / "tsdb"),
                                 "--web.listen-address", "127.0.0.1:%d" % port], stdout=log, stderr=subprocess.STDOUT)
        try:
            yield port, prom
        finally:
            prom.kill()
            prom.wait(timeout=30)


def test_prometheus_scrapes_rising_live_bytes(hd, targets, tmp_path):
    leak = targets.start([default_python(), workload("service.py"), "2", "0"])
    leak_pid = int(leak.wait_for(r"ready (\d+)").group(1))
    idle = targets.start([default_python(), target_script("idle.py")])
    idle_pid = int(idle.wait_for(r"ready (\d+)").group(1))
    hd.attach(leak_pid, "--sample-rate", "16384")
    hd.attach(idle_pid, "--sample-rate", "16384")
    with prometheus(tmp_path, "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                   "scrape_configs:\n  - job_name: memprof\n    static_configs:\n"
                   "      - targets: ['127.0.0.1:%d']\n" % hd.port) as (port, prom):
        deadline = time.time() + 90
        values = []
        while time.time() < deadline:
            time.sleep(1)
            assert prom.poll() is None, open(tmp_path / "prometheus.log").read()[-3000:]
            try:
                res = prom_query(port, 'memprof_tracked_live_bytes{pid="%d"}[60s]' % leak_pid)
            except (OSError, ValueError):
                continue
            values = [float(v) for _, v in res[0]["values"]] if res else []
            if len(values) >= 8:
                break
        assert len(values) >= 8, "Prometheus kept %d samples of pid %d: %s" % (
            len(values), leak_pid, open(tmp_path / "prometheus.log").read()[-2000:])
        assert values[-1] > values[0], values
        res = prom_query(port, 'memprof_tracked_live_bytes{pid="%d"}' % leak_pid)
        assert res and res[0]["metric"]["job"] == "memprof" and "command" not in res[0]["metric"], res
        # docs/http.md's join: the command from the one info series
        res = prom_query(port, 'memprof_tracked_live_bytes{pid="%d"} * on(pid, container) group_left(command) '
                               'memprof_process_info' % leak_pid)
        assert res and "service.py" in res[0]["metric"]["command"], res
        # docs/http.md's query for the fastest-growing process
        res = prom_query(port, "topk(1, deriv(memprof_tracked_live_bytes[1m]))")
        assert res and res[0]["metric"]["pid"] == str(leak_pid), res
        assert prom_query(port, 'memprof_tracked_live_bytes{pid="%d"}' % idle_pid)


def test_listen_address_rules(tmp_path):
    def serve(*args):
        d = Daemon(str(tmp_path / ("d%d" % len(os.listdir(str(tmp_path))))))
        return subprocess.run([MEMPROFD, "serve", "--socket", d.socket] + list(args), capture_output=True,
                              text=True, timeout=30, env=d.env)

    for args, words in [(["--http", "0.0.0.0:%d" % free_port()], "not a loopback address"),
                        (["--http", "localhost"], "expected HOST:PORT"),
                        (["--http", "127.0.0.1:99999"], "expected HOST:PORT"),
                        (["--http-allow-remote"], "need --http"),
                        (["--http", "127.0.0.1:%d" % free_port(), "--http-token-file", "/nonexistent"],
                         "--http-token-file /nonexistent")]:
        r = serve(*args)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and words in r.stderr, (args, r.stderr)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        r = serve("--http", "127.0.0.1:%d" % busy.getsockname()[1])
        assert r.returncode != 0 and "Address already in use" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    finally:
        busy.close()


def test_remote_needs_flag_and_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    d = HttpDaemon(str(tmp_path))
    d.start_http("--http-token-file", str(token))
    try:
        assert d.get("/metrics")[0] == 401
        assert d.get("/metrics", {"Authorization": "Bearer wrong"})[0] == 401
        status, body, _ = d.get("/metrics", {"Authorization": "Bearer s3cret-token"})
        assert status == 200 and b"memprof_sessions" in body
        # the profiles too (they name the program's files and functions): every route asks for the token
        for path in ("/debug/pprof/", "/debug/pprof/?format=json", "/debug/pprof/targets", "/debug/pprof/heap?pid=1",
                     "/debug/pprof/allocs?pid=1", "/nowhere"):
            assert d.get(path)[0] == 401, path
            assert d.get(path, {"Authorization": "Bearer wrong"})[0] == 401, path
        assert d.get("/debug/pprof/", {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert d.get("/debug/pprof/heap?pid=1", {"Authorization": "Bearer s3cret-token"})[0] == 404  # not attached
    finally:
        d.stop()
    # a non-loopback address with the flag: served, with a warning
    d2 = Daemon(str(tmp_path / "remote"))
    port = free_port()
    log = open(str(tmp_path / "remote.log"), "w")
    p = subprocess.Popen([MEMPROFD, "serve", "--socket", d2.socket, "--http", "0.0.0.0:%d" % port,
                          "--http-allow-remote"], stdout=log, stderr=subprocess.STDOUT, env=d2.env)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            assert r.status == 200
        assert "warning: --http 0.0.0.0:%d is reachable from other hosts" % port in open(str(tmp_path / "remote.log")).read()
    finally:
        p.terminate()
        p.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("top", [3, 0])
def test_metrics_top_limits_site_series(tmp_path, targets, top):
    """--metrics-top N: /metrics carries N memprof_site_live_bytes series per process (service.py has more sites
    than that), 0 none; the default is 10."""
    d = HttpDaemon(str(tmp_path))
    d.start_http("--metrics-top", str(top))
    try:
        t = targets.start([default_python(), workload("service.py"), "2", "0"])
        pid = int(t.wait_for(r"ready (\d+)").group(1))
        d.attach(pid, "--sample-rate", "4096")
        t.wait_for("beat 2")
        at = time.time()
        deadline = time.time() + 30
        while True:  # a report after the workers ran a while: more than 3 sites by then
            data = json.loads(d.run("top", "--pid", pid, "--once", "--json", "--limit", "0").stdout)
            if data["timestamp"] > at and len(data["rows"]) > 3 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert len(data["rows"]) > 3, data["rows"]
        status, body, _ = d.get("/metrics")
        assert status == 200
        series = [l for l in body.decode().splitlines()
                  if l.startswith("memprof_site_live_bytes{") and 'pid="%d"' % pid in l]
        assert len(series) == top, series
    finally:
        d.stop()
