#!/bin/sh
# mkroot.sh -- builds (once) and caches a Debian root as a tarball, for the fresh-machine check and container tests.
#
# usage: scripts/mkroot.sh NAME      prints the tarball's path on stdout
#   bookworm  Debian 12 minbase + what someone who clones a C project has (build-essential git ca-certificates)
#   bookworm-bare  Debian 12 minbase only: no compiler, for installing the .deb
#   bookworm-python  Debian 12 minbase + python3 (3.11): a stranger's Python image, for the podman tests
#   sid       Debian sid minbase + the Pythons that only sid has (python3.13, python3.14, python3.15 where sid has them)
# The tarball is kept in $MEMPROF_CACHE (default build/cache) and reused; delete it to rebuild.
set -eu
name=${1:-}
cache=${MEMPROF_CACHE:-build/cache}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
case "$name" in
    bookworm) suite=bookworm; include=build-essential,git,ca-certificates; extra="" ;;
    bookworm-bare) suite=bookworm; include=ca-certificates; extra="" ;;
    bookworm-python) suite=bookworm; include=ca-certificates,python3; extra="" ;;
    sid) suite=sid; include=ca-certificates; extra="python3.13 python3.14 python3.15" ;;
    *) echo "usage: mkroot.sh bookworm|bookworm-bare|bookworm-python|sid" >&2; exit 2 ;;
esac
tarball="$cache/$name.tar.gz"
if [ -s "$tarball" ]; then echo "$tarball"; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "mkroot: building a Debian root needs root" >&2; exit 1; }
command -v debootstrap >/dev/null 2>&1 || {
    echo "mkroot: installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
}
mkdir -p "$cache"
work=$(mktemp -d "$cache/.mkroot.XXXXXX")
root="$work/root"
cleanup() {
    for m in proc dev/pts dev sys; do mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
echo "mkroot: debootstrap $suite into $root (a few minutes, once)" >&2
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2; echo "mkroot: debootstrap $suite failed" >&2; exit 1; }
if [ -n "$extra" ]; then
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    # Only the packages sid has: ask apt for each, install those found.
    log="$work/apt.log"
    chroot "$root" apt-get -o Acquire::Check-Valid-Until=false update -qq >"$log" 2>&1 || {
        tail -n 20 "$log" >&2; echo "mkroot: apt-get update in the $suite root failed" >&2; exit 1; }
    have=""
    for p in $extra; do
        chroot "$root" apt-cache show "$p" >/dev/null 2>&1 && have="$have $p" || echo "mkroot: $suite has no $p" >&2
    done
    echo "mkroot: installing$have" >&2
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $have >>"$log" 2>&1 || {
        tail -n 20 "$log" >&2; echo "mkroot: installing$have in the $suite root failed" >&2; exit 1; }
    chroot "$root" apt-get clean
    umount "$root/proc"
fi
tar -C "$root" -czf "$work/root.tar.gz" .
mv "$work/root.tar.gz" "$tarball"
echo "$tarball"
