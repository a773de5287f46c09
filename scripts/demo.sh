#!/bin/sh
# demo.sh -- starts a sample Python service, attaches memprof to it, shows what it sees, and cleans up.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=${PYTHON_TARGET:-}
if [ -z "$PY" ]; then
    for p in /usr/bin/python3.11 /usr/bin/python3 python3; do
        if command -v "$p" >/dev/null 2>&1; then PY=$(command -v "$p"); break; fi
    done
fi
[ -n "$PY" ] || { echo "demo: no python3 found" >&2; exit 1; }
WORKLOAD=tests/workloads/service.py

tmp=$(mktemp -d /tmp/memprof-demo.XXXXXX)
export MEMPROF_SOCKET="$tmp/run/memprofd.sock"
svc_pid=""
cleanup() {
    [ -n "$svc_pid" ] && kill "$svc_pid" 2>/dev/null && wait "$svc_pid" 2>/dev/null
    "$BUILD/memprofd" stop >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "== starting a sample service: $PY $WORKLOAD 4"
"$PY" -u "$WORKLOAD" 4 > "$tmp/service.log" 2>&1 &
svc_pid=$!
for _ in $(seq 50); do grep -q '^ready' "$tmp/service.log" 2>/dev/null && break; sleep 0.1; done
sleep 2

step "$BUILD/memprof" ps
step "$BUILD/memprofd" attach --pid "$svc_pid" || exit 1
step "$BUILD/memprof" status
if "$BUILD/memprof" --help | grep -q '^  types'; then
    step "$BUILD/memprof" types --pid "$svc_pid" --limit 10
fi
step "$BUILD/memprofd" detach --pid "$svc_pid"
echo
echo "== the service carried on; its last lines:"
tail -n 3 "$tmp/service.log"
