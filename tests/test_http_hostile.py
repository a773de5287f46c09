"""memprofd's HTTP endpoint against hostile local clients: idle partial requests up to and past the
connection limit (64, 128, 200) and /metrics answered after they time out, slowloris from another real user
while a real Prometheus scrapes every second, an oversized request, an endless body, the per-address limit,
and the warning a root daemon prints when any local user can read its profiles. Loopback only; every loop is
bounded; every process started here is killed."""
import errno
import json
import os
import select
import signal
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import MEMPROFD, Daemon
from proctools import cpu_seconds, free_port
from test_http import HttpDaemon, hd, prom_query  # noqa: F401 (hd: a fixture)

HTTP_LIMIT = 128  # daemon/http.c: connections at once (docs/security.md)
HTTP_IDLE = 5  # seconds without a byte before memprofd closes a connection
PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # headers never finished
HERE = os.path.dirname(os.path.abspath(__file__))


def metrics(d, timeout):
    """GET /metrics on a fresh connection: (status, body), or (None, why) when nothing came within timeout."""
    try:
        with urllib.request.urlopen(d.base + "/metrics", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, repr(e)


def open_idle(port, n, deadline):
    """n connections that each send a partial request, connected without blocking (past the limit and the
    listen backlog the kernel holds SYNs back); returns them once all n have sent it."""
    pending, sent = [], []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        e = s.connect_ex(("127.0.0.1", port))
        assert e in (0, errno.EINPROGRESS), os.strerror(e)
        pending.append(s)
    while pending:
        assert time.time() < deadline, "%d of %d connections never connected" % (len(pending), n)
        _, ready, _ = select.select([], pending, [], 1)
        for s in ready:
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            assert e == 0, os.strerror(e)
            s.sendall(PARTIAL)
            pending.remove(s)
            sent.append(s)
    return sent


def wait_closed_by_server(socks, deadline):
    """Waits until memprofd has closed every one of socks (EOF or reset), reading nothing else."""
    live = list(socks)
    while live:
        assert time.time() < deadline, "memprofd left %d of %d idle connections open" % (len(live), len(socks))
        ready, _, _ = select.select(live, [], [], 1)
        for s in ready:
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            assert data == b"", "a partial request was answered: %r" % data[:200]
            live.remove(s)
            s.close()


def accepted(pid, port):
    """How many TCP connections to port the process pid holds (accepted, not waiting in the queue)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                p = row.split()
                if int(p[1].rsplit(":", 1)[1], 16) == port and p[3] == "01":  # local port, ESTABLISHED
                    inodes.add("socket:[%s]" % p[9])
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, fd)) in inodes
        except OSError:
            pass
    return n


@pytest.mark.parametrize("n", [64, HTTP_LIMIT, 200])
def test_idle_partial_requests_then_served(hd, n):
    """The wedge of issue 23: connections that never finish their headers fill the connection limit and
    all time out in the same turn of memprofd's loop (made certain here by stopping the daemon past the
    idle timeout); then the ones queued behind them are taken, time out too, and a fresh request is
    served. Before the fix the listener stayed out of libmicrohttpd's epoll set and every request hung."""
    assert metrics(hd, 10)[0] == 200
    socks = open_idle(hd.port, n, time.time() + 60)
    try:
        deadline = time.time() + 30
        while accepted(hd.proc.pid, hd.port) < min(n, HTTP_LIMIT):
            assert time.time() < deadline, "memprofd took %d of %d connections" % (
                accepted(hd.proc.pid, hd.port), n)
            time.sleep(0.05)
        os.kill(hd.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(HTTP_IDLE + 1)
        finally:
            os.kill(hd.proc.pid, signal.SIGCONT)
        wait_closed_by_server(socks, time.time() + 60)
    finally:
        for s in socks:
            s.close()
    status, body = metrics(hd, 2)
    assert status == 200 and b"memprof_sessions" in body, "after %d idle requests: %s\nlog: %s" % (
        n, body, hd.log_tail())
    assert hd.run("status").returncode == 0


def test_oversized_request_refused(hd):
    """A request bigger than the per-connection memory cap (16 KiB) is refused with 431 and the endpoint
    carries on."""
    s = socket.create_connection(("127.0.0.1", hd.port), timeout=10)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 65536 + b"\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we wrote: refused all the same
    reply = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    status, body = metrics(hd, 10)
    assert status == 200 and b"memprof_sessions" in body


@pytest.mark.parametrize("method,framing", [("POST", b"Content-Length: 1000000000"),
                                            ("GET", b"Transfer-Encoding: chunked")])
def test_request_body_not_read(hd, method, framing):
    """A request with an endless body is answered on its headers and closed: memprofd reads none of it."""
    s = socket.create_connection(("127.0.0.1", hd.port), timeout=10)
    s.sendall(b"%s /metrics HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % (method.encode(), framing))
    chunk = b"a" * 65536 if method == "POST" else b"10000\r\n" + b"a" * 65536 + b"\r\n"
    sent, closed = 0, False
    while sent < (256 << 20) and not closed:  # far more than the socket buffers hold
        try:
            sent += s.send(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            closed = True
    reply = b""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            reply += data
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    assert closed, "memprofd read %d bytes of a body" % sent
    assert reply.startswith(b"HTTP/1.1 405 " if method == "POST" else b"HTTP/1.1 200 "), reply[:200]
    assert metrics(hd, 10)[0] == 200


def test_per_address_limit_on_a_remote_address(tmp_path):
    """On an address other hosts reach, one client address holds at most 16 connections: the 17th from
    127.0.0.1 is closed unanswered while 127.0.0.2 is served, and 127.0.0.1 is again once its own close."""
    d = Daemon(str(tmp_path))
    port = free_port()
    log = open(d.log, "w")
    proc = subprocess.Popen([MEMPROFD, "serve", "--socket", d.socket, "--http", "0.0.0.0:%d" % port,
                             "--http-allow-remote"], stdout=log, stderr=subprocess.STDOUT, env=d.env)
    log.close()
    held = []

    def get(source, timeout=10):
        s = socket.socket()
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
        s.close()
        return reply

    try:
        deadline = time.time() + 10
        while True:
            assert proc.poll() is None, open(d.log).read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "memprofd did not listen: %s" % open(d.log).read()
                time.sleep(0.05)
        assert get("127.0.0.1").startswith(b"HTTP/1.1 200 ")
        held = open_idle(port, 16, time.time() + 30)
        deadline = time.time() + 30
        while accepted(proc.pid, port) < 16:
            assert time.time() < deadline, "memprofd took %d of 16" % accepted(proc.pid, port)
            time.sleep(0.05)
        assert get("127.0.0.1") == b""
        assert get("127.0.0.2").startswith(b"HTTP/1.1 200 ")
        for s in held:
            s.close()
        held = []
        deadline = time.time() + 30
        while accepted(proc.pid, port) > 0:
            assert time.time() < deadline, "memprofd kept closed connections"
            time.sleep(0.05)
        assert get("127.0.0.1").startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def other_user():
    """A real unprivileged user made for this test (prefix mphttp) and removed after."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    name = "mphttp%d" % (os.getpid() % 100000)
    subprocess.run(["userdel", name], capture_output=True)  # a leftover of a killed run
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def start_prometheus(tmp_path, target_port):
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("prometheus is not installed (Debian prometheus)")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                   "scrape_configs:\n  - job_name: memprof\n    static_configs:\n"
                   "      - targets: ['127.0.0.1:%d']\n" % target_port)
    log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen([exe, "--config.file", str(cfg), "--storage.tsdb.path", str(tmp_path / "tsdb"),
                             "--web.listen-address", "127.0.0.1:%d" % port], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return prom, port


def test_slowloris_while_prometheus_scrapes(hd, other_user, tmp_path):
    """100 connections from another user, each sending one byte every 10 s and opened again as soon as
    memprofd closes it, for 40 s, while a real Prometheus scrapes /metrics every second (1 s timeout) and
    this test fetches it on a fresh connection every second: every scrape and every fetch is answered, and
    memprofd's idle timeout is what closed the slow connections (none was answered)."""
    prom, prom_port = start_prometheus(tmp_path, hd.port)
    slow = None
    try:
        deadline = time.time() + 60
        while True:  # Prometheus up and scraping
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            assert time.time() < deadline, "Prometheus never scraped: %s" % (
                (tmp_path / "prometheus.log").read_text()[-2000:])
            try:
                if prom_query(prom_port, 'up{job="memprof"} == 1'):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        with open(os.path.join(HERE, "targets", "slowloris.py")) as f:
            source = f.read()  # by -c: the checkout need not be readable by that user
        slow = subprocess.Popen([python, "-c", source, str(hd.port), "100", "10", "40"], user=other_user,
                                cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([slow.stdout], [], [], 30)
        assert ready and slow.stdout.readline().strip() == "open 100", slow.stderr.read() if not ready else ""
        t0, cpu0 = time.time(), cpu_seconds(hd.proc.pid)
        fetches = []
        while slow.poll() is None and time.time() < t0 + 60:  # the slowloris ends after 40 s
            status, body = metrics(hd, 2)
            fetches.append(status)
            assert status == 200 and b"memprof_sessions" in body, "fetch %d during the slowloris: %s" % (
                len(fetches), body)
            time.sleep(1)
        out, err = slow.communicate(timeout=30)
        t1, cpu1 = time.time(), cpu_seconds(hd.proc.pid)
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["max_open"] == 100 and stats["closed_by_server"] >= 100, stats
        assert stats["answered_bytes"] == 0 and stats["refused"] == 0, stats
        time.sleep(2)  # the window's last scrape stored
        window = int(t1 - t0)
        res = prom_query(prom_port, 'up{job="memprof"}[%ds]' % window)
        ups = [v for _, v in res[0]["values"]] if res else []
        assert len(ups) >= window // 2 and set(ups) == {"1"}, "up over %d s of slowloris: %s\n%s" % (
            window, ups, (tmp_path / "prometheus.log").read_text()[-2000:])
        log = open(hd.log).read()  # hundreds of refused clients, a few lines
        assert log.count(" http: ") <= 12, log[-3000:]
        print("slowloris %s; %d fetches answered; Prometheus up=1 in all %d scrapes over %d s; memprofd used "
              "%.2f s of CPU" % (stats, len(fetches), len(ups), window, cpu1 - cpu0))
    finally:
        if slow and slow.poll() is None:
            slow.kill()
            slow.wait(timeout=30)
        prom.kill()
        prom.wait(timeout=30)


def serve_stderr(tmp_path, *extra):
    """Starts memprofd serve --http on loopback with extra, waits until it listens, stops it: its output."""
    os.makedirs(str(tmp_path))
    d = HttpDaemon(str(tmp_path))
    d.start_http(*extra)
    d.stop()
    return open(d.log).read()


def test_root_without_token_warns(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the warning is a root daemon's")
    out = serve_stderr(tmp_path / "a")
    assert "warning: --http 127.0.0.1:" in out and "has no --http-token-file: every local user can read" in out, out
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    out = serve_stderr(tmp_path / "b", "--http-token-file", str(token))
    assert "bearer token required" in out and "warning" not in out, out
