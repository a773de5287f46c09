#!/bin/sh
# install-deps.sh -- installs the Debian packages memprof needs (idempotent): `build` for make and make demo,
# `all` (the default) adds what the tests and the benchmark use.
set -eu
BUILD_PKGS="build-essential pkg-config libelf-dev libdw-dev libbpf-dev bpftool clang libprotobuf-c-dev protobuf-c-compiler
      zlib1g-dev libmicrohttpd-dev python3 graphviz procps"
TEST_PKGS="dpkg-dev man-db groff-base bash-completion libclang-rt-dev
      python3-pytest gdb bc curl musl-tools
      python3-memory-profiler python3-objgraph python3-psutil python3-numpy
      golang-go chromium prometheus
      python3-ipython python3-ipykernel python3-jupyter-client
      podman runc uidmap slirp4netns fuse-overlayfs python3-yaml"
case "${1:-all}" in
    build) PKGS=$BUILD_PKGS ;;
    all) PKGS="$BUILD_PKGS $TEST_PKGS" ;;
    *) echo "usage: install-deps.sh [build|all]" >&2; exit 2 ;;
esac
# podman and runc: tests/test_podman.py (make image, containers; runc named: Debian's podman would take crun, which
# refuses hybrid cgroup hosts), with the recommends it was tested with (uidmap, slirp4netns, fuse-overlayfs: apt
# here skips recommends); python3-yaml reads deploy/kubernetes there.
# npm fetches d3-flame-graph for memprof flamegraph's page at build time; Debian's npm package, unless an
# npm is already there (NodeSource's nodejs ships its own and conflicts with Debian's).
command -v npm >/dev/null 2>&1 || PKGS="$PKGS npm"
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: not a Debian system (no dpkg/apt-get): install by hand a C compiler with libstdc++ (g++: C++ names are demangled with it), make, pkg-config, the development files of libelf, libdw, libbpf, protobuf-c, zlib and libmicrohttpd, protoc-c, bpftool and clang (memprof rss), npm, python3 and pytest, then run make" >&2
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
