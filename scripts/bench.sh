#!/bin/sh
# bench.sh -- `make bench`: runs scripts/bench.py with Debian's python3 (peers are installed for it).
set -eu
cd "$(dirname "$0")/.."
exec /usr/bin/python3 scripts/bench.py "$@"
