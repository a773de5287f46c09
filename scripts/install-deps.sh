#!/bin/sh
# install-deps.sh -- installs every Debian package memprof's build, tests, demo and bench need (idempotent).
set -eu
PKGS="build-essential pkg-config libelf-dev libdw-dev libbpf-dev libprotobuf-c-dev protobuf-c-compiler
      dpkg-dev man-db groff-base bash-completion
      python3 python3-pytest graphviz gdb bc procps
      python3-memory-profiler python3-objgraph python3-psutil
      python3-ipython python3-ipykernel python3-jupyter-client"
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: not a Debian system (no dpkg/apt-get): install by hand a C compiler, make, pkg-config, the development files of libelf, libdw, libbpf and protobuf-c, protoc-c, python3 and pytest, then run make" >&2
    exit 1
fi
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && { echo "install-deps: all packages present"; exit 0; }
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
    exit 1
fi
log=$(mktemp /tmp/memprof-install-deps.XXXXXX.log)
echo "install-deps: installing$missing (apt's output: $log)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    echo "install-deps: apt-get failed (whole output in $log)" >&2
    exit 1
fi
rm -f "$log"
echo "install-deps: done"
