#!/bin/sh
# bench.sh [PYTHON] [N] -- N fresh python targets sleeping, one load each; prints sorted stop_ms.
# PYTHON defaults to pyenv's 3.12, else Debian's 3.11, as tests/pythons.py finds them.
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${1:-$(python3 "$HERE/../pythons.py" path pyenv-3.12 debian-3.11)} || exit 1
N=${2:-10}
D=$(cd "$HERE/../.." && pwd)/build/inject
for i in $(seq "$N"); do
    "$PY" -c 'import time; time.sleep(30)' & P=$!
    sleep 0.3
    "$D/injdrv" load $P "$D/libinjtest.so" memprof_agent_start "bench $i" | sed -n 's/.*stop_ms=\([0-9.]*\).*/\1/p'
    kill $P; wait $P 2>/dev/null
done | sort -n | tr '\n' ' '; echo
