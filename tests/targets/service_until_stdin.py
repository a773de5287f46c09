"""The service.py workload of tests/workloads (its handle() and leak, from its own file)
until a line arrives on stdin: then its workers stop and the process exits
normally, at a moment the test chooses. Usage: service_until_stdin.py SERVICE_PY [THREADS]"""
import os
import runpy
import sys
import threading

service = runpy.run_path(sys.argv[1])  # its functions, not its main()
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 4
stop = threading.Event()
pool = [threading.Thread(target=service["worker"], args=(t, stop)) for t in range(threads)]
for t in pool:
    t.start()
print("ready %d" % os.getpid(), flush=True)
sys.stdin.readline()
stop.set()
for t in pool:
    t.join()
print("bye sessions=%d" % len(service["_sessions"]), flush=True)
