#!/bin/sh
# mkimage.sh -- builds the memprof OCI image offline (run by `make image`): a minimal Debian 12 root with the .deb.
#
# usage: scripts/mkimage.sh DEB [TAG]     (TAG defaults to localhost/memprof:VERSION, also tagged :latest)
# The root is scripts/mkroot.sh's bookworm-bare (minbase, cached in $MEMPROF_CACHE); the .deb is installed in it with
# apt, whose dependencies (libelf1, libdw1, libprotobuf-c1, libmicrohttpd12, libbpf1...) come from Debian's mirror
# the first time and from $MEMPROF_CACHE/bookworm-debs after; the root is imported with `podman import`, so no
# registry is involved. PODMAN (default podman) may carry options (--root, --runroot); CONTAINERS_STORAGE_CONF and
# CONTAINERS_CONF are podman's own. Containerfile builds the same image from debian:bookworm-slim with a registry.
set -eu
deb=${1:-}
[ -n "$deb" ] && [ -f "$deb" ] || { echo "usage: mkimage.sh DEB [TAG] (make image builds the .deb first)" >&2; exit 2; }
PODMAN=${PODMAN:-podman}
# Debian roots and packages are cached where make test and CI keep them (tests/conftest.py)
export MEMPROF_CACHE="${MEMPROF_CACHE:-/var/cache/memprof}"
cache=$MEMPROF_CACHE
version=$(dpkg-deb -f "$deb" Version)
# an image tag has no "+" (a build from git: 0.5.0+gfb48c38 is tagged 0.5.0-gfb48c38)
tag=${2:-localhost/memprof:$(echo "$version" | tr "+~" "--")}
command -v "${PODMAN%% *}" >/dev/null 2>&1 || { echo "mkimage: podman not found (apt-get install podman)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "mkimage: installing the .deb into the root needs root (chroot)" >&2; exit 1; }
base=$(sh scripts/mkroot.sh bookworm-bare)

work=$(mktemp -d /tmp/memprof-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
root="$work/root"
mkdir "$root"
tar -C "$root" -xzf "$base"
archives="$root/var/cache/apt/archives"
ls "$archives" >"$work/base-debs" # the root's own packages (debootstrap keeps them there): not cached again
if [ -d "$cache/bookworm-debs" ]; then cp "$cache"/bookworm-debs/*.deb "$archives/" 2>/dev/null || true; fi
cp "$deb" "$root/tmp/memprof.deb"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# apt as root in the root, in mount and pid namespaces of its own (its /proc goes with them)
in_root() {
    unshare --mount --pid --fork --kill-child --mount-proc="$root/proc" chroot "$root" env -i \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive "$@"
}
install="apt-get install -y -q --no-install-recommends /tmp/memprof.deb"
if ! in_root $install >"$work/apt.log" 2>&1; then
    # the root's package lists may name versions the mirror has since replaced: refresh them, once
    in_root apt-get update -q >>"$work/apt.log" 2>&1 && in_root $install >>"$work/apt.log" 2>&1 || {
        tail -n 15 "$work/apt.log" >&2; echo "mkimage: apt-get install of the .deb in the root failed" >&2; exit 1; }
fi
mkdir -p "$cache/bookworm-debs"
for f in "$archives"/*.deb; do
    [ -e "$f" ] && ! grep -qxF "${f##*/}" "$work/base-debs" && [ ! -e "$cache/bookworm-debs/${f##*/}" ] &&
        cp "$f" "$cache/bookworm-debs/"
done
# What an image does not need: apt's lists and downloads, the .deb, the host's resolver.
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root/tmp/memprof.deb" "$root/etc/resolv.conf"
: >"$root/etc/resolv.conf"
mkdir -p "$root/run/memprof"
chmod 700 "$root/run/memprof"
tar -C "$root" -cf "$work/rootfs.tar" .
# memprofd serve in the foreground by default (the DaemonSet's container); kubectl debug and podman run name a command.
$PODMAN import --change 'CMD ["memprofd", "serve"]' --change 'WORKDIR /' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL org.opencontainers.image.title=memprof org.opencontainers.image.version=$version" \
    "$work/rootfs.tar" "$tag" >/dev/null
$PODMAN tag "$tag" localhost/memprof:latest
echo "mkimage: $tag (and localhost/memprof:latest): Debian 12 minbase + $(basename "$deb")"
