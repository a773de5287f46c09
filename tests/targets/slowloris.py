"""Slowloris against 127.0.0.1:PORT for SECONDS: N connections, each sending its request one byte every
INTERVAL s and never finishing it; one the server closes is opened again at once. Prints 'open N' the first
time N are open together, then one JSON line: most open at once, connections opened, closed by the server,
refused, and bytes the server sent back (a request it answered). Run by tests/test_http_hostile.py."""
import errno
import json
import select
import socket
import sys
import time

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-a: " + b"b" * 4096


def main():
    port, n, interval, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    end = time.time() + seconds
    conns = {}  # socket -> [bytes sent, time of the next byte, connected]
    stats = {"max_open": 0, "opened": 0, "closed_by_server": 0, "refused": 0, "answered_bytes": 0}
    told = False

    def connect(stagger):
        s = socket.socket()
        s.setblocking(False)
        e = s.connect_ex(("127.0.0.1", port))
        if e not in (0, errno.EINPROGRESS):
            stats["refused"] += 1
            s.close()
            return
        conns[s] = [0, time.time() + stagger, False]
        stats["opened"] += 1

    for i in range(n):  # the first bytes spread over one interval
        connect(interval * i / n)
    while time.time() < end:
        while len(conns) < n and time.time() < end:
            connect(0)
        open_now = sum(1 for c in conns.values() if c[2])
        stats["max_open"] = max(stats["max_open"], open_now)
        if open_now >= n and not told:
            print("open %d" % n, flush=True)
            told = True
        now = time.time()
        wait = max(0.0, min([c[1] for c in conns.values()] + [end]) - now)
        connecting = [s for s, c in conns.items() if not c[2]]
        readable, writable, _ = select.select(list(conns), connecting, [], min(wait, 0.5))
        for s in writable:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                stats["refused"] += 1
                del conns[s]
                s.close()
            else:
                conns[s][2] = True
        for s in readable:
            if s not in conns:
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data:
                stats["answered_bytes"] += len(data)
                continue
            stats["closed_by_server"] += 1
            del conns[s]
            s.close()
        now = time.time()
        for s, c in list(conns.items()):
            if c[2] and c[1] <= now and c[0] < len(REQUEST):
                try:
                    s.send(REQUEST[c[0]:c[0] + 1])
                    c[0] += 1
                except OSError:
                    pass  # closed: the read above counts it
                c[1] = now + interval
    for s in conns:
        s.close()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
