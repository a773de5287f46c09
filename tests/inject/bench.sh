#!/bin/sh
# bench.sh PYTHON N -- N fresh python targets sleeping, one load each; prints sorted stop_ms.
PY=${1:-/root/.pyenv/versions/3.12.1/bin/python3.12}; N=${2:-10}
D=$(cd "$(dirname "$0")/../.." && pwd)/build/inject
for i in $(seq "$N"); do
    "$PY" -c 'import time; time.sleep(30)' & P=$!
    sleep 0.3
    "$D/injdrv" load $P "$D/libinjtest.so" memprof_agent_start "bench $i" | sed -n 's/.*stop_ms=\([0-9.]*\).*/\1/p'
    kill $P; wait $P 2>/dev/null
done | sort -n | tr '\n' ' '; echo
