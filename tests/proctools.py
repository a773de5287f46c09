"""proctools.py -- small helpers about processes and ports, shared by the tests and the daemon benches
(scripts/benchproc.py, which puts tests/ on its path)."""
import os
import socket
import time


def agent_threads(pid):
    """The threads of pid named memprof* (the agent's is memprof-agent): none once it has left."""
    names = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return [n for n in names if n.startswith("memprof")]


def agent_gone(pid, timeout=5):
    """Waits up to timeout seconds for pid's agent thread to end (the agent undoes itself when the daemon
    dies); True once it has."""
    deadline = time.time() + timeout
    while agent_threads(pid) and time.time() < deadline:
        time.sleep(0.05)
    return agent_threads(pid) == []


def free_port():
    """A loopback TCP port nothing listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    """utime + stime of pid (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
